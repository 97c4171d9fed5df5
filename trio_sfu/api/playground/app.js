// trio-sfu playground: join a room with livekit-client, see and hear everyone in it, chat, leave.
//
// The page is drawn from the Room's own state: every event that can change what is shown asks
// for one render, which makes the tiles match the participants and their tracks (adding,
// attaching, detaching and removing as needed). Audio levels and connection quality are polled.
// Each tile carries what it shows as data attributes (identity, camera, microphone, audio level,
// quality), which is also how tests/e2e/test_e2e_playground.py reads the page.
import {
  ConnectionQuality,
  DisconnectReason,
  Room,
  RoomEvent,
  Track,
  createAudioAnalyser,
  version as livekitVersion,
} from './livekit-client.js';

const $ = (id) => document.getElementById(id);
const development = document.body.dataset.mode === 'development';
// LiveKit's own components chat over text streams on this topic: their chat and ours interoperate.
const CHAT_TOPIC = 'lk.chat';
const SCREEN = '\u0000screen';  // tile key suffix of a participant's screen share
const SPEAKING_LEVEL = 0.05;

let room = null;
const tiles = new Map();      // key (identity, or identity + SCREEN) -> tile state
const audioSinks = new Map(); // remote audio track sid -> {track, elements}
const analysers = new Map();  // MediaStreamTrack id -> createAudioAnalyser result
const lastReceived = new Map(); // remote identity -> {lost, received} at the previous quality poll
let timers = [];
let renderQueued = false;

function setStatus(text) { $('status').textContent = text; }
function errorText(e) { return String((e && e.message) || e); }

// ---- joining -------------------------------------------------------------------------------

async function devToken(roomName, identity, name) {
  const response = await fetch('/playground/dev-token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ room: roomName, identity, name }),
  });
  let reply = {};
  try { reply = await response.json(); } catch { /* not JSON: the status says enough */ }
  if (!response.ok || !reply.token) {
    throw new Error(reply.error || `the server minted no token (HTTP ${response.status})`);
  }
  return reply.token;
}

// A name is what people see; an identity must be unique in the room (a second "alice" would
// replace the first one), so it gets a short random suffix, within the server's identity limit.
function identityFor(name) {
  const suffix = '-' + Array.from(crypto.getRandomValues(new Uint8Array(3)),
    (b) => b.toString(16).padStart(2, '0')).join('');
  const max = Number($('name').dataset.maxIdentity) || 0;
  const chars = Array.from(name);
  const bytes = (text) => new TextEncoder().encode(text).length;
  while (max && chars.length && bytes(chars.join('') + suffix) > max) chars.pop();
  return chars.join('') + suffix;
}

function signalUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
}

async function onJoin(event) {
  event.preventDefault();
  $('join-error').textContent = '';
  $('join').disabled = true;
  try {
    let token;
    if (development) {
      const roomName = $('room').value.trim();
      const name = $('name').value.trim();
      if (!roomName || !name) throw new Error('enter a room and your name');
      token = await devToken(roomName, identityFor(name), name);
    } else {
      token = $('token').value.trim();
      if (!token) throw new Error('paste an access token');
    }
    await enterRoom(token);
  } catch (e) {
    $('join-error').textContent = errorText(e);
    setStatus('not connected');
  } finally {
    $('join').disabled = false;
  }
}

async function enterRoom(token) {
  const r = new Room({ adaptiveStream: true, dynacast: true });
  room = r;
  listen(r);
  setStatus('connecting…');
  try {
    await r.connect(signalUrl(), token);
  } catch (e) {
    room = null;
    await r.disconnect().catch(() => {});
    throw e;
  }
  $('join-form').hidden = true;
  $('room-view').hidden = false;
  $('room-name').textContent = r.name;
  setStatus(`connected as ${r.localParticipant.name || r.localParticipant.identity}`);
  timers = [setInterval(updateLevels, 200), setInterval(() => { updateQuality().catch(() => {}); }, 2000)];
  render();
  // The click that joined is the user gesture browsers want before they play sound.
  r.startAudio().catch(() => {});
  // Without a camera or microphone (none, or permission refused) one stays in the room, watching.
  try {
    await r.localParticipant.enableCameraAndMicrophone();
  } catch (e) {
    showMediaError('camera/microphone', e);
  }
  render();
}

