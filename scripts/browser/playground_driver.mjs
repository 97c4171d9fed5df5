// Playground driver: Debian's headless Chromium opens trio-sfu's own page (served at / by the
// server under test) in one tab per person, and uses it as a person would: types a room and a
// name, clicks Join, watches the other's tile, chats, mutes and unmutes, shares a screen, leaves.
// It reads only what the page shows: tiles (their <video> element's decoded frames and their
// data attributes), the chat log, the form.
//
// usage: node playground_driver.mjs '<json config>'
//   { "url": "http://127.0.0.1:7880/", "room": "demo", "names": ["Alice", "Bob"],
//     "minFrames": 15, "risingMs": 1000, "stepTimeoutMs": 30000,
//     "fakeAudioFile": "/tmp/tone.wav",        // every tab's microphone (a WAV Chromium loops)
//     "screenshot": "/tmp/playground.png" }     // the first tab, once both see each other and chatted
//
// Prints JSON lines: {"step": name, "ok": bool, ...} as each step ends (it stops at the first
// that fails), then {"result": {"ok", "steps", "tiles"}}; then stays until stdin closes and
// closes the browser.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { chromium, chromiumArgs, launchOptions } from './chromium_host.mjs';

const config = JSON.parse(process.argv[2]);
const minFrames = config.minFrames ?? 15;
const risingMs = config.risingMs ?? 1000;
const stepTimeoutMs = config.stepTimeoutMs ?? 30000;
const say = (obj) => console.log(JSON.stringify(obj));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const userDataHome = fs.mkdtempSync(path.join(os.tmpdir(), 'trio-sfu-playground-chromium-'));
const args = chromiumArgs({ fakeAudioFile: config.fakeAudioFile });
// getDisplayMedia without a picker: headless Chromium captures its own tab.
args.push('--auto-accept-this-tab-capture', '--auto-select-tab-capture-source-by-title=trio-sfu playground');
const browser = await chromium.launch(launchOptions(args, userDataHome));
say({ chromium: browser.version() });

let closing = false;
async function close(why) {
  if (closing) return;
  closing = true;
  say({ exit: why });
  await browser.close().catch(() => {});
  fs.rmSync(userDataHome, { recursive: true, force: true });
  process.exit(0);
}
process.stdin.on('end', () => close('stdin closed'));
process.stdin.resume();
process.on('SIGTERM', () => close('SIGTERM'));

// Everything the page shows of its tiles.
function readTiles() {
  return Array.from(document.querySelectorAll('#tiles .tile')).map((tile) => {
    const video = tile.querySelector('video');
    const quality = video.getVideoPlaybackQuality();
    return {
      identity: tile.dataset.identity, kind: tile.dataset.kind, local: tile.dataset.local === 'true',
      name: tile.querySelector('.name').textContent, camera: tile.dataset.camera,
      microphone: tile.dataset.microphone, audioLevel: Number(tile.dataset.audioLevel),
      quality: tile.dataset.quality, qualitySource: tile.dataset.qualitySource,
      frames: quality.totalVideoFrames, width: video.videoWidth, height: video.videoHeight,
    };
  });
}

const people = [];
for (const name of config.names) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() !== 'debug') say({ tab: name, console: m.type(), text: m.text().slice(0, 300) }); });
  page.on('pageerror', (e) => say({ tab: name, pageerror: String(e) }));
  people.push({ name, page });
}
const [first, second] = people;
const tilesOf = (person) => person.page.evaluate(readTiles);
// The tile `viewer` shows of `shown`'s camera (or screen): found by the name on it.
const tileOf = (tiles, shown, kind = 'camera') => tiles.find((t) => !t.local && t.kind === kind
  && (kind === 'camera' ? t.name === shown.name : t.name === `${shown.name}'s screen`));

const steps = {};
async function step(name, body) {
  const started = Date.now();
  let outcome;
  try {
    outcome = await body();
  } catch (e) {
    outcome = { ok: false, error: String(e) };
  }
  steps[name] = { ...outcome, ms: Date.now() - started };
  say({ step: name, ...steps[name] });
  if (!outcome.ok) await finish();
}

// Polls `probe` until it returns {ok: true, ...}, or the step's time is up (returns the last).
async function until(probe, timeoutMs = stepTimeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = { ok: false };
  while (Date.now() < deadline) {
    last = await probe();
    if (last.ok) return last;
    await sleep(200);
  }
  return { ...last, ok: false, timedOut: true };
}

async function finish() {
  const tiles = {};
  for (const person of people) tiles[person.name] = await tilesOf(person).catch((e) => String(e));
  const ok = Object.values(steps).every((s) => s.ok);
  say({ result: { ok, steps, tiles } });
  // Stay until the test closes stdin (close() exits the process).
  await new Promise(() => {});
}

