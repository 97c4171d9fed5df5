"""Our own LiveKit client on Trio and the project's sans-IO stack, for tests and load tests.

* ``client.py`` — :class:`LiveKitClient` (signalling, publisher and subscriber PCs),
  :class:`LocalPublication`, :class:`RemoteTrack`;
* ``peer_connection.py`` — one PC: a datagram socket driving an ``rtp.peer_session.PeerSession``;
* ``publisher_offer.py`` — the publisher offer (the answer is ``sdp.negotiator.answer_offer``);
* ``synthetic.py`` / ``senders.py`` — VP8-framed and Opus-sized payloads with send stamps,
  and the tasks that pace them;
* ``stats.py`` — what a subscriber measured per track.
"""

from trio_sfu.client.client import ClientError, JoinError, LiveKitClient, LocalPublication, RemoteTrack, signal_url
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.client.stats import TrackReceiveStats

__all__ = [
    "ClientError",
    "JoinError",
    "LiveKitClient",
    "LocalPublication",
    "RemoteTrack",
    "TrackReceiveStats",
    "send_synthetic_audio",
    "send_synthetic_video",
    "signal_url",
]