function listen(r) {
  const rerender = () => { if (r === room) scheduleRender(); };
  for (const event of [
    RoomEvent.ParticipantConnected, RoomEvent.ParticipantDisconnected, RoomEvent.TrackPublished,
    RoomEvent.TrackUnpublished, RoomEvent.TrackSubscribed, RoomEvent.TrackUnsubscribed,
    RoomEvent.TrackMuted, RoomEvent.TrackUnmuted, RoomEvent.LocalTrackPublished,
    RoomEvent.LocalTrackUnpublished, RoomEvent.ParticipantNameChanged,
    RoomEvent.ConnectionQualityChanged,
  ]) r.on(event, rerender);
  r.on(RoomEvent.ParticipantConnected, (p) => { if (r === room) chatNotice(`${displayName(p)} joined`); });
  r.on(RoomEvent.ParticipantDisconnected, (p) => { if (r === room) chatNotice(`${displayName(p)} left`); });
  r.on(RoomEvent.Reconnecting, () => { if (r === room) setStatus('reconnecting…'); });
  r.on(RoomEvent.Reconnected, () => { if (r === room) setStatus('connected'); });
  r.on(RoomEvent.MediaDevicesError, (e) => { if (r === room) showMediaError('media device', e); });
  r.on(RoomEvent.Disconnected, (reason) => { if (r === room) leftRoom(reason); });
  r.registerTextStreamHandler(CHAT_TOPIC, async (reader, from) => {
    const text = await reader.readAll();
    if (r === room) chatLine(from.identity, text, false);
  });
}

function leftRoom(reason) {
  room = null;
  for (const id of timers) clearInterval(id);
  timers = [];
  for (const key of Array.from(tiles.keys())) removeTile(key);
  for (const sid of Array.from(audioSinks.keys())) dropAudio(sid);
  for (const id of Array.from(analysers.keys())) dropAnalyser(id);
  lastReceived.clear();
  $('chat-log').replaceChildren();
  $('media-error').textContent = '';
  $('room-view').hidden = true;
  $('join-form').hidden = false;
  const why = reason === undefined ? '' : ` (${DisconnectReason[reason] ?? reason})`;
  setStatus(`not connected${why}`);
}

// ---- tiles ---------------------------------------------------------------------------------

function participants() {
  return room ? [room.localParticipant, ...room.remoteParticipants.values()] : [];
}

function displayName(p) { return p.name || p.identity; }

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; render(); }, 0);
}

// 'on', 'muted' (published, muted) or 'off' (not published).
function publicationState(pub) {
  if (!pub) return 'off';
  return pub.isMuted ? 'muted' : 'on';
}

function render() {
  if (!room) return;
  const wantedTiles = new Set();
  const wantedAudio = new Set();
  for (const p of participants()) {
    const local = p === room.localParticipant;
    const camera = p.getTrackPublication(Track.Source.Camera);
    const microphone = p.getTrackPublication(Track.Source.Microphone);
    const tile = ensureTile(p.identity, p, 'camera');
    wantedTiles.add(p.identity);
    tile.el.dataset.camera = publicationState(camera);
    tile.el.dataset.microphone = publicationState(microphone);
    tile.el.querySelector('.name').textContent = displayName(p) + (local ? ' (you)' : '');
    showVideo(tile, camera);
    tile.audioTrack = microphone && !microphone.isMuted ? microphone.track || null : null;

    const screen = p.getTrackPublication(Track.Source.ScreenShare);
    if (screen) {
      const screenTile = ensureTile(p.identity + SCREEN, p, 'screen');
      wantedTiles.add(p.identity + SCREEN);
      screenTile.el.dataset.camera = publicationState(screen);
      screenTile.el.querySelector('.name').textContent = `${displayName(p)}'s screen`;
      showVideo(screenTile, screen);
    }
    if (!local) {
      // Remote sound plays through elements of its own (a tile's video element stays muted).
      for (const source of [Track.Source.Microphone, Track.Source.ScreenShareAudio]) {
        const pub = p.getTrackPublication(source);
        if (pub && pub.track) {
          playAudio(pub.track);
          wantedAudio.add(pub.track.sid);
        }
      }
    }
  }
  for (const key of Array.from(tiles.keys())) if (!wantedTiles.has(key)) removeTile(key);
  for (const sid of Array.from(audioSinks.keys())) if (!wantedAudio.has(sid)) dropAudio(sid);
  renderControls();
}

