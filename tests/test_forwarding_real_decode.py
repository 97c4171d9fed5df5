"""End to end with real codecs: two simulcast layers encoded by libvpx (aiortc's VP8
encoder) at different resolutions, forwarded through TrackReceiver → DownTrack with a
layer switch, then reassembled by aiortc's jitter buffer and decoded by libvpx. The
subscriber side sees one SSRC and decodes every frame, at the new size after the switch.
Also H.264 (libx264 via aiortc): the switch waits for the IDR."""

import fractions
import random

import pytest

from forwarding_streams import RID_EXT, Wire
from rtp.header_extensions import encode_rid
from rtp.packet import RtpPacket
from trio_sfu.forwarding.downtrack import DownTrack
from trio_sfu.forwarding.receiver import TrackReceiver

aiortc_codecs = pytest.importorskip("aiortc.codecs", reason="aiortc's libvpx/libx264 bindings are the real codecs")
av = pytest.importorskip("av", reason="PyAV builds the frames")
from aiortc.jitterbuffer import JitterBuffer  # noqa: E402
from aiortc.rtcrtpparameters import RTCRtpCodecParameters  # noqa: E402
from aiortc.rtp import RtpPacket as AiortcRtpPacket  # noqa: E402


class Encoding:
    def __init__(self, mime, rid, ssrc, width, height, seq, ts_base):
        self.codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96)
        self.encoder = aiortc_codecs.get_encoder(self.codec)
        self.rid, self.ssrc, self.width, self.height = rid, ssrc, width, height
        self.seq, self.ts_base = seq, ts_base

    def frame(self, index, keyframe=False):
        frame = av.VideoFrame(width=self.width, height=self.height)
        # Seeded noise: a fresh VideoFrame is uninitialised memory, so fill every plane.
        noise = random.Random(index)
        for plane in frame.planes:
            plane.update(noise.randbytes(plane.buffer_size))
        frame.pts = index * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, ts = self.encoder.encode(frame, force_keyframe=keyframe)
        out = []
        for i, payload in enumerate(payloads):
            out.append(RtpPacket(payload_type=96, sequence_number=self.seq & 0xFFFF,
                                 timestamp=(ts + self.ts_base) & 0xFFFFFFFF, ssrc=self.ssrc,
                                 marker=i == len(payloads) - 1, extensions={RID_EXT: encode_rid(self.rid)},
                                 payload=payload).serialize())
            self.seq += 1
        return out


def _decode_all(mime, packets):
    codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=100)
    decoder = aiortc_codecs.get_decoder(codec)
    jitter = JitterBuffer(capacity=512, is_video=True)
    sizes = []
    for raw in packets:
        pkt = AiortcRtpPacket.parse(raw)
        pkt._data = aiortc_codecs.depayload(codec, pkt.payload)
        _, jframe = jitter.add(pkt)
        if jframe is not None:
            for f in decoder.decode(jframe):
                sizes.append((f.width, f.height))
    return sizes


@pytest.mark.parametrize("mime", ["video/VP8", "video/H264"])
def test_switch_layers_and_decode_with_real_codecs(mime):
    wire = Wire()
    receiver = TrackReceiver("TR_v", mime, 90000, send_rtcp=wire.send_up_rtcp, local_ssrc=1,
                             rids=("q", "h"), rid_extension_id=RID_EXT)
    down = DownTrack(receiver, ssrc=0xC0C0, payload_types={96: 100}, clock_rate=90000, mime_type=mime,
                     send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp, target_layer=0)
    receiver.add_down_track(down)
    low = Encoding(mime, "q", 0x1000, 160, 96, seq=65_000, ts_base=4_294_900_000)
    high = Encoding(mime, "h", 0x2000, 320, 192, seq=10, ts_base=77)
    now = 0.0
    for i in range(24):
        if i == 8:
            down.set_target_layer(1, now)
        # the publisher answers the PLI our switch sent with a keyframe a few frames later
        for enc in (low, high):
            for p in enc.frame(i, keyframe=(enc is high and i == 12)):
                receiver.receive_rtp(p, now)
        now += 1 / 30
    assert down.counters.layer_switches == 1
    sent = [RtpPacket.parse(p) for p in wire.rtp]
    assert {p.ssrc for p in sent} == {0xC0C0}
    for a, b in zip(sent, sent[1:]):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1
        assert (b.timestamp - a.timestamp) & 0xFFFFFFFF < 1 << 31
    sizes = _decode_all(mime, wire.rtp)
    # low frames 0..12 (low's frame 12 goes out just before high's keyframe 12), then
    # high frames 12..23; every one of them decodes
    assert sizes == [(160, 96)] * 13 + [(320, 192)] * 11
