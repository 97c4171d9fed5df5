// End-to-end driver: livekit-client in Debian's Chromium (headless, fake camera and microphone),
// one tab per participant, all joining one LiveKit URL.
//
// usage: node e2e_driver.mjs '<json config>'
//   { "wsUrl": "ws://127.0.0.1:7880",
//     "participants": [{"identity": "tab-a", "token": "...",
//                       "fakeAudioFile": "/tmp/a.wav",          // optional: this tab's own microphone
//                       "camera": {"width": 640, "height": 360}, // optional: its capture size
//                       "singlePeerConnection": false}],      // optional: force the v0 path (/rtc)
//     "expect": {"tab-a": ["tab-b"]},      // remote identities each tab must receive
//     "minFrames": 15, "minAudioPackets": 50, "risingMs": 1000, "timeoutMs": 45000, "holdMs": 60000,
//     "fakeAudioFile": "/tmp/tone.wav",    // optional: every tab's microphone instead of the beep
//     "separateBrowsers": false,            // optional: one Chromium process per participant
//     "fakeCameraFps": 30,                  // optional: the fake camera's frame rate (default 20)
//     "trustCertificate": "/tmp/turn.pem" } // optional: a CA (PEM) Chromium trusts, e.g. for turns:
//
// Chromium's fake microphone file is a command-line flag, so a participant with a file of its own
// gets a Chromium process of its own: tabs that send different tones cannot be one browser.
// The page is served by this process from 127.0.0.1 (a secure context, so getUserMedia works).
// A check passes when a tab has decoded >= minFrames of the remote's video and received
// >= minAudioPackets of its audio, and risingMs later both counters (and totalSamplesReceived)
// have grown: media is flowing, not stuck.  Prints JSON lines; {"result": ...} once all checks
// pass or the timeout passes; then stays in the room until stdin closes (or holdMs), so a peer in
// another process can finish its own checks, and closes the browser.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { chromium, chromiumArgs, launchOptions, serveHere } from './chromium_host.mjs';

const config = JSON.parse(process.argv[2]);
const minFrames = config.minFrames ?? 15;
const minAudioPackets = config.minAudioPackets ?? 50;
const risingMs = config.risingMs ?? 1000;
const timeoutMs = config.timeoutMs ?? 45000;
const holdMs = config.holdMs ?? 60000;
const say = (obj) => console.log(JSON.stringify(obj));

const { server, baseUrl } = await serveHere();
const pageUrl = `${baseUrl}/e2e_page.html`;

const userDataHome = fs.mkdtempSync(path.join(os.tmpdir(), 'trio-sfu-e2e-chromium-'));
if (config.trustCertificate) {
  // Chromium on Linux trusts the CAs of the user's NSS database ($HOME/.pki/nssdb; HOME is
  // userDataHome for the browsers launched here), for TURN over TLS as for web sites.
  const nssdb = path.join(userDataHome, '.pki', 'nssdb');
  fs.mkdirSync(nssdb, { recursive: true });
  execFileSync('certutil', ['-N', '-d', `sql:${nssdb}`, '--empty-password']);
  execFileSync('certutil', ['-A', '-d', `sql:${nssdb}`, '-n', 'trio-sfu-e2e', '-t', 'C,,', '-i', config.trustCertificate]);
  say({ trusted: config.trustCertificate });
}
// One browser for all tabs, or one browser process per participant (separateBrowsers, or tabs
// with microphone files of their own), so nothing in Chromium's audio path (capture, playout,
// processing) is shared between them.
const separate = !!config.separateBrowsers || config.participants.some((p) => p.fakeAudioFile);
const launch = (participant) => chromium.launch(launchOptions(
  chromiumArgs({ fakeAudioFile: participant.fakeAudioFile ?? config.fakeAudioFile, fakeCameraFps: config.fakeCameraFps }),
  userDataHome));
const browsers = [await launch(config.participants[0])];
const browser = browsers[0];
say({ chromium: browser.version(), browsers: separate ? config.participants.length : 1 });

const pages = [];
let finished = false;
async function finish(why, code = 0) {
  if (finished) return;
  finished = true;
  say({ exit: why });
  await Promise.race([
    Promise.all(pages.map(({ page }) => page.evaluate(() => window.e2eLeave()).catch(() => {}))),
    new Promise((r) => setTimeout(r, 3000)),
  ]);
  await Promise.all(browsers.map((b) => b.close().catch(() => {})));
  server.close();
  fs.rmSync(userDataHome, { recursive: true, force: true });
  process.exit(code);
}
process.stdin.on('end', () => finish('stdin closed'));
process.stdin.resume();
process.on('SIGTERM', () => finish('SIGTERM'));