function ensureTile(key, participant, kind) {
  let tile = tiles.get(key);
  if (tile) return tile;
  const el = $('tile-template').content.firstElementChild.cloneNode(true);
  el.dataset.identity = participant.identity;
  el.dataset.kind = kind;
  el.dataset.local = String(participant === room.localParticipant);
  el.dataset.quality = 'unknown';
  el.dataset.audioLevel = '0';
  tile = { el, video: el.querySelector('video'), videoTrack: null, audioTrack: null };
  tiles.set(key, tile);
  // One's own tiles first, then everyone else's in the order they came.
  const tilesEl = $('tiles');
  if (participant === room.localParticipant && kind === 'camera') tilesEl.prepend(el); else tilesEl.append(el);
  return tile;
}

function showVideo(tile, pub) {
  const track = pub && !pub.isMuted ? pub.track || null : null;
  if (track === tile.videoTrack) return;
  if (tile.videoTrack) tile.videoTrack.detach(tile.video);
  tile.videoTrack = track;
  if (track) track.attach(tile.video);
}

function removeTile(key) {
  const tile = tiles.get(key);
  if (!tile) return;
  if (tile.videoTrack) tile.videoTrack.detach(tile.video);
  tile.el.remove();
  tiles.delete(key);
}

function playAudio(track) {
  if (audioSinks.has(track.sid)) return;
  const element = track.attach();
  element.hidden = true;
  document.body.append(element);
  audioSinks.set(track.sid, { track, element });
}

function dropAudio(sid) {
  const sink = audioSinks.get(sid);
  audioSinks.delete(sid);
  sink.track.detach(sink.element);
  sink.element.remove();
}

// ---- audio levels and connection quality ---------------------------------------------------

function levelOf(track) {
  const id = track.mediaStreamTrack && track.mediaStreamTrack.id;
  if (!id) return 0;
  let analyser = analysers.get(id);
  if (!analyser) {
    try {
      analyser = createAudioAnalyser(track, { cloneTrack: true });
    } catch {
      return 0;
    }
    analysers.set(id, analyser);
  }
  return analyser.calculateVolume();
}

function dropAnalyser(id) {
  const analyser = analysers.get(id);
  analysers.delete(id);
  analyser.cleanup().catch(() => {});
}

function updateLevels() {
  const live = new Set();
  for (const tile of tiles.values()) {
    if (tile.el.dataset.kind !== 'camera') continue;
    const track = tile.audioTrack;
    const level = track ? levelOf(track) : 0;
    if (track && track.mediaStreamTrack) live.add(track.mediaStreamTrack.id);
    // The meter on a square-root scale: speech sits in its middle, not at its bottom edge.
    tile.el.querySelector('.level').value = Math.sqrt(level);
    tile.el.dataset.audioLevel = level.toFixed(3);
    tile.el.classList.toggle('speaking', level > SPEAKING_LEVEL);
  }
  for (const id of Array.from(analysers.keys())) if (!live.has(id)) dropAnalyser(id);
}

function classify(lossFraction, rttSeconds) {
  if (lossFraction < 0.02 && rttSeconds < 0.2) return ConnectionQuality.Excellent;
  if (lossFraction < 0.08 && rttSeconds < 0.4) return ConnectionQuality.Good;
  return ConnectionQuality.Poor;
}

// What this page sees of a remote participant: loss on the tracks it receives from them since
// the previous poll. Of itself: loss and round-trip time the server reports on what it sends.
async function measuredQuality(p) {
  const local = p === room.localParticipant;
  let lost = 0, received = 0, rtt = 0, fractionLost = 0, reports = 0;
  for (const pub of p.trackPublications.values()) {
    if (!pub.track) continue;
    const report = await pub.track.getRTCStatsReport().catch(() => undefined);
    if (!report) continue;
    report.forEach((s) => {
      if (!local && s.type === 'inbound-rtp') {
        lost += Math.max(0, s.packetsLost || 0);
        received += s.packetsReceived || 0;
        reports += 1;
      } else if (local && s.type === 'remote-inbound-rtp') {
        fractionLost = Math.max(fractionLost, s.fractionLost || 0);
        rtt = Math.max(rtt, s.roundTripTime || 0);
        reports += 1;
      }
    });
  }
  if (!reports) return ConnectionQuality.Unknown;
  if (local) return classify(fractionLost, rtt);
  const before = lastReceived.get(p.identity) || { lost: 0, received: 0 };
  lastReceived.set(p.identity, { lost, received });
  const newLost = lost - before.lost;
  const newReceived = received - before.received;
  if (newReceived <= 0) return newLost > 0 ? ConnectionQuality.Lost : ConnectionQuality.Unknown;
  return classify(newLost / (newLost + newReceived), 0);
}

