"""Synthetic publisher streams for the forwarding tests: real RTP headers (rid extension)
and real VP8 payload descriptors (RFC 7741) / opus-sized payloads."""

from __future__ import annotations

import attrs

from rtp.header_extensions import encode_rid
from rtp.packet import RtpPacket
from trio_sfu.forwarding.downtrack import DownTrack
from trio_sfu.forwarding.receiver import TrackReceiver

RID_EXT = 4
RRID_EXT = 5
VP8_PT = 96
RTX_PT = 97
SUB_VP8_PT = 100
SUB_RTX_PT = 101


def vp8_payload(picture_id: int, tl0: int, keyframe: bool, start: bool = True, size: int = 20,
                tid: int | None = None, sync: bool = False) -> bytes:
    # X=1, S, PID=0 | I=1, L=1 (T=1 with a tid) | M=1 15-bit picture id | TL0PICIDX | [TID Y KEYIDX]
    # | payload header (P bit inverted)
    first = 0x80 | (0x10 if start else 0)
    desc = bytes([first, 0xC0 | (0x20 if tid is not None else 0), 0x80 | ((picture_id >> 8) & 0x7F),
                  picture_id & 0xFF, tl0 & 0xFF])
    if tid is not None:
        desc += bytes([(tid << 6) | (0x20 if sync else 0)])
    header = bytes([0x00 if keyframe else 0x01]) if start else bytes([0x55])
    return desc + header + bytes(size)


#: libwebrtc's three-temporal-layer pattern (TID per frame) and its layer-sync (Y) flags: the
#: first TL1 and TL2 frames after a TL0 frame refer to it alone.
L1T3_TIDS = (0, 2, 1, 2)
L1T3_SYNC = (False, True, True, False)


@attrs.define
class Layer:
    """One simulcast encoding as the publisher sends it."""

    rid: str
    ssrc: int
    seq: int
    ts: int
    picture_id: int
    tl0: int = 0
    frames: int = 0
    # Temporal layers in the stream (L1T3's pattern with 3; 0: descriptors carry no TID).
    temporal: int = 0

    def next_tid(self) -> int | None:
        """The temporal id the next frame will carry (None without temporal layers)."""
        if not self.temporal:
            return None
        tid = L1T3_TIDS[self.frames % 4]
        return tid if self.temporal == 3 else (0 if tid == 0 else 1) if self.temporal == 2 else 0

    def frame(self, keyframe: bool, packets: int = 2, ts_step: int = 3000,
              temporal: tuple[int, bool] | None = None) -> list[bytes]:
        """One frame; `temporal`: its (TID, Y) instead of the pattern's."""
        out = []
        tid = self.next_tid()
        sync = tid is not None and L1T3_SYNC[self.frames % 4] and not keyframe
        if temporal is not None:
            tid, sync = temporal
        if keyframe and tid is not None:
            tid = 0  # a keyframe is a base-layer frame
        if tid is not None and tid == 0 and self.frames:
            self.tl0 = (self.tl0 + 1) & 0xFF  # TL0PICIDX counts base-layer frames
        for i in range(packets):
            pkt = RtpPacket(
                payload_type=VP8_PT,
                sequence_number=self.seq & 0xFFFF,
                timestamp=self.ts & 0xFFFFFFFF,
                ssrc=self.ssrc,
                marker=i == packets - 1,
                extensions={RID_EXT: encode_rid(self.rid)},
                payload=vp8_payload(self.picture_id, self.tl0, keyframe, start=i == 0, tid=tid, sync=sync),
            )
            out.append(pkt.serialize())
            self.seq += 1
        self.ts += ts_step
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        if tid is None:
            self.tl0 = (self.tl0 + 1) & 0xFF
        self.frames += 1
        return out

    def padding(self) -> bytes:
        pkt = RtpPacket(payload_type=VP8_PT, sequence_number=self.seq & 0xFFFF, timestamp=self.ts & 0xFFFFFFFF,
                        ssrc=self.ssrc, extensions={RID_EXT: encode_rid(self.rid)}, padding_size=200)
        self.seq += 1
        return pkt.serialize()


class Wire:
    """Captures what a receiver/down track sends."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.up_rtcp: list[bytes] = []

    def send_rtp(self, data: bytes) -> bool:
        assert type(data) is bytes
        self.rtp.append(data)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        self.rtcp.append(data)
        return True

    def send_up_rtcp(self, data: bytes) -> bool:
        self.up_rtcp.append(data)
        return True


def simulcast_pair(wire: Wire, target_layer=0, **dt_kwargs):
    receiver = TrackReceiver(
        "TR_video", "video/VP8", 90000, send_rtcp=wire.send_up_rtcp, local_ssrc=0x5F0,
        rids=("q", "h", "f"), rid_extension_id=RID_EXT, repaired_rid_extension_id=RRID_EXT,
        rtx_payload_types={RTX_PT: VP8_PT},
    )
    down = DownTrack(
        receiver, ssrc=0xD0D0, payload_types={VP8_PT: SUB_VP8_PT}, clock_rate=90000, mime_type="video/VP8",
        send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp, target_layer=target_layer, **dt_kwargs,
    )
    receiver.add_down_track(down)
    return receiver, down


def three_layers() -> list[Layer]:
    return [
        Layer("q", 0x1111, 100, 1_000, 300),
        Layer("h", 0x2222, 65_500, 4_294_000_000, 32_700),  # seq and ts about to wrap
        Layer("f", 0x3333, 7_000, 555_555, 9),
    ]
