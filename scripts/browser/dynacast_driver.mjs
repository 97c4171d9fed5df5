// Dynacast end to end: a livekit-client publisher tab (dynacast on, simulcast camera) and a
// subscriber tab in one headless Chromium, on one LiveKit URL.
//
// usage: node dynacast_driver.mjs '<json config>'
//   { "wsUrl": "ws://...", "publisherToken": "...", "subscriberToken": "...",
//     "camera": {"width": 960, "height": 540}, "phaseTimeoutMs": 30000, "quietMs": 3000 }
//
// Phases, each reported as a JSON line:
//   high1: the subscriber takes the default (HIGH); the publisher's top layer (rid "f") must be
//          sending (bytesSent rising) and the subscriber decoding;
//   low:   the subscriber asks for LOW; the top layer must stop: its sender encoding turns
//          `active: false` and its bytesSent stays put for quietMs, while rid "q" keeps sending;
//   high2: the subscriber asks for HIGH again; the top layer must be active and sending again.
// Ends with {"result": {ok, phases}}; stays until stdin closes, then leaves and closes Chromium.
import { chromium, chromiumArgs, launchOptions, serveHere } from './chromium_host.mjs';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const config = JSON.parse(process.argv[2]);
const camera = config.camera ?? { width: 960, height: 540 };
const phaseTimeoutMs = config.phaseTimeoutMs ?? 30000;
const quietMs = config.quietMs ?? 3000;
const say = (obj) => console.log(JSON.stringify(obj));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const { server, baseUrl } = await serveHere();
const userDataHome = fs.mkdtempSync(path.join(os.tmpdir(), 'trio-sfu-dynacast-chromium-'));
const browser = await chromium.launch(launchOptions(chromiumArgs(), userDataHome));
say({ chromium: browser.version() });
const context = await browser.newContext();
const tabs = {};
for (const role of ['publisher', 'subscriber']) {
  const page = await context.newPage();
  page.on('console', (m) => say({ tab: role, console: m.type(), text: m.text().slice(0, 300) }));
  page.on('pageerror', (e) => say({ tab: role, pageerror: String(e) }));
  await page.goto(`${baseUrl}/dynacast_page.html`);
  tabs[role] = page;
}

let finished = false;
async function finish(why) {
  if (finished) return;
  finished = true;
  say({ exit: why });
  await Promise.race([Promise.all(Object.values(tabs).map((p) => p.evaluate(() => window.dcLeave()).catch(() => {}))),
    sleep(3000)]);
  await browser.close().catch(() => {});
  server.close();
  fs.rmSync(userDataHome, { recursive: true, force: true });
  process.exit(0);
}
process.stdin.on('end', () => finish('stdin closed'));
process.stdin.resume();
process.on('SIGTERM', () => finish('SIGTERM'));

const status = (role) => tabs[role].evaluate(() => window.dcStatus());

await tabs.publisher.evaluate(([u, t, c]) => window.dcJoin(u, t, 'publisher', c),
  [config.wsUrl, config.publisherToken, camera]);
await tabs.subscriber.evaluate(([u, t, c]) => window.dcJoin(u, t, 'subscriber', c),
  [config.wsUrl, config.subscriberToken, camera]);
say({ joined: true });

// Poll until `check(previous, now)` holds for two snapshots `windowMs` apart, or the timeout.
async function until(name, windowMs, check) {
  const started = Date.now();
  let previous = { pub: await status('publisher'), sub: await status('subscriber'), at: Date.now() };
  while (Date.now() - started < phaseTimeoutMs) {
    await sleep(windowMs);
    const now = { pub: await status('publisher'), sub: await status('subscriber'), at: Date.now() };
    const verdict = check(previous, now);
    say({ phase: name, ok: verdict, layers: now.pub.layers, inbound: now.sub.inbound });
    if (verdict) return { ok: true, afterMs: Date.now() - started, before: previous, after: now };
    previous = now;
  }
  const last = { pub: await status('publisher'), sub: await status('subscriber') };
  return { ok: false, afterMs: Date.now() - started, last };
}

const grew = (a, b, rid) => ((b.pub.layers[rid] || {}).bytesSent || 0) > ((a.pub.layers[rid] || {}).bytesSent || 0);
const topSending = (a, b) => grew(a, b, 'f') && (b.pub.layers.f || {}).encodingActive !== false
  && b.sub.inbound.framesDecoded > a.sub.inbound.framesDecoded;

const phases = {};
phases.high1 = await until('high1', 1000, topSending);
if (phases.high1.ok) {
  await tabs.subscriber.evaluate(() => window.dcSetQuality('LOW'));
  phases.low = await until('low', quietMs, (a, b) => (b.pub.layers.f || {}).encodingActive === false
    && (a.pub.layers.f || {}).encodingActive === false && !grew(a, b, 'f') && grew(a, b, 'q')
    && b.sub.inbound.framesDecoded > a.sub.inbound.framesDecoded);
}
if (phases.low && phases.low.ok) {
  await tabs.subscriber.evaluate(() => window.dcSetQuality('HIGH'));
  phases.high2 = await until('high2', 1000, topSending);
}
const ok = ['high1', 'low', 'high2'].every((p) => phases[p] && phases[p].ok);
say({ result: { ok, phases, publisherLog: (await status('publisher')).log, subscriberLog: (await status('subscriber')).log } });
setTimeout(() => finish('hold timeout'), 60000);
