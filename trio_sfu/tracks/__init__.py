"""Tracks as the room sees them: sources (local or relayed), the per-room track manager that
resolves a track id to exactly one source, and the per-participant subscription manager that
reconciles what a participant wants with what resolves. See docs/seed-races.md for the two
races this package makes impossible by construction."""

from trio_sfu.tracks.source import (
    AlreadySubscribedError,
    RecordedAtClosing,
    ReadAtRemoval,
    ResumeFlagPolicy,
    SourceNotOpenError,
    SourceOrigin,
    TrackSource,
    TrackSubscriber,
    live_sources,
)
from trio_sfu.tracks.seams import Seam, no_seam
from trio_sfu.tracks.track_manager import FifoHead, NewestWins, ResolutionPolicy, TrackManager

__all__ = [
    "AlreadySubscribedError", "FifoHead", "NewestWins", "ReadAtRemoval", "RecordedAtClosing",
    "ResolutionPolicy", "ResumeFlagPolicy", "Seam", "SourceNotOpenError", "SourceOrigin", "TrackManager",
    "TrackSource", "TrackSubscriber", "live_sources", "no_seam",
]
