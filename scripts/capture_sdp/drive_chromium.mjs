// Drive Debian's Chromium (headless, fake media devices) through playwright-core:
// open the livekit-client page, join the given LiveKit URL and publish camera + mic.
//
// usage: node drive_chromium.mjs <page-url> <livekit-ws-url> <timeout-ms>
// Stays up until stdin closes (the capture is complete) or the timeout passes,
// then closes the browser, so no Chromium process outlives the run.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'browser', 'package.json'));
const { chromium } = require('playwright-core');

export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
];

// CHROMIUM_WEBRTC_LOG=1 adds libwebrtc's own INFO lines (ICE, DTLS, SRTP) on
// Chromium's stderr; run with DEBUG=pw:browser to have Playwright relay them.
if (process.env.CHROMIUM_WEBRTC_LOG === '1') {
  CHROMIUM_ARGS.push('--enable-logging=stderr', '--vmodule=*/webrtc/*=1');
}

const [pageUrl, wsUrl, timeoutArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg || 30000);
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

const browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS });
console.log(JSON.stringify({ chromium: browser.version() }));
let finished = false;
const finish = async (why) => {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify({ exit: why }));
  await browser.close().catch(() => {});
  process.exit(0);
};
setTimeout(() => finish('timeout'), timeoutMs);
process.stdin.on('end', () => finish('stdin closed'));
process.stdin.resume();

const page = await browser.newPage();
page.on('console', (m) => console.log(JSON.stringify({ console: m.type(), text: m.text().slice(0, 300) })));
page.on('pageerror', (e) => console.log(JSON.stringify({ pageerror: String(e) })));
await page.goto(pageUrl);
const lkVersion = await page.evaluate(() => LivekitClient.version);
console.log(JSON.stringify({ livekitClient: lkVersion }));
// The room outcome is only logged: the capture needs SDP, not a working call.
const outcome = await page.evaluate(
  ([url, pcTimeout]) => window.lkJoinAndPublish(url, 'capture-token-not-verified', pcTimeout),
  [wsUrl, timeoutMs],
).catch((e) => ['evaluate failed: ' + e]);
console.log(JSON.stringify({ outcome }));
