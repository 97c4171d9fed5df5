"""The compiled fan-out (trio_sfu/native, trio_sfu.forwarding.fanout) against the pure Python
path: the same traffic through both gives byte-identical datagrams on the wire, the same
down-track counters and the same transport-wide send history.

Each world is real: TrackReceivers and DownTracks, each subscriber's downlink numbering with a
real TransportSequencer, protecting with a real SrtpContext (libsrtp, keys equal in both
worlds, so equal output means equal input and state) and sending on a real UDP socket to a
socket of its own. The traffic: a VP8 simulcast track (three layers, rid) and an Opus track
per subscriber, keyframes, reordering, loss, padding, publisher packets with and without the
transport-wide element, layer switches, pauses, and NACKs answered with RTX; and the same with
temporal layers (VP8 TIDs in libwebrtc's L1T3 pattern) under changing temporal caps, and with
playout-delay floors raised and lifted (the element added to every numbered packet).
"""

from __future__ import annotations

import os
import random
import socket

import attrs
import pytest

from rtp.header_extensions import decode_playout_delay, encode_rid
from rtp.packet import RtpPacket
from rtp.rtcp import Nack
from rtp.srtp import SrtpContext
from rtp.srtp_profiles import SrtpProfile
from rtp.twcc_sender import TransportSequencer
from trio_sfu.forwarding import DownTrack, TrackReceiver
from trio_sfu.native import NativeSendTarget

from forwarding_streams import (L1T3_SYNC, L1T3_TIDS, RID_EXT, RRID_EXT, RTX_PT, SUB_RTX_PT, SUB_VP8_PT, VP8_PT,
                                vp8_payload)

needs_compiled = pytest.mark.compiled("_fanout")

PUB_TWCC = 3
SUB_TWCC = 5
SUB_RID = 9
OPUS_PT = 111
EXT_MAP = {RID_EXT: SUB_RID, PUB_TWCC: SUB_TWCC}
SUB_PLAYOUT = 7


class Clock:
    now = 0.0


class Downlink:
    """One subscriber's downlink as trio_sfu.media.transport.TransportEndpoint sends: numbered,
    protected, sent with a non-blocking sendto."""

    def __init__(self, index: int, profile: SrtpProfile, clock: Clock, sink: socket.socket) -> None:
        size = profile.key_length + profile.salt_length
        local, remote = bytes([index + 1]) * size, bytes([index + 101]) * size
        self.srtp = SrtpContext(profile, local, remote)
        self.peer_srtp = SrtpContext(profile, remote, local)  # the subscriber's side
        self.sequencer = TransportSequencer(SUB_TWCC)
        self.clock = clock
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        # The compiled path sends on a descriptor of its own for the same socket (a test can
        # close it to make the kernel refuse those sends alone).
        self.native_fd = os.dup(self.sock.fileno())
        self.sink = sink
        self.address = sink.getsockname()
        self.accounted = [0, 0, 0, 0]

    # NumberedDownlink
    @property
    def transport_sequencer(self) -> TransportSequencer:
        return self.sequencer

    def send_numbered_rtp(self, packet: bytes) -> bool:
        try:
            self.sock.sendto(self.srtp.protect_rtp(packet), self.address)
        except OSError:
            return False
        return True

    def native_send_target(self) -> NativeSendTarget:
        return NativeSendTarget(self.srtp.outbound_handle, self.native_fd, self.address, self._account,
                                owners=(self.srtp,))

    def _account(self, sent: int, full: int, errors: int, invalid: int) -> None:
        for i, n in enumerate((sent, full, errors, invalid)):
            self.accounted[i] += n

    # the plain send (NACK answers, packets the layout cannot take)
    def send_rtp(self, packet: bytes) -> bool:
        stamped = self.sequencer.stamp(packet, self.clock.now)
        return self.send_numbered_rtp(stamped)

    def close(self) -> None:
        self.sock.close()
        if self.native_fd >= 0:
            os.close(self.native_fd)


@attrs.define
class World:
    fast: bool
    clock: Clock
    video: TrackReceiver
    audio: TrackReceiver
    downlinks: list[Downlink]
    sinks: list[socket.socket]
    videos: list[DownTrack]
    audios: list[DownTrack]
    received: list[list[bytes]]
    decrypted: list[list[RtpPacket]] = attrs.Factory(list)
    # Down tracks found armed in the compiled fan-out under a temporal cap, summed over samples.
    armed_capped: int = 0

    def drain(self) -> None:
        for sink, out in zip(self.sinks, self.received):
            while True:
                try:
                    out.append(sink.recv(4096))
                except BlockingIOError:
                    break

    def close(self) -> None:
        for d in self.downlinks:
            d.close()
        for s in self.sinks:
            s.close()


