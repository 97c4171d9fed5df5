"""A room's periodic reports to its participants: active speakers and connection quality.

`RoomReports` is a `Timed` part (trio_sfu.media.timers) that every member's timer loop serves,
through a `ReportsTimer` of its own: whichever loop first wakes past a report's time makes it,
the others find nothing due. So the reports need no task of their own and stop with the room's
last member. Only one loop, the room's timekeeper (the first member's whose loop still runs),
is woken for the reports' times: were every loop woken, a room of 210 would wake 210 loops every
0.4 s for one report (525 wake-ups a second, all but one for nothing); the others make a report
only when they wake anyway past its time. When the timekeeper's loop ends, the next one's is
woken to take over.

- Speakers, every `AudioLevelConfig.update_interval` (0.4 s, LiveKit's): each participant's
  level is its loudest unmuted microphone track's meter (`speakers.AudioLevelMeter`, fed on the
  receive path); the room's `SpeakerObserver` says what changed, and each participant hears
  `speakers_changed` with the entries about itself and about publishers it is subscribed to,
  only when there are some. A participant that newly subscribes to someone speaking now is
  told so at the next report, as LiveKit tells a new subscriber, and one that unsubscribes
  from someone it was told speaks is told they stopped.
- Connection quality, every 5 s (LiveKit's `connectionquality.UpdateInterval`): each stream a
  participant publishes is scored from our reception statistics of it (loss, jitter, the
  publisher's SRs) and each stream it receives from its receiver reports (loss, jitter, RTT);
  its quality is its worst stream's (`quality.participant_quality`). A participant hears
  `connection_quality` with its own and its publishers' qualities when one of those changed
  or it has a publisher it was not told about yet.

Speakers published on another node count here too when their audio is relayed here (for a
member here who receives it): the cluster's relay feeds a meter per relayed audio track
(`meter_remote_track`). Connection quality is this node's members' only: a participant on
another node is scored (and reported to its own node's members) by its node, and reaches no
quality update here.
"""

from __future__ import annotations

from typing import Callable, Hashable, Mapping, Optional, Protocol, Sequence

import attrs
from livekit.protocol import models, rtc

from trio_sfu import metrics as m
from trio_sfu.forwarding import DownTrack, TrackReceiver
from trio_sfu.media.quality import (
    NO_REPORT_TOO_LONG,
    UPDATE_INTERVAL,
    Quality,
    QualityScorer,
    StreamWindow,
    WindowStats,
    packet_loss_weight,
    participant_quality,
)
from trio_sfu.media.speakers import AudioLevelConfig, AudioLevelMeter, Speaker, SpeakerObserver
from trio_sfu.signal.media_port import MediaParticipant
from trio_sfu.tracks.subscriber import Binding


class ReportedTrack(Protocol):
    """A published track as the reports read it (`room_media.PublishedTrack`)."""

    sid: str
    receiver: TrackReceiver
    audio_level: Optional[AudioLevelMeter]


class ReportedMember(Protocol):
    """A member of the room as the reports read it (`room_media.RoomMember`)."""

    participant: MediaParticipant

    @property
    def subscriptions(self) -> Mapping[str, Binding]: ...

    def published_tracks(self) -> Sequence[ReportedTrack]: ...


class _UpStream:
    """Quality of one track a participant publishes, from our reception of it."""

    def __init__(self, track: ReportedTrack, now: float) -> None:
        self.scorer = QualityScorer(packet_loss_weight(track.receiver.mime_type), now)
        self.window = StreamWindow(now)

    def update(self, track: ReportedTrack, muted: bool, now: float) -> None:
        self.scorer.set_muted(muted, now)
        r = track.receiver.reception()
        window = self.window.advance(r.expected, r.lost, r.bytes, now, jitter_max=r.jitter,
                                     last_rtcp_at=r.last_sender_report_at)
        if window is not None:
            self.scorer.update(window, now)


