// Data e2e driver: one livekit-client tab (Debian's headless Chromium, no media) joins, and once
// the remote participant is there it sends a reliable broadcast, a packet to that one identity,
// a lossy packet, an RPC call and a text stream; it also answers RPC "echo" and records what it
// receives. Prints JSON lines; {"result": ...} once it has received everything it expects from
// the remote (or at the timeout); then stays until stdin closes, so the peer can finish.
//
// usage: node data_browser_driver.mjs '<json config>'
//   { "wsUrl": "...", "identity": "web", "token": "...", "remote": "py", "text": "...",
//     "remoteText": "...", "timeoutMs": 60000 }
// Reuses scripts/browser/node_modules (playwright-core, livekit-client's UMD build).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const browserDir = path.resolve(here, '..', '..', 'scripts', 'browser');
const require = createRequire(path.join(browserDir, 'package.json'));
const { chromium } = require('playwright-core');
const umd = path.join(browserDir, 'node_modules', 'livekit-client', 'dist', 'livekit-client.umd.js');

const config = JSON.parse(process.argv[2]);
const say = (obj) => console.log(JSON.stringify(obj));

const PAGE = `<!doctype html><html><head><meta charset="utf-8">
<script src="/livekit-client.umd.js"></script></head><body><script>
const dec = new TextDecoder();
window.got = { data: [], rpcCalls: [], texts: [], log: [] };
window.join = async (url, token) => {
  const room = new LivekitClient.Room();
  window.room = room;
  room.on(LivekitClient.RoomEvent.DataReceived, (payload, participant, kind, topic) => {
    window.got.data.push({ from: participant ? participant.identity : null, text: dec.decode(payload),
      reliable: kind === LivekitClient.DataPacket_Kind.RELIABLE, topic: topic || '' });
  });
  room.registerRpcMethod('echo', async (data) => {
    window.got.rpcCalls.push([data.callerIdentity, data.payload]);
    return data.payload.toUpperCase() + ' from web';
  });
  room.registerTextStreamHandler('doc', async (reader, info) => {
    const text = await reader.readAll();
    window.got.texts.push([info.identity, text]);
  });
  room.on(LivekitClient.RoomEvent.Disconnected, (r) => window.got.log.push('disconnected ' + r));
  await room.connect(url, token);
  window.got.log.push('connected');
};
window.remotes = () => Array.from(window.room.remoteParticipants.values()).map((p) => p.identity);
const enc = new TextEncoder();
window.send = async (remote, text) => {
  const lp = window.room.localParticipant;
  const out = {};
  await lp.publishData(enc.encode('web-hello'), { reliable: true, topic: 'greet' });
  await lp.publishData(enc.encode('web-to-' + remote), { reliable: true, destinationIdentities: [remote] });
  await lp.publishData(enc.encode('web-lossy'), { reliable: false, topic: 'lossy' });
  for (let attempt = 0; attempt < 5 && out.rpc === undefined; attempt++) {
    try {
      out.rpc = await lp.performRpc({ destinationIdentity: remote, method: 'echo', payload: 'from-web' });
    } catch (e) {
      out.rpcError = String(e && e.message || e);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  await lp.sendText(text, { topic: 'doc', destinationIdentities: [remote] });
  return out;
};
window.leave = async () => { if (window.room) await window.room.disconnect(); };
</script></body></html>`;

const server = http.createServer((req, res) => {
  if (req.url === '/') { res.writeHead(200, { 'content-type': 'text/html' }); res.end(PAGE); return; }
  if (req.url === '/livekit-client.umd.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' }); fs.createReadStream(umd).pipe(res); return;
  }
  res.writeHead(404); res.end();
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'trio-sfu-data-chromium-'));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  env: { ...process.env, HOME: home },
});
let finished = false;
async function finish(why) {
  if (finished) return;
  finished = true;
  say({ exit: why });
  await Promise.race([page.evaluate(() => window.leave()).catch(() => {}), new Promise((r) => setTimeout(r, 3000))]);
  await browser.close().catch(() => {});
  server.close();
  fs.rmSync(home, { recursive: true, force: true });
  process.exit(0);
}
process.stdin.on('end', () => finish('stdin closed'));
process.stdin.resume();
process.on('SIGTERM', () => finish('SIGTERM'));

const page = await browser.newPage();
page.on('console', (m) => say({ console: m.type(), text: m.text().slice(0, 300) }));
page.on('pageerror', (e) => say({ pageerror: String(e) }));
await page.goto(`http://127.0.0.1:${server.address().port}/`);

const started = Date.now();
const timeoutMs = config.timeoutMs ?? 60000;
const result = { sent: null, errors: [] };
try {
  await page.evaluate(([u, t]) => window.join(u, t), [config.wsUrl, config.token]);
  say({ joined: true });
  while (Date.now() - started < timeoutMs) {
    const remotes = await page.evaluate(() => window.remotes());
    if (remotes.includes(config.remote)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  result.sent = await page.evaluate(([r, t]) => window.send(r, t), [config.remote, config.text]);
  say({ sent: result.sent });
} catch (e) {
  result.errors.push(String(e));
}
const complete = (got) => ['py-hello', 'py-to-web'].every((t) => got.data.some((d) => d.text === t))
  && got.rpcCalls.length > 0 && got.texts.length > 0;
let got = null;
while (Date.now() - started < timeoutMs) {
  got = await page.evaluate(() => window.got);
  if (complete(got)) break;
  await new Promise((r) => setTimeout(r, 200));
}
result.got = got;
result.textWhole = !!got && got.texts.length > 0 && got.texts[0][0] === config.remote
  && got.texts[0][1] === config.remoteText;
result.elapsedMs = Date.now() - started;
say({ result });
setTimeout(() => finish('hold timeout'), 60000);
