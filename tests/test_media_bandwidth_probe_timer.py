"""SubscriberBandwidth's probe timer: a subscriber that sends no transport-cc feedback costs no
wake-ups. Before, every such subscriber's timer looked for a due probe ten times a second for
ever (the load tester's subscribers send none: ~3 us per forwarded packet in livestream 1x200)."""

from __future__ import annotations

from rtp import rtcp
from rtp.packet import RtpPacket
from rtp.twcc import TransportFeedbackRecorder
from trio_sfu.media.bandwidth import PROBE_POLL, SubscriberBandwidth
from trio_sfu.metrics import Metrics

TWCC = 3


class PaddableVideo:
    """The little of a DownTrack the probe pacer uses: a video track that can pad."""

    mime_type = "video/VP8"
    can_pad = True

    def __init__(self) -> None:
        self.padding = 0

    def send_padding(self, count: int, size: int) -> int:
        self.padding += count
        return count


def test_probing_waits_for_the_first_feedback_without_polling_then_goes_on() -> None:
    video = PaddableVideo()
    wakes: list[float | None] = []
    bandwidth = SubscriberBandwidth(TWCC, lambda: [video], metrics=Metrics(), wake_by=wakes.append)
    bandwidth.request_probe(5_000_000, 0.0)  # the allocator wants more than the start estimate
    assert bandwidth.next_deadline() == 0.0

    bandwidth.handle_timeout(0.0)
    assert bandwidth.next_deadline() is None  # no feedback yet: nothing would judge a probe
    for now in (0.5, 1.0, 2.0):
        bandwidth.handle_timeout(now)
        assert bandwidth.next_deadline() is None and video.padding == 0

    # Media goes out and the subscriber's first feedback comes: probing looks again.
    recorder = TransportFeedbackRecorder(sender_ssrc=5, interval=0.05)
    for i in range(10):
        packet = RtpPacket(96, i, 3000 * i, 0x1234, payload=b"\x10" + bytes(300),
                           extensions={TWCC: b"\x00\x00"}).serialize()
        stamped = bandwidth.stamp(packet, 2.0 + i * 0.003)
        seq16 = int.from_bytes(RtpPacket.parse(stamped).extensions[TWCC], "big")
        recorder.record(seq16, 0x1234, 2.02 + i * 0.003)
    (feedback,) = recorder.packets_to_send(2.1)
    bandwidth.on_rtcp(rtcp.parse_rtcp(feedback), 2.1)
    assert bandwidth.next_deadline() == 2.1 + PROBE_POLL
    assert wakes[-1] == 2.1 + PROBE_POLL
    bandwidth.handle_timeout(2.1 + PROBE_POLL)
    assert video.padding > 0, "the initial probe cluster went out once feedback flowed"


class Track:
    """A down track as the probe pacer sees it: its kind, and whether it can pad yet."""

    def __init__(self, mime_type: str, can_pad: bool) -> None:
        self.mime_type = mime_type
        self.can_pad = can_pad
        self.padding = 0

    def send_padding(self, count: int, size: int) -> int:
        self.padding += count
        return count


def test_an_audio_only_downlink_looks_for_no_probe_until_a_video_track_is_added() -> None:
    """Probes pad beside video. Before, a subscriber receiving only audio (audio room 10 x 200)
    had its timer look for something to pad beside ten times a second for ever: 90 % of the
    server's timer wake-ups there."""
    tracks = [Track("audio/opus", can_pad=False)]
    wakes: list[float | None] = []
    bandwidth = SubscriberBandwidth(TWCC, lambda: tracks, metrics=Metrics(), wake_by=wakes.append)
    bandwidth.request_probe(5_000_000, 0.0)
    bandwidth.handle_timeout(0.0)
    assert bandwidth.next_deadline() is None  # nothing to pad beside, and none coming
    for now in (0.5, 1.0):
        bandwidth.handle_timeout(now)
        assert bandwidth.next_deadline() is None

    video = Track("video/VP8", can_pad=False)
    tracks.append(video)
    bandwidth.video_track_added(1.2)
    assert bandwidth.next_deadline() == 1.2 and wakes[-1] == 1.2
    bandwidth.handle_timeout(1.2)
    # A video track whose media has not started yet: it looks again soon, as before.
    assert bandwidth.next_deadline() == 1.2 + PROBE_POLL
    video.can_pad = True
    bandwidth.handle_timeout(1.2 + PROBE_POLL)
    assert bandwidth.next_deadline() is None and video.padding == 0  # the next wait: for feedback, as above
