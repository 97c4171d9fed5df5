// What every browser driver here needs: Debian's Chromium (headless, fake camera and microphone)
// and this directory served on 127.0.0.1 — a secure context, so getUserMedia works — with the
// pages and livekit-client's UMD build.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

export const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, 'package.json'));
export const { chromium } = require('playwright-core');

// `fakeAudioFile`: Chromium's default fake microphone beeps from one shared source, so with two
// tabs only one of them hears the beep; a WAV file is read by every capture on its own (and loops).
// `fakeCameraFps`: the fake camera's frame rate (Chromium's default is 20).
export function chromiumArgs({ fakeAudioFile, fakeCameraFps } = {}) {
  const args = [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    fakeCameraFps ? `--use-fake-device-for-media-stream=fps=${fakeCameraFps}` : '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--disable-dev-shm-usage', '--autoplay-policy=no-user-gesture-required',
    // Background tabs are throttled; every tab here is a participant that must keep decoding.
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
  ];
  if (process.env.CHROMIUM_WEBRTC_LOG === '1') args.push('--enable-logging=stderr', '--vmodule=*/webrtc/*=1');
  if (fakeAudioFile) args.push(`--use-file-for-fake-audio-capture=${fakeAudioFile}`);
  return args;
}

export function launchOptions(args, userDataHome) {
  return {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true, args, env: { ...process.env, HOME: userDataHome },
  };
}

// Static files from this directory only; resolves to the server and its base URL.
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.map': 'application/json' };
export async function serveHere() {
  const server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '');
    const file = path.resolve(here, rel);
    if (!file.startsWith(here + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404); res.end(); return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, baseUrl: `http://127.0.0.1:${server.address().port}` };
}
