"""Our own LiveKit client on Trio and the project's sans-IO stack, for tests and load tests.

* ``client.py`` — :class:`LiveKitClient`, the facade: one participant's lifetime, routing each
  signal response to the part it concerns;
* ``signal_connection.py`` — the signal WebSocket, pings, requests held back during a move;
* ``publisher.py`` — :class:`LocalPublication` and the publisher PC's offers and RTCP;
* ``subscriber.py`` — :class:`RemoteTrack` and the subscriber PC: answers, reception, RTCP;
* ``resume.py`` — following ``leave{action=RESUME}`` to another node;
* ``peer_connection.py`` — one PC: a datagram socket driving an ``rtp.peer_session.PeerSession``;
* ``publisher_offer.py`` — the publisher offer (the answer is ``sdp.negotiator.answer_offer``);
* ``synthetic.py`` / ``senders.py`` — VP8-framed and Opus-sized payloads with send stamps,
  and the tasks that pace them;
* ``stats.py`` — what a subscriber measured per track; ``wallclock.py`` — NTP and ping time;
* ``tokens.py`` — minting access tokens; ``server_api.py`` — a Twirp RoomService client;
* ``commands.py`` — ``trio-sfu token|room|join``; ``join.py`` — one participant with a stats line;
  ``demo_media.py`` — a moving picture (VP8) and a tone (Opus) encoded with PyAV.
"""

from trio_sfu.client.client import LiveKitClient
from trio_sfu.client.errors import ClientError, JoinError
from trio_sfu.client.publisher import LocalPublication
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.client.signal_connection import signal_url
from trio_sfu.client.stats import TrackReceiveStats
from trio_sfu.client.subscriber import RemoteTrack

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