const sharedContext = await browser.newContext();
for (const participant of config.participants) {
  const { identity } = participant;
  let context = sharedContext;
  if (separate && pages.length > 0) {
    const own = await launch(participant);
    browsers.push(own);
    context = await own.newContext();
  }
  const page = await context.newPage();
  page.on('console', (m) => say({ tab: identity, console: m.type(), text: m.text().slice(0, 300) }));
  page.on('pageerror', (e) => say({ tab: identity, pageerror: String(e) }));
  await page.goto(pageUrl);
  pages.push({ identity, page });
}
say({ livekitClient: await pages[0].page.evaluate(() => LivekitClient.version) });
// All tabs join at once; each e2eJoin resolves when its signal connection is up.
await Promise.all(config.participants.map(({ identity, token, camera, singlePeerConnection }, i) =>
  pages[i].page.evaluate(([url, tok, options]) => window.e2eJoin(url, tok, options),
    [config.wsUrl, token, { camera: camera || null, singlePeerConnection: singlePeerConnection ?? null }])
    .then((log) => say({ tab: identity, joined: log.slice(-5) }))
    .catch((e) => say({ tab: identity, joinError: String(e) }))));

// checks[tab][remote] = {first: snapshot when thresholds met, later: snapshot once risen, ok}
const checks = {};
for (const { identity } of config.participants) {
  checks[identity] = {};
  for (const remote of config.expect[identity] || []) checks[identity][remote] = { ok: false };
}

function snapshot(stats) {
  const v = stats.video || {}; const a = stats.audio || {};
  return { at: Date.now(), framesDecoded: v.framesDecoded || 0, videoPackets: v.packetsReceived || 0,
    frameWidth: v.frameWidth || 0, frameHeight: v.frameHeight || 0,
    audioPackets: a.packetsReceived || 0, totalSamplesReceived: a.totalSamplesReceived || 0,
    totalAudioEnergy: a.totalAudioEnergy || 0, concealedSamples: a.concealedSamples || 0,
    headerAudioLevel: a.headerAudioLevel ?? null,
    audioCodecs: a.codecs || [], videoCodecs: v.codecs || [],
    // where video frames go (diagnostics the impaired runs print; absent keys read 0)
    videoDiag: Object.fromEntries(['framesReceived', 'framesDropped', 'keyFramesDecoded', 'pliCount', 'firCount',
      'nackCount', 'freezeCount', 'totalFreezesDuration', 'packetsLost', 'jitterBufferDelay',
      'jitterBufferEmittedCount', 'jitterBufferTargetDelay'].map((k) => [k, v[k] || 0])) };
}

const started = Date.now();
const statuses = {};
let lastProgress = 0;
while (Date.now() - started < timeoutMs) {
  for (const { identity, page } of pages) {
    const status = await page.evaluate(() => window.e2eStatus()).catch((e) => ({ error: String(e) }));
    statuses[identity] = status;
    for (const [remote, check] of Object.entries(checks[identity])) {
      if (check.ok) continue;
      const now = snapshot((status.stats || {})[remote] || {});
      if (!check.first) {
        if (now.framesDecoded >= minFrames && now.audioPackets >= minAudioPackets) check.first = now;
      } else if (now.at - check.first.at >= risingMs) {
        check.later = now;
        check.ok = now.framesDecoded > check.first.framesDecoded && now.audioPackets > check.first.audioPackets
          && now.totalSamplesReceived > check.first.totalSamplesReceived;
        if (!check.ok) check.first = now;  // not rising yet: measure again from here
      }
    }
  }
  if (Date.now() - lastProgress > 2000) {
    lastProgress = Date.now();
    say({ progress: Object.fromEntries(Object.entries(statuses).map(([id, s]) =>
      [id, { state: s.connectionState, remotes: s.remotes, stats: s.stats, errors: s.errors }])) });
  }
  if (Object.values(checks).every((byRemote) => Object.values(byRemote).every((c) => c.ok))) break;
  // A tab whose connect() failed never recovers by itself: report now instead of at the timeout.
  if (Object.values(statuses).some((s) => s.connectionState === 'disconnected' && (s.errors || []).length)) break;
  await new Promise((r) => setTimeout(r, 200));
}
const ok = Object.values(checks).every((byRemote) => Object.values(byRemote).every((c) => c.ok));
const descriptions = {};
for (const { identity, page } of pages) {
  descriptions[identity] = await page.evaluate(() => window.e2eDescriptions()).catch((e) => String(e));
}
say({ descriptions });
say({ result: { ok, elapsedMs: Date.now() - started, checks, statuses } });
setTimeout(() => finish('hold timeout'), holdMs);