def make_world(fast: bool, subscribers: int, profile: SrtpProfile) -> World:
    clock = Clock()
    video = TrackReceiver("TR_v", "video/VP8", 90000, send_rtcp=lambda b: True, local_ssrc=0x5F0,
                          rids=("q", "h", "f"), rid_extension_id=RID_EXT, repaired_rid_extension_id=RRID_EXT,
                          rtx_payload_types={RTX_PT: VP8_PT}, fast_path=fast)
    audio = TrackReceiver("TR_a", "audio/opus", 48000, send_rtcp=lambda b: True, local_ssrc=0x5F1, fast_path=fast)
    world = World(fast, clock, video, audio, [], [], [], [], [])
    for i in range(subscribers):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        downlink = Downlink(i, profile, clock, sink)
        v = DownTrack(video, ssrc=0xD000 + i, payload_types={VP8_PT: SUB_VP8_PT}, clock_rate=90000,
                      mime_type="video/VP8", send_rtp=downlink.send_rtp, send_rtcp=lambda b: True,
                      target_layer=i % 3, rtx_ssrc=0xE000 + i, rtx_payload_types={SUB_VP8_PT: SUB_RTX_PT},
                      extension_ids=EXT_MAP, numbered=downlink, playout_delay_id=SUB_PLAYOUT)
        a = DownTrack(audio, ssrc=0xA000 + i, payload_types={OPUS_PT: OPUS_PT}, clock_rate=48000,
                      mime_type="audio/opus", send_rtp=downlink.send_rtp, send_rtcp=lambda b: True,
                      extension_ids=EXT_MAP, numbered=downlink)
        video.add_down_track(v)
        audio.add_down_track(a)
        world.downlinks.append(downlink)
        world.sinks.append(sink)
        world.videos.append(v)
        world.audios.append(a)
        world.received.append([])
    return world