// Each sees the other's camera: decoded frames past minFrames, and still rising risingMs later.
async function seesVideo(viewer, shown, kind = 'camera') {
  const firstLook = await until(async () => {
    const tile = tileOf(await tilesOf(viewer), shown, kind);
    return { ok: !!tile && tile.frames >= minFrames && tile.width > 0, tile };
  });
  if (!firstLook.ok) return firstLook;
  await sleep(risingMs);
  const tile = tileOf(await tilesOf(viewer), shown, kind);
  return { ok: !!tile && tile.frames > firstLook.tile.frames, first: firstLook.tile, later: tile };
}

await step('open', async () => {
  const opened = [];
  for (const person of people) {
    const response = await person.page.goto(config.url);
    await person.page.waitForSelector('body[data-ready="true"]', { timeout: stepTimeoutMs });
    opened.push({ status: response.status(), contentType: response.headers()['content-type'],
      mode: await person.page.evaluate(() => document.body.dataset.mode) });
  }
  return { ok: opened.every((o) => o.status === 200 && o.mode === 'development'), opened };
});

await step('join', async () => {
  for (const person of people) {
    await person.page.fill('#room', config.room);
    await person.page.fill('#name', person.name);
    await person.page.click('#join');
  }
  for (const person of people) {
    await person.page.waitForSelector('#room-view:not([hidden])', { timeout: stepTimeoutMs });
  }
  return { ok: true, status: await Promise.all(people.map((p) => p.page.textContent('#status'))) };
});

await step('video', async () => {
  const [ab, ba] = await Promise.all([seesVideo(first, second), seesVideo(second, first)]);
  return { ok: ab.ok && ba.ok, [`${first.name} sees ${second.name}`]: ab, [`${second.name} sees ${first.name}`]: ba };
});

// A remote tile's meter moves with the remote's microphone, and its quality is known.
await step('audio level and quality', async () => {
  const results = await Promise.all([[first, second], [second, first]].map(([viewer, shown]) => until(async () => {
    const tile = tileOf(await tilesOf(viewer), shown);
    return { ok: !!tile && tile.audioLevel > 0.01 && tile.quality !== 'unknown', tile };
  })));
  return { ok: results.every((r) => r.ok), results };
});

async function chat(from, to, text) {
  await from.page.fill('#chat-input', text);
  await from.page.press('#chat-input', 'Enter');
  return until(async () => {
    const lines = await to.page.evaluate(() => Array.from(document.querySelectorAll('#chat-log li[data-from]'))
      .map((li) => ({ from: li.querySelector('.from').textContent, text: li.querySelector('.text').textContent })));
    return { ok: lines.some((l) => l.from === from.name && l.text === text), lines };
  });
}

await step('chat', async () => {
  const there = await chat(first, second, `hello from ${first.name}`);
  const back = there.ok ? await chat(second, first, `hi ${first.name}, ${second.name} here`) : { ok: false };
  return { ok: there.ok && back.ok, there, back };
});

if (config.screenshot) {
  await step('screenshot', async () => {
    await sleep(500);  // the latest frames painted
    await first.page.screenshot({ path: config.screenshot });
    return { ok: fs.statSync(config.screenshot).size > 0, path: config.screenshot };
  });
}

// `viewer`'s tile of `shown` reaches `want` ({camera: 'muted'}, ...).
const tileShows = (viewer, shown, want) => until(async () => {
  const tile = tileOf(await tilesOf(viewer), shown);
  return { ok: !!tile && Object.entries(want).every(([k, v]) => tile[k] === v), tile };
});

await step('mute and unmute', async () => {
  const seen = {};
  for (const [button, attribute] of [['#toggle-mic', 'microphone'], ['#toggle-camera', 'camera']]) {
    await first.page.click(button);
    seen[`${attribute} muted`] = await tileShows(second, first, { [attribute]: 'muted' });
    if (!seen[`${attribute} muted`].ok) return { ok: false, seen };
    await first.page.click(button);
    seen[`${attribute} on`] = await tileShows(second, first, { [attribute]: 'on' });
    if (!seen[`${attribute} on`].ok) return { ok: false, seen };
  }
  // The camera came back: frames flow again.
  seen.video = await seesVideo(second, first);
  return { ok: seen.video.ok, seen };
});

await step('screen share', async () => {
  await first.page.click('#toggle-screen');
  const shared = await seesVideo(second, first, 'screen');
  const error = await first.page.textContent('#media-error');
  if (!shared.ok) return { ok: false, shared, error };
  await first.page.click('#toggle-screen');
  const stopped = await until(async () => ({ ok: !tileOf(await tilesOf(second), first, 'screen') }));
  return { ok: stopped.ok, shared, stopped };
});

await step('leave', async () => {
  await first.page.click('#leave');
  await first.page.waitForSelector('#join-form:not([hidden])', { timeout: stepTimeoutMs });
  const gone = await until(async () => {
    const tiles = await tilesOf(second);
    return { ok: !tiles.some((t) => !t.local), tiles };
  });
  return { ok: gone.ok, gone, status: await first.page.textContent('#status') };
});

await finish();