class _DownStream:
    """Quality of one track a participant receives, from its receiver reports.

    What the publisher's stream lost on its way to us reaches the subscriber as gaps too; that
    is not the subscriber's link, so the loss the source's receiver counted in the same window
    is taken off what the subscriber reports (LiveKit discounts the packets it never had)."""

    def __init__(self, down: DownTrack, source: TrackReceiver, now: float) -> None:
        self.scorer = QualityScorer(packet_loss_weight(down.mime_type), now)
        # The first report only sets where the counting starts (its sequence numbers are ours).
        self.window = StreamWindow(now, primed=False)
        self.packets_sent = down.counters.packets_sent
        self.report_at: Optional[float] = None
        self.streaming_since: Optional[float] = None
        self.upstream_lost = source.reception().lost

    def update(self, down: DownTrack, source: TrackReceiver, now: float) -> None:
        self.scorer.set_muted(down.disabled, now)
        sent = down.counters.packets_sent
        streaming, self.packets_sent = sent > self.packets_sent, sent
        if not streaming:
            self.streaming_since = None
            return  # nothing sent: the score stands
        if self.streaming_since is None:
            self.streaming_since = now
        block, at = down.last_report, down.last_report_at
        if block is not None and at is not None and at != self.report_at:
            self.report_at = at
            window = self.window.advance(block.highest_sequence, block.packets_lost, 0, now,
                                         rtt_max=down.rtt or 0.0, jitter_max=block.jitter / down.clock_rate)
            upstream_lost = source.reception().lost
            never_had = max(0, upstream_lost - self.upstream_lost)
            self.upstream_lost = upstream_lost
            if window is not None:
                self.scorer.update(attrs.evolve(window, lost=max(0, window.lost - never_had)), now)
            return
        heard = max(at if at is not None else self.streaming_since, self.streaming_since)
        if now - heard > NO_REPORT_TOO_LONG:
            # Sending for a long while and no word from the subscriber: as a window without packets.
            self.scorer.update(WindowStats(duration=UPDATE_INTERVAL, packets=0, lost=0), now)


class _MemberQuality:
    """One participant's streams' scorers, kept across updates."""

    def __init__(self) -> None:
        # By the track object (identity): an entry lives until the update after its track went.
        self.up: dict[ReportedTrack, _UpStream] = {}
        self.down: dict[DownTrack, _DownStream] = {}

    def update(self, member: ReportedMember, now: float) -> tuple[Quality, float]:
        infos = member.participant.tracks
        up: dict[ReportedTrack, _UpStream] = {}
        for track in member.published_tracks():
            stream = self.up.get(track) or _UpStream(track, now)
            info = infos.get(track.sid)
            stream.update(track, info is not None and info.muted, now)
            up[track] = stream
        down: dict[DownTrack, _DownStream] = {}
        for binding in list(member.subscriptions.values()):
            if binding.down is None:
                continue
            source = binding.source.receiver
            stream_d = self.down.get(binding.down) or _DownStream(binding.down, source, now)
            stream_d.update(binding.down, source, now)
            down[binding.down] = stream_d
        self.up, self.down = up, down
        return participant_quality([s.scorer for s in up.values()] + [s.scorer for s in down.values()])


class ReportsTimer:
    """The room's reports as one member's timer loop serves them (a `Timed` part, see the
    module docstring); `close` when the loop ends."""

    def __init__(self, reports: "RoomReports", wake_by: Callable[[Optional[float]], None]) -> None:
        self._reports = reports
        self.wake_by = wake_by

    def next_deadline(self) -> Optional[float]:
        return self._reports.next_deadline() if self._reports.timekeeper is self else None

    def handle_timeout(self, now: float) -> None:
        self._reports.handle_timeout(now)

    def close(self) -> None:
        self._reports._timer_closed(self)


def _publishers_of(member: ReportedMember) -> set[str]:
    """The participants whose tracks `member` receives."""
    return {binding.source.publisher_id for binding in list(member.subscriptions.values())}


