"""Chromium (libwebrtc) as the peer: it must accept our answers and answer our offers.

Debian's Chromium is driven headless through playwright-core from
scripts/browser/node_modules. A tiny Node bridge, written to a temp dir, runs
JavaScript expressions in a blank page and passes results back as JSON lines.
No network traffic: we hand Chromium no candidates, so ICE never starts.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import threading

import pytest

from sdp.codecs import EXT_RID, MediaKind
from sdp.model import Direction, Fingerprint
from sdp.negotiator import DtlsRole, LocalParams, SubscriberOffer, answer_offer, negotiated_media
from sdp.parser import parse, serialize
from sdp.transceivers import TransceiverState

ROOT = pathlib.Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "scripts" / "browser" / "node_modules"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

BRIDGE = r"""
import { createRequire } from 'node:module';
import readline from 'node:readline';
const require = createRequire(process.env.BRIDGE_MODULES + '/');
const { chromium } = require('playwright-core');
const browser = await chromium.launch({
  executablePath: process.env.BRIDGE_CHROMIUM, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
console.log(JSON.stringify({ ready: browser.version() }));
const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  const { expr } = JSON.parse(line);
  try {
    console.log(JSON.stringify({ result: await page.evaluate(expr) }));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e) }));
  }
}
await browser.close();
"""


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not os.path.exists(CHROMIUM):
        return f"no Chromium at {CHROMIUM}"
    if not (NODE_MODULES / "playwright-core").is_dir():
        return "scripts/browser/node_modules/playwright-core is not installed (npm ci)"
    return None


class Chromium:
    def __init__(self, tmp_path):
        script = tmp_path / "bridge.mjs"
        script.write_text(BRIDGE)
        env = dict(os.environ, BRIDGE_MODULES=str(NODE_MODULES), BRIDGE_CHROMIUM=CHROMIUM)
        self.proc = subprocess.Popen(["node", str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        # Never hang the suite on a wedged browser.
        self._watchdog = threading.Timer(120, self.proc.kill)
        self._watchdog.start()
        hello = self._read()
        assert "ready" in hello, hello
        self.version = hello["ready"]

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("Chromium bridge exited")
            if line.startswith("{"):
                return json.loads(line)

    def eval(self, expr: str):
        self.proc.stdin.write(json.dumps({"expr": expr}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise AssertionError(f"Chromium: {reply['error']}")
        return reply["result"]

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        finally:
            self._watchdog.cancel()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    missing = _missing()
    if missing:
        pytest.skip(missing)
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    yield browser
    browser.close()


def local_params() -> LocalParams:
    digest = hashlib.sha256(b"server certificate").hexdigest().upper()
    return LocalParams(
        ice_ufrag="SfuU", ice_pwd="sfu-password-0123456789ab",
        fingerprints=(Fingerprint("sha-256", ":".join(digest[i:i + 2] for i in range(0, 64, 2))),),
        session_id=11)


def js_string(text: str) -> str:
    return json.dumps(text)


pytestmark = pytest.mark.slow


def test_chromium_accepts_our_answer_to_its_simulcast_offer(chromium):
    offer_text = chromium.eval("""(async () => {
        const pc = new RTCPeerConnection();
        window.pub = pc;
        pc.addTransceiver('audio', {direction: 'sendonly'});
        pc.addTransceiver('video', {direction: 'sendonly', sendEncodings: [
            {rid: 'q', scaleResolutionDownBy: 4}, {rid: 'h', scaleResolutionDownBy: 2}, {rid: 'f'}]});
        pc.createDataChannel('_reliable');
        await pc.setLocalDescription();
        return pc.localDescription.sdp;
    })()""")
    offer = parse(offer_text)
    assert serialize(offer) == offer_text.replace("\r\n", "\n").replace("\n", "\r\n")
    answer = answer_offer(offer, local_params())
    state = chromium.eval(f"""(async () => {{
        const pc = window.pub;
        await pc.setRemoteDescription({{type: 'answer', sdp: {js_string(serialize(answer))}}});
        const video = pc.getTransceivers()[1];
        return {{
            signaling: pc.signalingState,
            directions: pc.getTransceivers().map(t => [t.mid, t.currentDirection]),
            rids: video.sender.getParameters().encodings.map(e => e.rid),
            codecs: video.sender.getParameters().codecs.map(c => [c.payloadType, c.mimeType]),
            sctp: pc.sctp !== null,
        }};
    }})()""")
    assert state["signaling"] == "stable"
    assert state["directions"] == [["0", "sendonly"], ["1", "sendonly"]]
    assert state["rids"] == ["q", "h", "f"]  # simulcast survived our answer
    assert state["sctp"]
    video = negotiated_media(offer, answer)["1"]
    # Chromium sends with exactly the payload types we accepted, in our order.
    assert [pt for pt, _ in state["codecs"]] == [c.payload_type for c in video.codecs]
    assert video.rids == ("q", "h", "f") and EXT_RID in video.extensions.values()


def test_chromium_subscriber_answers_our_offers(chromium):
    sub = SubscriberOffer(local_params(), cname="sfu")
    table = sub.table
    chromium.eval("""(() => {
        const pc = new RTCPeerConnection();
        window.sub = pc;
        window.tracks = [];
        pc.ontrack = (e) => window.tracks.push([e.transceiver.mid, e.track.kind, e.track.id,
                                                e.streams.map(s => s.id)]);
        return true;
    })()""")

    def round_trip():
        offer = sub.create_offer()
        answer_text = chromium.eval(f"""(async () => {{
            const pc = window.sub;
            await pc.setRemoteDescription({{type: 'offer', sdp: {js_string(serialize(offer))}}});
            await pc.setLocalDescription();
            return pc.localDescription.sdp;
        }})()""")
        answer = parse(answer_text)
        assert serialize(answer) == answer_text.replace("\r\n", "\n").replace("\n", "\r\n")
        return offer, answer, sub.apply_answer(answer)

    def chromium_state():
        return chromium.eval("""(() => ({
            tracks: window.tracks,
            directions: window.sub.getTransceivers().map(t => [t.mid, t.currentDirection]),
        }))()""")

    # 1. Data channel only (LiveKit's first subscriber offer).
    offer, answer, result = round_trip()
    assert result["0"].accepted and result["0"].sctp_port == 5000
    assert sub.dtls_role is DtlsRole.SERVER  # Chromium answers actpass with active

    # 2. Two tracks with LiveKit-style msid.
    audio = table.bind("TR_a", MediaKind.AUDIO, "PA_x|camera")
    table.bind("TR_v", MediaKind.VIDEO, "PA_x|camera")
    offer, answer, result = round_trip()
    state = chromium_state()
    assert ["1", "audio", "TR_a", ["PA_x|camera"]] in state["tracks"]
    assert ["2", "video", "TR_v", ["PA_x|camera"]] in state["tracks"]
    assert result["1"].payload_type("opus") == 111 and result["2"].payload_type("VP8") == 96
    assert result["2"].direction is Direction.SENDONLY
    assert any(c.is_rtx and c.apt == 96 for c in result["2"].codecs)

    # 3. Audio's source closes expecting a resume (cached), another video comes: appended, order
    # kept; the held audio line is offered as Chromium last saw it, so its track stays.
    table.unbind("TR_a", cache=True)
    table.bind("TR_v2", MediaKind.VIDEO, "PA_y|camera")
    offer, answer, result = round_trip()
    assert [m.mid for m in answer.media] == ["0", "1", "2", "3"]
    assert dict(chromium_state()["directions"])["1"] == "recvonly"
    assert ["1", "audio", "TR_a", ["PA_x|camera"]] in chromium_state()["tracks"]

    # 3b. Video TR_v unsubscribed for good: its line idles, inactive.
    table.unbind("TR_v")
    offer, answer, result = round_trip()
    assert dict(chromium_state()["directions"])["2"] == "inactive"

    # 4. Audio resumes on its old m-line and SSRC.
    again = table.bind("TR_a", MediaKind.AUDIO, "PA_x|camera")
    assert (again.mid, again.ssrc) == ("1", audio.ssrc)
    offer, answer, result = round_trip()
    assert dict(chromium_state()["directions"])["1"] == "recvonly"
    assert result["1"].ssrcs[0] == audio.ssrc

    # 5. Stop TR_v2's m-line: Chromium answers port 0, the slot becomes recyclable...
    table.stop("3")
    offer, answer, result = round_trip()
    assert answer.media[3].port == 0 and not result["3"].accepted
    assert table.get("3").state is TransceiverState.RECYCLABLE
    # ...and a new track reuses the slot with a fresh mid, which Chromium accepts.
    table.bind("TR_b", MediaKind.AUDIO, "PA_z|camera")
    offer, answer, result = round_trip()
    assert [m.mid for m in answer.media] == ["0", "1", "2", "4"]
    assert not answer.media[3].rejected
    assert ["4", "audio", "TR_b", ["PA_z|camera"]] in chromium_state()["tracks"]


def test_chromium_accepts_rejected_sections_outside_bundle(chromium):
    """Audio offered as PCMU only and video as H.264 packetization-mode=0 only: both refused."""
    offer_text = chromium.eval("""(async () => {
        const pc = new RTCPeerConnection();
        window.rej = pc;
        const audio = pc.addTransceiver('audio', {direction: 'sendonly'});
        audio.setCodecPreferences(RTCRtpReceiver.getCapabilities('audio').codecs
            .filter(c => c.mimeType === 'audio/PCMU'));
        const video = pc.addTransceiver('video', {direction: 'sendonly'});
        video.setCodecPreferences(RTCRtpReceiver.getCapabilities('video').codecs
            .filter(c => c.mimeType === 'video/H264' && /packetization-mode=0/.test(c.sdpFmtpLine || '')));
        pc.createDataChannel('_reliable');
        await pc.setLocalDescription();
        return pc.localDescription.sdp;
    })()""")
    offer = parse(offer_text)
    assert [c.name for c in offer.media[0].codecs()] == ["PCMU"]
    assert {c.name for c in offer.media[1].codecs()} <= {"H264", "rtx"}
    answer = answer_offer(offer, local_params())
    assert [m.rejected for m in answer.media] == [True, True, False]
    assert answer.bundle_groups() == [("2",)]
    state = chromium.eval(f"""(async () => {{
        const pc = window.rej;
        await pc.setRemoteDescription({{type: 'answer', sdp: {js_string(serialize(answer))}}});
        return {{signaling: pc.signalingState,
                 transceivers: pc.getTransceivers().map(t => t.mid),
                 sctp: pc.sctp !== null}};
    }})()""")
    # A rejected m-line stops its transceiver, and Chromium then drops stopped ones
    # from getTransceivers(), as webrtc-pc specifies for stopped transceivers.
    assert state == {"signaling": "stable", "transceivers": [], "sctp": True}