async function updateQuality() {
  const r = room;
  for (const p of participants()) {
    // The server's own verdict when it sends one; otherwise what this page measures.
    let quality = p.connectionQuality;
    let source = 'server';
    if (quality === ConnectionQuality.Unknown) {
      quality = await measuredQuality(p);
      source = 'page';
    }
    if (r !== room) return;
    const tile = tiles.get(p.identity);
    if (!tile) continue;
    tile.el.dataset.quality = quality;
    tile.el.dataset.qualitySource = source;
    const label = tile.el.querySelector('.quality');
    label.textContent = quality;
    label.title = source === 'server' ? 'connection quality (from the server)'
      : 'connection quality (measured by this page: packet loss, round-trip time)';
  }
}

// ---- controls ------------------------------------------------------------------------------

function renderControls() {
  const lp = room && room.localParticipant;
  if (!lp) return;
  const mic = $('toggle-mic'), camera = $('toggle-camera'), screen = $('toggle-screen');
  mic.textContent = lp.isMicrophoneEnabled ? 'Mute mic' : 'Unmute mic';
  mic.setAttribute('aria-pressed', String(!lp.isMicrophoneEnabled));
  camera.textContent = lp.isCameraEnabled ? 'Stop camera' : 'Start camera';
  camera.setAttribute('aria-pressed', String(!lp.isCameraEnabled));
  screen.textContent = lp.isScreenShareEnabled ? 'Stop sharing' : 'Share screen';
  screen.setAttribute('aria-pressed', String(lp.isScreenShareEnabled));
}

function showMediaError(what, e) {
  $('media-error').textContent = `${what}: ${errorText(e)}`;
}

async function toggle(button, action) {
  if (!room) return;
  button.disabled = true;
  $('media-error').textContent = '';
  try {
    await action(room.localParticipant);
  } catch (e) {
    showMediaError(button.id.replace('toggle-', ''), e);
  } finally {
    button.disabled = false;
    render();
  }
}

// ---- chat ----------------------------------------------------------------------------------

function chatLine(identity, text, mine) {
  const p = room && (identity === room.localParticipant.identity ? room.localParticipant
    : room.getParticipantByIdentity(identity));
  const item = document.createElement('li');
  item.dataset.from = identity;
  item.classList.toggle('mine', mine);
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = p ? displayName(p) : identity;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  item.append(from, body);
  appendChat(item);
}

function chatNotice(text) {
  const item = document.createElement('li');
  item.className = 'notice';
  item.textContent = text;
  appendChat(item);
}

function appendChat(item) {
  const log = $('chat-log');
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

async function onChat(event) {
  event.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text || !room) return;
  input.value = '';
  try {
    await room.localParticipant.sendText(text, { topic: CHAT_TOPIC });
    chatLine(room.localParticipant.identity, text, true);
  } catch (e) {
    input.value = text;
    chatNotice(`not sent: ${errorText(e)}`);
  }
}

// ---- wiring --------------------------------------------------------------------------------

const query = new URLSearchParams(location.search);
if (query.get('room')) $('room').value = query.get('room');
if (query.get('name')) $('name').value = query.get('name');
$('chat-input').maxLength = 2000;
$('join-form').addEventListener('submit', onJoin);
$('chat-form').addEventListener('submit', onChat);
$('leave').addEventListener('click', () => { if (room) room.disconnect(); });
$('toggle-mic').addEventListener('click', (e) =>
  toggle(e.currentTarget, (lp) => lp.setMicrophoneEnabled(!lp.isMicrophoneEnabled)));
$('toggle-camera').addEventListener('click', (e) =>
  toggle(e.currentTarget, (lp) => lp.setCameraEnabled(!lp.isCameraEnabled)));
$('toggle-screen').addEventListener('click', (e) =>
  toggle(e.currentTarget, (lp) => lp.setScreenShareEnabled(!lp.isScreenShareEnabled, { audio: true })));
document.body.dataset.ready = 'true';
$('status').title = `livekit-client ${livekitVersion}`;
