"""The seam between signalling and media: what a participant's media transports must offer.

The signal session hands every SDP and ICE message to a `MediaSession`; the media layer answers
by queueing `SignalResponse`s through `MediaContext.send`. Until the real transports exist,
`UnavailableMediaSession` refuses each request with a `request_response` that says so, so a
client sees a clear error instead of silence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

import attrs
import trio
from livekit.protocol import rtc

if TYPE_CHECKING:
    from trio_sfu.signal.participant import Participant


@attrs.frozen
class MediaContext:
    """What the signal session gives a MediaSession when it is created."""

    room_name: str
    participant_sid: str
    identity: str
    # Queue a response to this participant; never blocks (bounded queue, overflow drops the client).
    send: Callable[[rtc.SignalResponse], None]
    # The participant's nursery: transports and timers started here end with the participant.
    nursery: trio.Nursery
    # The signal-side participant: its room (other publishers), tracks, subscriptions, settings.
    participant: "Participant"
    # Whether the client asked to be subscribed to everything (`auto_subscribe`, default true).
    auto_subscribe: bool = True


class MediaSession(Protocol):
    """Per-participant media: one publisher PC (client offers) and one subscriber PC (server offers)."""

    async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        """A publisher-PC offer; answer with SignalResponse(answer=...) echoing `offer.id`."""

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        """The client's answer to a server-sent subscriber offer."""

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        """A trickled ICE candidate (RTCIceCandidateInit as JSON) for SignalTarget `target`."""

    # Optional hooks, looked up with getattr by the signal session so minimal sessions may omit them:
    #   on_subscriptions_changed() -- Participant.subscriptions changed (UpdateSubscription)
    #   on_track_settings_changed(track_sids) -- Participant.track_settings changed
    #   close() -- the session ended; release transports now (idempotent)


MediaSessionFactory = Callable[[MediaContext], MediaSession]


class UnavailableMediaSession:
    """Placeholder until the media stack plugs in: every media request gets a clear refusal."""

    REASON = "media transport not available on this server yet"

    def __init__(self, context: MediaContext) -> None:
        self._context = context

    def _refuse(self, request_id: int, **echo: object) -> None:
        self._context.send(
            rtc.SignalResponse(
                request_response=rtc.RequestResponse(
                    request_id=request_id,
                    reason=rtc.RequestResponse.Reason.UNSUPPORTED_TYPE,
                    message=self.REASON,
                    **echo,
                )
            )
        )

    async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        self._refuse(offer.id)

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        self._refuse(answer.id)

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        self._refuse(0, trickle=rtc.TrickleRequest(candidateInit=candidate_init_json, target=target, final=final))
