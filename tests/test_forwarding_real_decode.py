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
from aiortc.jitterbuffer import JitterBuffer, JitterFrame  # noqa: E402
np = pytest.importorskip("numpy", reason="PyAV builds frames from arrays")  # noqa: E402
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


# --- temporal layers: libvpx's three-layer structure, filtered by the down track ---

#: FFmpeg's libvpx wrapper in its 3-layer mode (TIDs 0 2 1 2, each TL2 frame referring to TL0 or
#: TL1 only, nothing referring to TL2), error resilient as libwebrtc encodes temporal layers.
TS_OPTIONS = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "-6", "error-resilient": "default",
              "ts-parameters": "ts_number_layers=3:ts_target_bitrate=150,225,300:ts_rate_decimator=4,2,1:"
                               "ts_periodicity=4:ts_layer_id=0,2,1,2:ts_layering_mode=3"}
TS_TIDS = (0, 2, 1, 2)
TS_SYNC = (False, True, True, False)  # TL2 after TL0, TL1 after TL0: they refer to TL0 alone


def _temporal_vp8_frames(count: int, layered: bool = True) -> list[bytes]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 160, 96, "yuv420p"
    codec.bit_rate = 300_000
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = TS_OPTIONS if layered else {k: v for k, v in TS_OPTIONS.items() if k != "ts-parameters"}
    # One seeded picture panning two pixels a frame: the encoder predicts from what it refers to.
    scene = np.frombuffer(random.Random(5).randbytes(144 * 160), dtype=np.uint8).reshape(144, 160)
    out = []
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(np.roll(scene, 2 * index, axis=1), format="yuv420p")
        frame.pts = index
        frame.time_base = codec.time_base
        out.extend(bytes(packet) for packet in codec.encode(frame))
    return out


def _packetize(frames: list[bytes], ssrc: int, seq: int, picture_id: int) -> list[bytes]:
    """RFC 7741 packets as libwebrtc sends a temporally layered stream: picture id, TL0PICIDX
    and TID/Y in every packet's descriptor, at most 500 octets of frame per packet."""
    packets = []
    tl0 = 200
    for index, data in enumerate(frames):
        tid, sync = TS_TIDS[index % 4], TS_SYNC[index % 4]
        if tid == 0 and index:
            tl0 = (tl0 + 1) & 0xFF
        pid = (picture_id + index) & 0x7FFF
        chunks = [data[i:i + 500] for i in range(0, len(data), 500)]
        for n, chunk in enumerate(chunks):
            desc = bytes([0x90 if n == 0 else 0x80, 0xE0, 0x80 | (pid >> 8), pid & 0xFF, tl0,
                          (tid << 6) | (0x20 if sync else 0)])
            packets.append(RtpPacket(payload_type=96, sequence_number=(seq + len(packets)) & 0xFFFF,
                                     timestamp=(3000 * index) & 0xFFFFFFFF, ssrc=ssrc, marker=n == len(chunks) - 1,
                                     extensions={RID_EXT: encode_rid("q")}, payload=desc + chunk).serialize())
    return packets


def _decode_images(packets: list[bytes]) -> list[bytes]:
    """What a subscriber shows: aiortc's jitter buffer assembles frames (a sequence gap stalls
    it), libvpx decodes them; each picture's luma plane."""
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=100)
    decoder = aiortc_codecs.get_decoder(codec)
    jitter = JitterBuffer(capacity=512, is_video=True)
    images = []
    for raw in packets + [_closing_packet(packets[-1])]:
        pkt = AiortcRtpPacket.parse(raw)
        pkt._data = aiortc_codecs.depayload(codec, pkt.payload)
        _, jframe = jitter.add(pkt)
        if jframe is not None:
            images.extend(bytes(f.to_ndarray(format="gray")) for f in decoder.decode(jframe))
    return images


def _closing_packet(last: bytes) -> bytes:
    """A packet of a next frame: the jitter buffer hands a frame over when the next one starts."""
    pkt = RtpPacket.parse(last)
    return RtpPacket(payload_type=pkt.payload_type, sequence_number=(pkt.sequence_number + 1) & 0xFFFF,
                     timestamp=(pkt.timestamp + 3000) & 0xFFFFFFFF, ssrc=pkt.ssrc, marker=True,
                     payload=bytes([0x90, 0x00, 0x00])).serialize()


def _reference_images(frames: list[bytes], keep: list[int]) -> list[bytes]:
    """libvpx decoding exactly the frames `keep` of the encoded stream, straight from the encoder."""
    decoder = aiortc_codecs.get_decoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    images = []
    for index in keep:
        images.extend(bytes(f.to_ndarray(format="gray")) for f in decoder.decode(JitterFrame(frames[index], 3000 * index)))
    return images


def test_temporal_layers_dropped_and_restored_decode_to_the_encoders_own_pictures():
    """A libvpx stream in three temporal layers through TrackReceiver → DownTrack while the
    temporal target goes all → TL0 → TL1 → all: the subscriber's stream is continuous (the
    jitter buffer assembles every frame forwarded), and each picture it decodes is bit for bit
    the picture libvpx decodes from exactly those frames of the encoder's output; the frames
    forwarded are those the switch rules name."""
    frames = _temporal_vp8_frames(32)
    assert len(frames) == 32
    packets = _packetize(frames, ssrc=0x1000, seq=65_200, picture_id=32_750)  # seq and picture id wrap
    wire = Wire()
    receiver = TrackReceiver("TR_v", "video/VP8", 90000, send_rtcp=wire.send_up_rtcp, local_ssrc=1,
                             rids=("q",), rid_extension_id=RID_EXT)
    down = DownTrack(receiver, ssrc=0xC0C0, payload_types={96: 100}, clock_rate=90000, mime_type="video/VP8",
                     send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp, target_layer=0)
    receiver.add_down_track(down)
    targets = {6: 0, 15: 1, 23: None}  # before frame index: the new temporal target
    first_packet = {}
    for p in packets:
        first_packet.setdefault(RtpPacket.parse(p).timestamp // 3000, p)
    now = 0.0
    for p in packets:
        index = RtpPacket.parse(p).timestamp // 3000
        if first_packet[index] is p and index in targets:
            down.set_target_temporal(targets[index])
        receiver.receive_rtp(p, now)
        now += 0.002
    # all of 0..5; from 6 TL0 only (6 itself is TL1 and starts a frame: dropped); from 15 up to
    # TL1, at TL1's next sync frame (18); from 23 all, at TL2's next sync frame (25)
    expected = [0, 1, 2, 3, 4, 5, 8, 12, 16, 18, 20, 22, 24, 25, 26, 27, 28, 29, 30, 31]
    sent = [RtpPacket.parse(p) for p in wire.rtp]
    shown = sorted({p.timestamp for p in sent})
    assert [(ts - shown[0]) // 3000 for ts in shown] == expected
    for a, b in zip(sent, sent[1:]):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1
    images = _decode_images(wire.rtp)
    reference = _reference_images(frames, expected)
    assert len(images) == len(expected) and images == reference
    assert down.counters.dropped_temporal > 0 and down.counters.temporal_switches == 3
    # Those are the very pictures a subscriber given every frame sees at those instants; and the
    # comparison can tell: the same frames dropped from a stream without temporal layers decode
    # to other pictures.
    full = _reference_images(frames, list(range(32)))
    assert reference == [full[i] for i in expected]
    plain = _temporal_vp8_frames(32, layered=False)
    plain_full = _reference_images(plain, list(range(32)))
    assert _reference_images(plain, expected) != [plain_full[i] for i in expected]
