// Migration e2e driver: livekit-client tabs in Debian's Chromium (headless, fake camera and
// microphone) stay in one room while the test moves them between trio-sfu nodes.
//
// usage: node migration_driver.mjs '<json config>'
//   { "wsUrl": "ws://127.0.0.1:P",            // node A: every tab joins (and resumes) here
//     "participants": [{"identity": "pub", "token": "...", "publish": true},
//                      {"identity": "sub", "token": "...", "publish": false}],
//     "watch": {"tab": "sub", "remote": "pub"}, // who must keep receiving whom
//     "minFrames": 15, "minAudioPackets": 50, "timeoutMs": 45000,
//     "fakeAudioFile": "/tmp/tone.wav", "logLevel": "debug",
//     "simulcast": true,                         // optional: false publishes one video layer
//     "singlePeerConnection": true }             // optional: false joins through /rtc (two PCs)
//
// stdout is JSON lines: {"joined": {identity: {...}}}, then {"receiving": {...}} once the watched
// tab decodes >= minFrames of video and >= minAudioPackets of audio from the remote (or
// {"notReceiving": ...} at the timeout). stdin takes {"mark": "label"} lines (answered with
// {"marked": {"label", "t"}}, Date.now() like the pages' timelines). On stdin EOF the driver
// prints {"result": {marks, tabs: {identity: page report}}} — read before leaving, so the
// tabs' own leaving is not in it — then leaves the room and closes the browser.
// {"dropSignal": "identity"} closes that tab's signal WebSocket from the page (answered with
// {"dropped": {...}}): livekit-client sees its connection lost and resumes.
// The pages' console (livekit-client's log at logLevel) goes to stderr with the tab's name.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

import { chromium, chromiumArgs, launchOptions, serveHere } from './chromium_host.mjs';

const config = JSON.parse(process.argv[2]);
const CHROMIUM_ARGS = chromiumArgs(config);
const minFrames = config.minFrames ?? 15;
const minAudioPackets = config.minAudioPackets ?? 50;
const timeoutMs = config.timeoutMs ?? 45000;
const say = (obj) => console.log(JSON.stringify(obj));

const { server, baseUrl } = await serveHere();
const pageUrl = `${baseUrl}/migration_page.html`;

const userDataHome = fs.mkdtempSync(path.join(os.tmpdir(), 'trio-sfu-migration-chromium-'));
const browser = await chromium.launch(launchOptions(CHROMIUM_ARGS, userDataHome));
say({ chromium: browser.version() });

const pages = {};
const marks = [];
let finished = false;
async function finish(why, code = 0) {
  if (finished) return;
  finished = true;
  const tabs = {};
  for (const [identity, page] of Object.entries(pages)) {
    tabs[identity] = await page.evaluate(() => window.e2eReport()).catch((e) => ({ error: String(e) }));
  }
  say({ result: { why, marks, tabs } });
  await Promise.race([
    Promise.all(Object.values(pages).map((page) => page.evaluate(() => window.e2eLeave()).catch(() => {}))),
    new Promise((r) => setTimeout(r, 3000)),
  ]);
  await browser.close().catch(() => {});
  server.close();
  fs.rmSync(userDataHome, { recursive: true, force: true });
  process.exit(code);
}
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let command;
  try { command = JSON.parse(line); } catch (e) { return; }
  if (command && typeof command.mark === 'string') {
    const mark = { label: command.mark, t: Date.now() };
    marks.push(mark);
    say({ marked: mark });
  }
  if (command && typeof command.dropSignal === 'string' && pages[command.dropSignal]) {
    // The tab's signal WebSocket closes under livekit-client, which then resumes.
    pages[command.dropSignal].evaluate(() => window.e2eDropSignal())
      .then((r) => say({ dropped: { identity: command.dropSignal, t: Date.now(), ...r } }))
      .catch((e) => say({ dropped: { identity: command.dropSignal, ok: false, error: String(e) } }));
  }
});
process.stdin.on('end', () => finish('stdin closed'));
process.on('SIGTERM', () => finish('SIGTERM'));

const context = await browser.newContext();
for (const { identity } of config.participants) {
  const page = await context.newPage();
  page.on('console', (m) => process.stderr.write(`[${identity}] ${m.type()}: ${m.text().slice(0, 600)}\n`));
  page.on('pageerror', (e) => process.stderr.write(`[${identity}] pageerror: ${e}\n`));
  await page.goto(pageUrl);
  pages[identity] = page;
}
const joined = {};
await Promise.all(config.participants.map(({ identity, token, publish }) =>
  pages[identity].evaluate(([url, tok, options]) => window.e2eJoin(url, tok, options),
    [config.wsUrl, token, { publish: !!publish, logLevel: config.logLevel || 'info', simulcast: config.simulcast !== false,
      singlePeerConnection: config.singlePeerConnection !== false }])
    .then((r) => { joined[identity] = r; })
    .catch((e) => { joined[identity] = { ok: false, error: String(e) }; })));
say({ joined });

// Wait until the watched tab receives media from its remote, and it keeps rising.
const { tab, remote } = config.watch;
const started = Date.now();
let first = null;
let last = null;
while (Date.now() - started < timeoutMs) {
  const status = await pages[tab].evaluate(() => window.e2eStatus()).catch((e) => ({ error: String(e) }));
  last = status;
  const got = status.last && status.last.remotes[remote];
  if (got && got.framesDecoded >= minFrames && got.audioPackets >= minAudioPackets) {
    if (!first) first = { at: Date.now(), ...got };
    else if (Date.now() - first.at >= 1000 && got.framesDecoded > first.framesDecoded && got.audioPackets > first.audioPackets) {
      say({ receiving: { first, now: got, ms: Date.now() - started } });
      break;
    }
  }
  await new Promise((r) => setTimeout(r, 200));
}
if (Date.now() - started >= timeoutMs) say({ notReceiving: last });