class RoomReports:
    """Speaker and connection quality updates for one room's members here. See the module docstring."""

    def __init__(self, sessions: Mapping[str, ReportedMember], metrics: m.Metrics,
                 audio: AudioLevelConfig = AudioLevelConfig(), quality_interval: float = UPDATE_INTERVAL) -> None:
        self._sessions = sessions
        self.metrics = metrics
        self.audio = audio  # the meters' settings, local and relayed tracks alike
        self.speakers = SpeakerObserver(audio.update_interval)
        self.quality_interval = quality_interval
        # Both schedules start at the first wake-up of a member's timer loop.
        self._speakers_due: Optional[float] = None
        self._quality_due: Optional[float] = None
        # Per member here: who it was told speaks now; the publishers it was told the quality
        # of; its streams' scorers.
        self._views: dict[str, set[str]] = {}
        self._quality_scope: dict[str, set[str]] = {}
        self._members_quality: dict[str, _MemberQuality] = {}
        self._last_quality: dict[str, rtc.ConnectionQualityInfo] = {}
        # Audio published on other nodes and relayed here (the cluster's relay meters it):
        # key -> (publisher sid, meter, whether its track is muted now).
        self._remote_meters: dict[Hashable, tuple[str, AudioLevelMeter, Callable[[], bool]]] = {}
        # Whether the last report found something to look at (next_deadline).
        self._speakers_wanted = False
        self._quality_wanted = False
        # The members' loops' views, in the order they started: the first is the timekeeper.
        self._timers: dict[ReportsTimer, None] = {}

    # ---- the members' timer loops ----------------------------------------------------------------

    def timer(self, wake_by: Callable[[Optional[float]], None]) -> ReportsTimer:
        """A member's loop's view of the reports (`wake_by`: its loop's, TimerLoop.wake_by)."""
        timer = ReportsTimer(self, wake_by)
        self._timers[timer] = None
        return timer

    @property
    def timekeeper(self) -> Optional[ReportsTimer]:
        """The view whose loop is woken for the reports' times (None: no loop runs)."""
        return next(iter(self._timers), None)

    def _timer_closed(self, timer: ReportsTimer) -> None:
        was_timekeeper = self.timekeeper is timer
        self._timers.pop(timer, None)
        successor = self.timekeeper
        if was_timekeeper and successor is not None:
            successor.wake_by(self.next_deadline())  # it slept without the reports' time

    # ---- Timed ---------------------------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        """A report's time, when it has something to look at (a metered track, a speaker to
        clear, a stream to score); else None: an idle room's reports ride on the wake-ups the
        members' loops make anyway (at least every REPORT_INTERVAL), and wake nobody."""
        deadline = self._speakers_due if self._speakers_wanted else None
        if self._quality_wanted and self._quality_due is not None and (deadline is None or self._quality_due < deadline):
            deadline = self._quality_due
        return deadline

    def handle_timeout(self, now: float) -> None:
        if self._speakers_due is None or self._quality_due is None:
            self._speakers_due = now + self.speakers.interval
            self._quality_due = now + self.quality_interval
            return
        if now >= self._speakers_due:
            self._speakers_due = now + self.speakers.interval
            self.report_speakers(now)
        if now >= self._quality_due:
            self._quality_due = now + self.quality_interval
            self.report_quality(now)

    # ---- speakers ------------------------------------------------------------------------------

    def meter_remote_track(self, key: Hashable, publisher_sid: str, clock_rate: int,
                           muted: Callable[[], bool]) -> AudioLevelMeter:
        """A meter for an audio track another node relays here: its publisher speaks to the
        members here who receive it (the relay feeds the meter; `muted` says the track's state)."""
        meter = AudioLevelMeter(clock_rate, self.audio)
        self._remote_meters[key] = (publisher_sid, meter, muted)
        return meter

    def forget_remote_track(self, key: Hashable) -> None:
        self._remote_meters.pop(key, None)

    def levels(self, now: float) -> dict[str, tuple[float, bool]]:
        """Participant sid -> (level, speaking): its loudest unmuted microphone that speaks."""
        levels: dict[str, tuple[float, bool]] = {}
        metered = False
        for sid, member in list(self._sessions.items()):
            infos = member.participant.tracks
            best = 0.0
            speaking = False
            for track in member.published_tracks():
                meter = track.audio_level
                info = infos.get(track.sid)
                if meter is None or info is None or info.muted or info.source != models.TrackSource.MICROPHONE:
                    continue
                metered = True
                level, active = meter.level(now)
                if active:
                    speaking = True
                    best = max(best, level)
            levels[sid] = (best, speaking)
        for publisher_sid, meter, muted in list(self._remote_meters.values()):
            metered = True
            if publisher_sid in self._sessions or muted():
                continue  # a copy of a track published here after all (a migration): the local one counts
            level, active = meter.level(now)
            best, speaking = levels.get(publisher_sid, (0.0, False))
            levels[publisher_sid] = (max(best, level) if active else best, speaking or active)
        self._speakers_wanted = metered or bool(self.speakers.active)
        return levels

    def report_speakers(self, now: float) -> None:
        changed = self.speakers.update(self.levels(now), now)
        if changed is None:
            return
        speaking = {s.sid: s for s in self.speakers.active}
        changed_sids = {s.sid for s in changed}
        views: dict[str, set[str]] = {}
        for sid, member in list(self._sessions.items()):
            scope = _publishers_of(member) | {sid}
            view = self._views.get(sid, set())
            entries = [s for s in changed if s.sid in scope]
            # Newly subscribed to someone speaking now: LiveKit tells a new subscriber at once.
            entries += [speaking[p] for p in scope if p in speaking and p not in view and p not in changed_sids]
            # No longer subscribed to someone it was told speaks: LiveKit clears them.
            entries += [Speaker(p, 0.0, False) for p in view - scope]
            view = set(view)
            for entry in entries:
                (view.add if entry.active else view.discard)(entry.sid)
            views[sid] = view
            if entries:
                self._send_speakers(member, entries)
        self._views = views

    def _send_speakers(self, member: ReportedMember, entries: list[Speaker]) -> None:
        member.participant.send(rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=[
            models.SpeakerInfo(sid=s.sid, level=s.level, active=s.active) for s in entries])))
        self.metrics.inc(m.MEDIA_SPEAKER_UPDATES_SENT)

    # ---- connection quality --------------------------------------------------------------------

    def qualities(self, now: float) -> dict[str, rtc.ConnectionQualityInfo]:
        """Score every member's streams for the window since the last call."""
        infos: dict[str, rtc.ConnectionQualityInfo] = {}
        scorers: dict[str, _MemberQuality] = {}
        for sid, member in list(self._sessions.items()):
            member_quality = self._members_quality.get(sid) or _MemberQuality()
            quality, mos = member_quality.update(member, now)
            scorers[sid] = member_quality
            infos[sid] = rtc.ConnectionQualityInfo(participant_sid=sid, quality=quality.value, score=mos)
        self._members_quality = scorers
        self._quality_wanted = any(q.up or q.down for q in scorers.values())
        return infos

    def windows_scored(self, sid: str) -> int:
        """How many windows of the member's streams (sent and received) were scored so far."""
        member_quality = self._members_quality.get(sid)
        if member_quality is None:
            return 0
        return sum(s.scorer.windows_scored for s in (*member_quality.up.values(), *member_quality.down.values()))

    def last_quality(self, sid: str) -> Optional[rtc.ConnectionQualityInfo]:
        """The member's quality as the last report had it."""
        return self._last_quality.get(sid)

    def report_quality(self, now: float) -> None:
        infos = self.qualities(now)
        changed = {sid for sid, info in infos.items()
                   if (old := self._last_quality.get(sid)) is None or old.quality != info.quality}
        scopes: dict[str, set[str]] = {}
        for sid, member in list(self._sessions.items()):
            scope = {p for p in _publishers_of(member) | {sid} if p in infos}
            scopes[sid] = scope
            if scope & changed or scope - self._quality_scope.get(sid, set()):
                member.participant.send(rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(
                    updates=[infos[p] for p in sorted(scope, key=lambda p: p != sid)])))
                self.metrics.inc(m.MEDIA_QUALITY_UPDATES_SENT)
        self._quality_scope = scopes
        self._last_quality = infos


__all__ = ["ReportedMember", "ReportedTrack", "RoomReports", "ReportsTimer"]