def traffic(seed: int, steps: int, subscribers: int, impaired: bool = True, temporal: bool = False,
            outage: range = range(0), playout: bool = False):
    """The publisher's packets and the subscribers' actions, as (now, action) in order;
    `impaired`: with loss and reordering on the way in, and random switches and NACKs;
    `temporal`: VP8 with three temporal layers, each subscriber starting under its own
    temporal cap, the caps changing now and then;
    `outage`: the steps during which the publisher sends no top layer (as under congestion);
    `playout`: every subscriber's floor raised at once, one lifted and raised again alone."""
    rng = random.Random(seed)
    if temporal:
        for i in range(subscribers):
            yield 0.0, ("temporal", i, (None, 0, 1, 2)[i % 4])
    twcc_mode = seed % 3  # 0: never, 1: always, 2: sometimes the publisher's element
    seqs, pids, tss = [100, 65_500, 7_000], [300, 32_760, 9], [1_000, 4_294_960_000, 555]
    audio_seq, audio_ts = 40_000, 123
    held: list[bytes] = []
    now = 0.0
    for step in range(steps):
        now += 0.01
        for layer in range(3):
            if layer == 2 and step in outage:
                continue
            keyframe = step % 40 == 0 or rng.random() < 0.02
            tid = sync = None
            if temporal:
                tid = 0 if keyframe else L1T3_TIDS[step % 4]
                sync = not keyframe and L1T3_SYNC[step % 4]
            # A frame of two packets, now and then followed by a padding-only one (a probe).
            for part in range(3 if rng.random() < 0.05 else 2):
                exts = {RID_EXT: encode_rid("qhf"[layer])}
                if twcc_mode == 1 or (twcc_mode == 2 and rng.random() < 0.5):
                    exts[PUB_TWCC] = (seqs[layer] & 0xFFFF).to_bytes(2, "big")
                pad = part == 2
                packet = RtpPacket(payload_type=VP8_PT, sequence_number=seqs[layer] & 0xFFFF,
                                   timestamp=tss[layer] & 0xFFFFFFFF, ssrc=0x1111 * (layer + 1), marker=part == 1,
                                   extensions=exts,
                                   payload=b"" if pad else vp8_payload(pids[layer], (step // 4 if temporal else step) & 0xFF,
                                                                       keyframe, start=part == 0, tid=tid, sync=bool(sync)),
                                   padding_size=120 if pad else 0).serialize()
                seqs[layer] += 1
                roll = rng.random() if impaired else 1.0
                if roll < 0.03:
                    continue  # lost on the way in
                if roll < 0.08:
                    held.append(packet)  # overtaken by the next one
                    continue
                yield now, ("video", packet)
                while held:
                    yield now, ("video", held.pop())
            tss[layer] += 3000
            pids[layer] = (pids[layer] + 1) & 0x7FFF
        audio = RtpPacket(payload_type=OPUS_PT, sequence_number=audio_seq & 0xFFFF, timestamp=audio_ts & 0xFFFFFFFF,
                          ssrc=0xA0D1, extensions={PUB_TWCC: b"\x00\x01"} if twcc_mode else {},
                          payload=bytes(rng.randrange(20, 120))).serialize()
        audio_seq += 1
        audio_ts += 480
        yield now, ("audio", audio)
        if impaired and rng.random() < 0.05:
            yield now, ("layer", rng.randrange(subscribers), rng.choice([0, 1, 2, 2, None]))
        if impaired and rng.random() < 0.1:
            yield now, ("nack", rng.randrange(subscribers), rng.randrange(1, 30))
        if temporal and rng.random() < 0.04:
            yield now, ("temporal", rng.randrange(subscribers), rng.choice([0, 1, 1, 2, None]))
        if playout and step == 60:
            for i in range(subscribers):
                yield now, ("playout", i, (120, 10_000))
        if playout and step in (150, 220):
            yield now, ("playout", 0, (0 if step == 150 else 200, 10_000))


def run(world: World, events) -> None:
    for now, event in events:
        world.clock.now = now
        kind = event[0]
        if kind == "video":
            world.video.receive_rtp(event[1], now)
        elif kind == "audio":
            world.audio.receive_rtp(event[1], now)
        elif kind == "layer":
            world.videos[event[1]].set_target_layer(event[2], now)
        elif kind == "temporal":
            world.videos[event[1]].set_target_temporal(event[2])
        elif kind == "playout":
            assert world.videos[event[1]].set_playout_delay(*event[2])
        else:
            down = world.videos[event[1]]
            snap = down.snapshot()
            if snap is not None:
                down.handle_rtcp([Nack.from_lost(0x1234, down.ssrc, [(snap.last_sequence - event[2]) & 0xFFFF])], now)
        world.drain()
    world.drain()


@needs_compiled
@pytest.mark.parametrize("profile", [SrtpProfile.AES128_CM_HMAC_SHA1_80, SrtpProfile.AEAD_AES_128_GCM])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_compiled_and_pure_fan_out_send_the_same_datagrams(seed, profile):
    _compare(seed, profile, temporal=False)


@needs_compiled
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_compiled_and_pure_fan_out_drop_the_same_temporal_layers(seed):
    pure, fast = _compare(seed, SrtpProfile.AEAD_AES_128_GCM, temporal=True)
    assert sum(d.counters.dropped_temporal for d in fast.videos) > 300
    assert sum(d.counters.temporal_switches for d in fast.videos) >= 3
    # Tracks under a temporal cap are armed in the compiled fan-out (it leaves them only the
    # packets above their cap): they do not fall back to Python for good.
    assert fast.armed_capped > 20


@needs_compiled
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_and_pure_fan_out_carry_the_same_playout_delay(seed):
    # (Unimpaired: no subscriber is paused meanwhile, so each sees every floor it is given.)
    pure, fast = _compare(seed, SrtpProfile.AEAD_AES_128_GCM, temporal=False, playout=True, impaired=False)
    # What the subscribers got says so: no element before the floor was raised, the floor on
    # every packet after it, subscriber 0's own floors in its turn.
    for i in range(len(fast.videos)):
        floors = []
        profile, size = SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AEAD_AES_128_GCM.key_length + \
            SrtpProfile.AEAD_AES_128_GCM.salt_length
        peer = SrtpContext(profile, bytes([i + 101]) * size, bytes([i + 1]) * size)  # a second reader
        for datagram in fast.received[i]:
            packet = RtpPacket.parse(peer.unprotect_rtp(datagram))
            if packet.ssrc == fast.videos[i].ssrc:
                value = packet.extensions.get(SUB_PLAYOUT)
                floors.append(None if value is None else decode_playout_delay(value))
        changes = [f for j, f in enumerate(floors) if j == 0 or f != floors[j - 1]]
        expected = [None, (120, 10_000)] + ([(0, 10_000), (200, 10_000)] if i == 0 else [])
        assert changes == expected, f"subscriber {i}"
    assert fast.videos[0].playout_delay == (200, 10_000) and fast.videos[1].playout_delay == (120, 10_000)


def _compare(seed: int, profile: SrtpProfile, temporal: bool, playout: bool = False,
             impaired: bool = True) -> tuple[World, World]:
    subscribers = 6
    pure, fast = make_world(False, subscribers, profile), make_world(True, subscribers, profile)
    try:
        events = list(traffic(seed, 300, subscribers, impaired=impaired, temporal=temporal, playout=playout))
        run(pure, events)
        for at in range(0, len(events), 50):
            run(fast, events[at:at + 50])
            fast.armed_capped += sum(d._native_slot is not None and d.current_temporal is not None
                                     for d in fast.videos)
        assert not pure.video.fast_path and fast.video.fast_path
        assert pure.video.compiled_packets == 0
        # The compiled path did the bulk of it (else this compares Python with itself).
        forwarded = sum(d.counters.packets_sent for d in fast.videos + fast.audios)
        compiled = fast.video.compiled_packets + fast.audio.compiled_packets
        assert forwarded > 1000 and compiled > forwarded * 0.6
        for i in range(subscribers):
            assert fast.received[i] == pure.received[i], f"subscriber {i}"
            assert fast.videos[i].counters == pure.videos[i].counters
            assert fast.audios[i].counters == pure.audios[i].counters
            a, b = pure.downlinks[i].sequencer, fast.downlinks[i].sequencer
            assert (a.next_sequence, a.packets_stamped, a.bytes_stamped, a.elements_added) == (
                b.next_sequence, b.packets_stamped, b.bytes_stamped, b.elements_added)
            assert (list(a._seq), list(a._sent_at), list(a._size)) == (list(b._seq), list(b._sent_at), list(b._size))
            assert fast.videos[i].snapshot() == pure.videos[i].snapshot()
        # What the subscribers got is real SRTP of real RTP, the transport-wide seq counting up.
        for i in range(subscribers):
            twcc = []
            for datagram in fast.received[i]:
                packet = RtpPacket.parse(fast.downlinks[i].peer_srtp.unprotect_rtp(datagram))
                twcc.append(int.from_bytes(packet.extensions[SUB_TWCC], "big"))
            assert twcc == list(range(len(twcc)))
        # The compiled path's sends were reported to the downlinks' accounts.
        assert sum(d.accounted[0] for d in fast.downlinks) == compiled
        return pure, fast
    finally:
        pure.close()
        fast.close()


@needs_compiled
def test_a_send_the_kernel_refuses_fails_alone_and_gives_its_number_back():
    world = make_world(True, 2, SrtpProfile.AES128_CM_HMAC_SHA1_80)
    try:
        events = list(traffic(1, 120, 2))
        half, three_quarters = len(events) // 2, 3 * len(events) // 4
        run(world, events[:half])
        assert world.video.compiled_packets > 0
        bad, good = world.downlinks
        failed_before = world.videos[0].counters.dropped_send_failed + world.audios[0].counters.dropped_send_failed
        run(world, events[half:three_quarters])
        os.close(bad.native_fd)  # the compiled path's sends for this subscriber now fail (EBADF)...
        bad.native_fd = -1  # ...until its next refresh sees the downlink's path changed
        run(world, events[three_quarters:])
        failed = world.videos[0].counters.dropped_send_failed + world.audios[0].counters.dropped_send_failed
        assert failed > failed_before
        assert world.videos[1].counters.dropped_send_failed == 0 and world.audios[1].counters.dropped_send_failed == 0
        # Every refused packet gave its transport-wide number back: what arrived counts up
        # without a gap, for the subscriber whose sends failed as for the other.
        for downlink, received in zip(world.downlinks, world.received):
            twcc = [int.from_bytes(RtpPacket.parse(downlink.peer_srtp.unprotect_rtp(d)).extensions[SUB_TWCC], "big")
                    for d in received]
            assert twcc == list(range(len(twcc))) and downlink.sequencer.next_sequence == len(twcc)
        # A closed descriptor is shutdown's EBADF, counted as neither a full buffer nor an
        # error (as trio_sfu.media.udp_mux.UdpMux.send_one counts it).
        assert bad.accounted[0] > 0 and good.accounted[0] > 0 and good.accounted[1:] == [0, 0, 0]
    finally:
        world.close()


def _media(world: World, i: int, ssrc: int) -> list[RtpPacket]:
    """Subscriber `i`'s packets on `ssrc`, decrypted (each datagram once: SRTP refuses replays)."""
    while len(world.decrypted) <= i:
        world.decrypted.append([])
    plain = world.decrypted[i]
    for datagram in world.received[i][len(plain):]:
        plain.append(RtpPacket.parse(world.downlinks[i].peer_srtp.unprotect_rtp(datagram)))
    return [p for p in plain if p.ssrc == ssrc]


@needs_compiled
def test_a_layer_that_stops_and_comes_back_is_looked_for_alike_on_both_paths(monkeypatch):
    """The top layer stops for longer than the receiver's layer timeout, then comes back: the
    subscribers aiming at it fall back to the next one and return, the same datagrams on both
    paths; the compiled drop path makes the down tracks' periodic looks itself (only a look
    that changes the fallback goes to Python)."""
    looks = [0]
    update = DownTrack._update_effective_target

    def counted(self, now):
        looks[0] += 1
        update(self, now)

    monkeypatch.setattr(DownTrack, "_update_effective_target", counted)
    subscribers = 6
    events = list(traffic(3, 400, subscribers, impaired=False, outage=range(100, 260)))
    worlds, calls = [], []
    try:
        for fast in (False, True):
            world = make_world(fast, subscribers, SrtpProfile.AEAD_AES_128_GCM)
            worlds.append(world)
            looks[0] = 0
            run(world, events)
            calls.append(looks[0])
        pure, fast = worlds
        for i in range(subscribers):
            assert fast.received[i] == pure.received[i], f"subscriber {i}"
            assert fast.videos[i].counters == pure.videos[i].counters
            assert (fast.videos[i]._effective_target, fast.videos[i]._effective_checked_at) == (
                pure.videos[i]._effective_target, pure.videos[i]._effective_checked_at)
        top = [d for d in fast.videos if d.target_layer == 2]
        assert top and all(d.counters.layer_switches >= 2 for d in top)  # down to 1 and back up
        assert calls[1] * 5 < calls[0], calls  # the compiled path looked for them
    finally:
        for world in worlds:
            world.close()


@pytest.mark.parametrize("fast", [False, pytest.param(True, marks=needs_compiled)], ids=["pure", "compiled"])
def test_forwarding_on_either_path_is_continuous_answers_nacks_switches_and_mutes(fast):
    """The down tracks' promises, checked on what the subscribers decrypt, on each path."""
    world = make_world(fast, 3, SrtpProfile.AES128_CM_HMAC_SHA1_80)
    try:
        events = list(traffic(2, 240, 3, impaired=False))
        cut = len(events) // 3
        run(world, events[:cut])
        # Subscriber 0 switches from the low layer to the top one; subscriber 1 mutes.
        world.videos[0].set_target_layer(2, world.clock.now)
        world.videos[1].set_target_layer(None, world.clock.now)
        muted_at = len(_media(world, 1, world.videos[1].ssrc))
        run(world, events[cut:2 * cut])
        assert len(_media(world, 1, world.videos[1].ssrc)) == muted_at  # nothing while muted
        world.videos[1].set_target_layer(1, world.clock.now)
        run(world, events[2 * cut:])
        for i in range(3):
            video = _media(world, i, world.videos[i].ssrc)
            assert len(video) > 50
            for a, b in zip(video, video[1:]):
                assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1  # padding left no gap
                assert (b.timestamp - a.timestamp) & 0xFFFFFFFF < 1 << 31
            starts = [p for p in video if p.payload[0] & 0x10]
            pids = [((p.payload[2] & 0x7F) << 8) | p.payload[3] for p in starts]
            assert all((b - a) & 0x7FFF == 1 for a, b in zip(pids, pids[1:]))  # VP8 munged across switches
            audio = _media(world, i, world.audios[i].ssrc)
            assert [p.sequence_number for p in audio] == list(range(audio[0].sequence_number,
                                                                   audio[0].sequence_number + len(audio)))
        assert world.videos[0].counters.layer_switches >= 1
        # A NACK is answered from the history, over RTX, with the packet the subscriber missed.
        down = world.videos[2]
        video = _media(world, 2, down.ssrc)
        lost = video[-10]
        down.handle_rtcp([Nack.from_lost(0x1234, down.ssrc, [lost.sequence_number])], world.clock.now + 0.5)
        world.drain()
        (rtx,) = _media(world, 2, down.rtx_ssrc)
        assert int.from_bytes(rtx.payload[:2], "big") == lost.sequence_number and rtx.payload[2:] == lost.payload
        assert down.counters.nack_resent == 1
        if fast:
            assert world.video.compiled_packets > 0.6 * sum(d.counters.packets_sent for d in world.videos)
    finally:
        world.close()
