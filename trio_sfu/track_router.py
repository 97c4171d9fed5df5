"""Fan-out of published RTP to subscribers: the simplest correct forwarding, synchronous and sans-IO.

A `PublishedTrack` is one track a publisher sends (one `Layer` per simulcast encoding, found by
rid or SSRC). Each decrypted packet is stored in its layer's retransmission buffer and handed, by
plain calls, to every `DownTrack` (one per subscriber), which picks one layer, rewrites SSRC,
sequence number, timestamp and payload type to what the subscriber negotiated, strips the
publisher's header extensions (their ids mean nothing on the subscriber's PC) and sends.

Continuity across layer switches: a down track only switches at a keyframe of the new layer, and
continues its own sequence numbers (+1) and timestamps (+ the wall time since its last packet), so
the subscriber's decoder sees one unbroken stream. NACKs from the subscriber are mapped back to
the layer's sequence numbers and answered from the buffer; PLI/FIR go upstream for the layer
being forwarded (or waited for). Times are `now` seconds from the caller; nothing here blocks.

This module is the stand-in until `trio_sfu/forwarding/` (TrackReceiver/DownTrack) lands.
"""

from __future__ import annotations

import secrets
from typing import Callable, Optional

from rtp import rtcp
from rtp.packet import RtpParseError, payload_offset, rewrite_header
from rtp.receive_stats import ReceiveStatistics
from rtp.rtx_buffer import RetransmissionBuffer
from rtp.seqnum import seq_diff
from sdp.codecs import MediaKind

RTX_BUFFER_VIDEO = 1024
RTX_BUFFER_AUDIO = 128
# How long a layer may be silent before a down track stops counting on it.
LAYER_TIMEOUT = 1.0
# Keyframe requests for one layer are spaced at least this far apart.
KEYFRAME_REQUEST_INTERVAL = 0.5
# Uplink loss: gaps up to this many packets are NACKed to the publisher at once.
MAX_NACK_GAP = 64
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970

# LiveKit's rid names for simulcast layers, lowest first; unknown rids rank by SDP order.
_RID_RANK = {"q": 0, "h": 1, "f": 2}


def is_keyframe(codec: str, payload: memoryview | bytes) -> bool:
    """Whether an RTP payload starts a keyframe, for the codecs the SFU forwards."""
    try:
        if codec == "vp8":
            return _vp8_keyframe(payload)
        if codec == "h264":
            return _h264_keyframe(payload)
        if codec == "vp9":
            # RFC 9628 §4.2: P=0 (not inter-predicted) on the first packet of a frame (B=1).
            return len(payload) > 0 and not payload[0] & 0x40 and bool(payload[0] & 0x08)
        if codec == "av1":
            # AV1 RTP aggregation header N bit: first packet of a coded video sequence.
            return len(payload) > 0 and bool(payload[0] & 0x08)
    except IndexError:
        return False
    return False


