"""Our own LiveKit client on Trio (signalling, publisher and subscriber PCs) for tests and load tests."""

from .client import ClientError, JoinError, LiveKitClient, LocalPublication, RemoteTrack, signal_url
from .stats import TrackReceiveStats

__all__ = ["ClientError", "JoinError", "LiveKitClient", "LocalPublication", "RemoteTrack", "TrackReceiveStats", "signal_url"]