def _vp8_keyframe(p: memoryview | bytes) -> bool:
    # RFC 7741 §4.2 payload descriptor, then §4.3 payload header (P bit 0 = keyframe).
    first = p[0]
    if not first & 0x10 or first & 0x07:
        return False  # not the start of partition 0
    pos = 1
    if first & 0x80:
        ext = p[1]
        pos = 2
        if ext & 0x80:
            pos += 2 if p[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    return not p[pos] & 0x01


def _h264_keyframe(p: memoryview | bytes) -> bool:
    nal = p[0] & 0x1F
    if nal in (5, 7):  # IDR slice, or SPS (sent right before one)
        return True
    if nal == 24:  # STAP-A: walk the aggregated NAL units
        pos = 1
        while pos + 2 < len(p):
            size = (p[pos] << 8) | p[pos + 1]
            if p[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal == 28:  # FU-A: the start fragment carries the type
        return bool(p[1] & 0x80) and p[1] & 0x1F == 5
    return False


def ntp_from_unix(seconds: float) -> int:
    return int((seconds + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


class Layer:
    """One encoding of a published track (a simulcast layer, or the only one)."""

    __slots__ = ("rid", "rank", "ssrc", "rtx_ssrc", "buffer", "stats", "last_arrival", "highest_seq",
                 "last_sr", "last_keyframe_request")

    def __init__(self, rid: str, rank: int, ssrc: int, clock_rate: int, kind: MediaKind) -> None:
        self.rid = rid
        self.rank = rank
        self.ssrc = ssrc
        self.rtx_ssrc: Optional[int] = None
        self.buffer = RetransmissionBuffer(RTX_BUFFER_VIDEO if kind is MediaKind.VIDEO else RTX_BUFFER_AUDIO)
        self.stats = ReceiveStatistics(ssrc, clock_rate, probation=0)
        self.last_arrival = -1e9
        self.highest_seq: Optional[int] = None
        # (ntp, rtp timestamp, our arrival `now`) of the publisher's latest SR, for A/V sync.
        self.last_sr: Optional[tuple[int, int, float]] = None
        self.last_keyframe_request = -1e9


class PublishedTrack:
    """One published track: its layers, its subscribers, and the feedback it sends upstream."""

    def __init__(
        self,
        sid: str,
        kind: MediaKind,
        publisher_sid: str,
        stream_id: str,
        pt_codecs: dict[int, str],
        clock_rate: int,
        send_feedback: Callable[[bytes], None],
    ) -> None:
        self.sid = sid
        self.kind = kind
        self.publisher_sid = publisher_sid
        self.stream_id = stream_id
        # Publisher payload type → lower-case codec name (primary codecs only; RTX is unwrapped).
        self.pt_codecs = pt_codecs
        self.clock_rate = clock_rate
        self._send_feedback = send_feedback
        self.layers: dict[int, Layer] = {}  # by media SSRC
        self.down_tracks: list["DownTrack"] = []
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self.nacks_sent = 0
        self.keyframe_requests = 0
        self.unknown_payload_type = 0
        self.published = False

    @property
    def mime_types(self) -> tuple[str, ...]:
        return tuple(f"{self.kind.value}/{name}" for name in dict.fromkeys(self.pt_codecs.values()))

    def add_layer(self, rid: str, ssrc: int, rank: int) -> Layer:
        layer = Layer(rid, rank, ssrc, self.clock_rate, self.kind)
        self.layers[ssrc] = layer
        return layer

    def best_layer(self, max_rank: int, now: float) -> Optional[Layer]:
        """The highest active layer not above `max_rank`, else the lowest active one."""
        active = [lay for lay in self.layers.values() if now - lay.last_arrival < LAYER_TIMEOUT]
        if not active:
            return None
        fitting = [lay for lay in active if lay.rank <= max_rank]
        if fitting:
            return max(fitting, key=lambda lay: lay.rank)
        return min(active, key=lambda lay: lay.rank)

    # ---- from the publisher ----------------------------------------------------------------

    def on_rtp(self, data: bytes, layer: Layer, now: float) -> None:
        """A decrypted media packet of `layer`: buffer it, NACK gaps, fan it out."""
        seq = (data[2] << 8) | data[3]
        timestamp = int.from_bytes(data[4:8], "big")
        layer.stats.on_packet(seq, timestamp, now, len(data))
        layer.last_arrival = now
        highest = layer.highest_seq
        if highest is None:
            layer.highest_seq = seq
        else:
            gap = seq_diff(seq, highest)
            if gap > 0:
                layer.highest_seq = seq
                if 1 < gap <= MAX_NACK_GAP:
                    lost = [(highest + i) & 0xFFFF for i in range(1, gap)]
                    self.nacks_sent += 1
                    self._send_feedback(rtcp.Nack.from_lost(self.rtcp_ssrc, layer.ssrc, lost).serialize())
        layer.buffer.put(seq, data)
        if not self.down_tracks:
            return
        codec = self.pt_codecs.get(data[1] & 0x7F)
        if codec is None:
            self.unknown_payload_type += 1
            return
        keyframe = False
        if self.kind is MediaKind.VIDEO:
            try:
                offset = payload_offset(data)
            except RtpParseError:
                return
            keyframe = is_keyframe(codec, memoryview(data)[offset:])
        for down in self.down_tracks:
            down.write(data, layer, keyframe, now)

    def on_sender_report(self, report: rtcp.SenderReport, now: float) -> None:
        for layer in self.layers.values():
            if layer.ssrc == report.ssrc:
                layer.last_sr = (report.ntp_timestamp, report.rtp_timestamp, now)
                layer.stats.on_sender_report(report.ntp_timestamp, now)

    def request_keyframe(self, layer: Optional[Layer], now: float) -> None:
        targets = [layer] if layer is not None else list(self.layers.values())
        for lay in targets:
            if now - lay.last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
                continue
            lay.last_keyframe_request = now
            self.keyframe_requests += 1
            self._send_feedback(rtcp.Pli(self.rtcp_ssrc, lay.ssrc).serialize())

    def receiver_report(self, now: float) -> Optional[bytes]:
        blocks = [b for b in (lay.stats.report_block(now) for lay in self.layers.values()) if b is not None]
        if not blocks:
            return None
        return rtcp.ReceiverReport(self.rtcp_ssrc, blocks).serialize()

    def detach(self) -> None:
        for down in list(self.down_tracks):
            down.close()
        self.down_tracks.clear()


class DownTrack:
    """One subscriber's copy of a published track, with that subscriber's SSRC, seq and PTs."""

    def __init__(
        self,
        track: PublishedTrack,
        ssrc: int,
        send_rtp: Callable[[bytes], bool],
        now: float,
    ) -> None:
        self.track = track
        self.ssrc = ssrc
        self._send_rtp = send_rtp
        # Publisher PT → subscriber PT; None until the subscriber's answer is applied.
        self.pt_map: Optional[dict[int, int]] = None
        self.disabled = False
        self.max_rank = 2
        self.current: Optional[Layer] = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._switch_seq = 0
        self._last_out_seq = secrets.randbits(16)
        self._last_out_ts = secrets.randbits(32)
        self._last_out_time: Optional[float] = None
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmitted = 0
        self.dropped_waiting_keyframe = 0
        self.closed = False
        self._created = now

    def set_payload_types(self, subscriber_codecs: dict[str, int]) -> None:
        """From the subscriber's answer: codec name (lower case) → its payload type."""
        self.pt_map = {
            pub_pt: subscriber_codecs[name]
            for pub_pt, name in self.track.pt_codecs.items()
            if name in subscriber_codecs
        }

    def close(self) -> None:
        self.closed = True
        if self in self.track.down_tracks:
            self.track.down_tracks.remove(self)

    # ---- the hot path ------------------------------------------------------------------------

    def write(self, data: bytes, layer: Layer, keyframe: bool, now: float) -> None:
        pt_map = self.pt_map
        if pt_map is None or self.disabled:
            return
        if layer is not self.current:
            if self.track.kind is MediaKind.VIDEO:
                target = self.track.best_layer(self.max_rank, now)
                if layer is not target:
                    return
                if not keyframe:
                    self.dropped_waiting_keyframe += 1
                    self.track.request_keyframe(layer, now)
                    return
            self._switch_to(layer, data, now)
        seq = (data[2] << 8) | data[3]
        if seq_diff(seq, self._switch_seq) < 0:
            return  # older than the switch point: its slot in our numbering belongs to the old layer
        out_pt = pt_map.get(data[1] & 0x7F)
        if out_pt is None:
            return
        self._send(data, seq, out_pt, now)

    def _switch_to(self, layer: Layer, data: bytes, now: float) -> None:
        seq = (data[2] << 8) | data[3]
        timestamp = int.from_bytes(data[4:8], "big")
        out_seq = (self._last_out_seq + 1) & 0xFFFF
        if self._last_out_time is None:
            out_ts = self._last_out_ts
        else:
            elapsed = max(1, int((now - self._last_out_time) * self.track.clock_rate))
            out_ts = (self._last_out_ts + elapsed) & 0xFFFFFFFF
        self._seq_offset = (out_seq - seq) & 0xFFFF
        self._ts_offset = (out_ts - timestamp) & 0xFFFFFFFF
        self._switch_seq = seq
        self.current = layer

    def _send(self, data: bytes, seq: int, out_pt: int, now: float) -> bool:
        first = data[0]
        header_end = 12 + 4 * (first & 0x0F)
        if first & 0x10:
            # Drop the publisher's extension block: its ids are not the subscriber's.
            try:
                start = payload_offset(data)
            except RtpParseError:
                return False
            buf = bytearray(data[:header_end])
            buf += data[start:]
            buf[0] = first & 0xEF
        else:
            buf = bytearray(data)
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (int.from_bytes(data[4:8], "big") + self._ts_offset) & 0xFFFFFFFF
        rewrite_header(buf, self.ssrc, out_seq, out_ts, out_pt)
        if seq_diff(out_seq, self._last_out_seq) > 0:
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_out_time = now
        if self._send_rtp(bytes(buf)):  # pylibsrtp takes bytes only
            self.packets_sent += 1
            self.octets_sent += len(buf) - header_end
            return True
        return False

    # ---- feedback from the subscriber -----------------------------------------------------------

    def on_nack(self, lost: list[int], now: float) -> None:
        layer = self.current
        pt_map = self.pt_map
        if layer is None or pt_map is None:
            return
        for out_seq in lost:
            seq = (out_seq - self._seq_offset) & 0xFFFF
            if seq_diff(seq, self._switch_seq) < 0:
                continue
            packet = layer.buffer.get(seq)
            if packet is None:
                continue
            out_pt = pt_map.get(packet[1] & 0x7F)
            if out_pt is not None and self._send(packet, seq, out_pt, now):
                self.retransmitted += 1

    def on_keyframe_request(self, now: float) -> None:
        self.track.request_keyframe(self.current, now)

    def sender_report(self, now: float, wall_clock: float) -> Optional[rtcp.SenderReport]:
        """An SR mapping our RTP timestamps to NTP, from the publisher's SR when there is one
        (so audio and video of one publisher stay in sync at the subscriber)."""
        layer = self.current
        if layer is None or self._last_out_time is None:
            return None
        rate = self.track.clock_rate
        if layer.last_sr is not None:
            ntp, rtp_ts, arrival = layer.last_sr
            elapsed = now - arrival
            ntp_out = (ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF
            ts_out = (rtp_ts + int(elapsed * rate) + self._ts_offset) & 0xFFFFFFFF
        else:
            ntp_out = ntp_from_unix(wall_clock)
            ts_out = (self._last_out_ts + int((now - self._last_out_time) * rate)) & 0xFFFFFFFF
        return rtcp.SenderReport(
            self.ssrc, ntp_out, ts_out, self.packets_sent & 0xFFFFFFFF, self.octets_sent & 0xFFFFFFFF
        )


def rank_of(rid: str, sdp_order: tuple[str, ...]) -> int:
    if rid in _RID_RANK:
        return _RID_RANK[rid]
    if rid in sdp_order:
        return sdp_order.index(rid)
    return 0


__all__ = ["DownTrack", "Layer", "PublishedTrack", "is_keyframe", "rank_of", "ntp_from_unix"]
