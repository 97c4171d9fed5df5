"""A Janus videoroom participant built from our client's pieces, for side-by-side load tests.

Janus' JSON API over its WebSocket transport (subprotocol ``janus-protocol``): ``create`` a
session, ``attach`` a handle to ``janus.plugin.videoroom``, then per handle:

* publisher: ``join`` (``ptype: publisher``), ``publish`` with our SDP offer (the same offer and
  :class:`~trio_sfu.client.publisher.LocalPublication` streams the LiveKit publisher uses); Janus'
  answer comes in the event for that transaction;
* subscriber: ``join`` (``ptype: subscriber``, ``streams: [{feed}, …]``); Janus offers in the
  event, we answer with the project's answerer (the LiveKit :class:`Subscriber`'s), ``start``.

Both sides trickle our one host candidate and its end (``trickle``); a ``keepalive`` every
:data:`KEEPALIVE_INTERVAL` keeps the session (Janus drops it after 60 s of silence).

ICE: Janus runs a full agent (libnice), not lite. On the publisher PC Janus answers, so it is
the controlled side: our controlling agent checks and nominates, and answers Janus' own checks.
On the subscriber PC Janus offers and controls (RFC 8445 §6.1.1: the offerer, both full); we
answer as a full controlled agent (``rtp.ice.IceControlledAgent``): we check every pair too,
answer Janus' checks, and take the pair Janus nominates.

Replies and events: a request's reply carries its ``transaction``; a plugin ``message`` is first
``ack``'d and then answered by an ``event`` with the same transaction. Events without one
(``webrtcup``, ``media``, ``hangup``, ``slowlink``, room notifications) are counted per kind.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import uuid
from typing import Any, AsyncIterator

import attrs
import trio
import trio_websocket
from livekit.protocol import rtc

from rtp.dtls import DtlsCertificate
from rtp.errors import RtpStackError
from rtp.peer_transport import IceMode
from sdp.parser import serialize as serialize_sdp

from trio_sfu.client.errors import ClientError
from trio_sfu.client.client_media import ClientMedia
from trio_sfu.client.peer_connection import ClientPeerConnection
from trio_sfu.client.publisher import LocalPublication, PendingOffer, Publisher
from trio_sfu.client.publisher_offer import build_publisher_offer
from trio_sfu.client.subscriber import RemoteTrack, Subscriber
from trio_sfu.client.synthetic import simulcast_layers

SUBPROTOCOL = "janus-protocol"
VIDEOROOM = "janus.plugin.videoroom"
KEEPALIVE_INTERVAL = 25.0
REQUEST_TIMEOUT = 15.0
#: Unsolicited message kinds counted by name (anything else counts as "other": the peer does
#: not get to grow the table).
EVENT_KINDS = frozenset({"ack", "success", "error", "event", "webrtcup", "media", "hangup", "slowlink",
                         "detached", "timeout", "trickle"})
#: Replies and events waiting for whoever asked; beyond it the connection is failing anyway.
MAX_MESSAGE = 1 << 20


class JanusError(ClientError):
    """Janus refused a request (``janus: error`` or a videoroom ``error_code``), or went away."""


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    #: "message" requests are acked first and answered by an event: wait past the ack.
    wait_for_event: bool = False
    reply: dict[str, Any] | None = None


class _NoSignal:
    """Stands in for the LiveKit signal connection the Publisher/Subscriber never use here."""

    generation = 0


class JanusApi:
    """One WebSocket to Janus: requests by transaction, replies matched, unsolicited events counted."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._pending: dict[str, _Pending] = {}
        self.session_id: int | None = None
        self.events: dict[str, int] = {}  # unsolicited events by their "janus" kind
        self.closed_reason: str | None = None

    async def request(self, body: dict[str, Any], *, handle_id: int | None = None,
                      timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Send one request and return its reply (for ``message``: the plugin's event)."""
        transaction = secrets.token_hex(8)
        message = dict(body, transaction=transaction)
        if self.session_id is not None and body.get("janus") != "create":
            message["session_id"] = self.session_id
        if handle_id is not None:
            message["handle_id"] = handle_id
        pending = self._pending[transaction] = _Pending(wait_for_event=body.get("janus") == "message")
        try:
            await self._ws.send_message(json.dumps(message))
            with trio.move_on_after(timeout):
                await pending.done.wait()
        except trio_websocket.ConnectionClosed as exc:
            raise JanusError(f"janus connection closed: {exc.reason}") from None
        finally:
            self._pending.pop(transaction, None)
        reply = pending.reply
        if reply is None:
            raise JanusError(f"no reply to {body.get('janus')} {body.get('body', {}).get('request', '')} "
                             f"within {timeout:g} s" + (f" ({self.closed_reason})" if self.closed_reason else ""))
        if reply.get("janus") == "error":
            error = reply.get("error")
            error = error if isinstance(error, dict) else {}
            raise JanusError(f"janus error {error.get('code')}: {error.get('reason')}")
        plugindata = reply.get("plugindata")
        data = plugindata.get("data") if isinstance(plugindata, dict) else None
        if isinstance(data, dict) and "error_code" in data:
            raise JanusError(f"videoroom error {data['error_code']}: {data.get('error')}")
        return reply

    async def read_forever(self) -> None:
        """Dispatch replies to their requests until the connection closes."""
        try:
            while True:
                text = await self._ws.get_message()
                try:
                    message = json.loads(text)
                except ValueError:
                    self.events["malformed"] = self.events.get("malformed", 0) + 1
                    continue
                if not isinstance(message, dict):
                    self.events["malformed"] = self.events.get("malformed", 0) + 1
                    continue
                kind = str(message.get("janus"))
                if kind not in EVENT_KINDS:
                    kind = "other"
                pending = self._pending.get(str(message.get("transaction")))
                if pending is not None and not (kind == "ack" and pending.wait_for_event):
                    pending.reply = message
                    pending.done.set()
                elif pending is None:
                    self.events[kind] = self.events.get(kind, 0) + 1
        except trio_websocket.ConnectionClosed as exc:
            self.closed_reason = f"janus connection closed: {exc.reason}"
        finally:
            for pending in self._pending.values():
                pending.done.set()

    async def keep_alive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_INTERVAL)
            await self.request({"janus": "keepalive"})


def _plugin_data(reply: dict[str, Any]) -> dict[str, Any]:
    """The videoroom's ``plugindata.data`` of a reply; JanusError when it has none."""
    plugindata = reply.get("plugindata")
    data = plugindata.get("data") if isinstance(plugindata, dict) else None
    if not isinstance(data, dict):
        raise JanusError(f"janus reply without plugin data: {str(reply)[:200]}")
    return data


def _integer(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise JanusError(f"janus sent {what} {value!r}, not a number") from None


def _session_or_handle_id(reply: dict[str, Any]) -> int:
    data = reply.get("data")
    return _integer(data.get("id") if isinstance(data, dict) else None, "an id")


def _candidate_message(pc: ClientPeerConnection, mid: str) -> dict[str, Any]:
    return {"janus": "trickle", "candidates": [
        {"candidate": pc.candidate_line(), "sdpMid": mid, "sdpMLineIndex": 0},
        {"completed": True},
    ]}


class JanusParticipant(ClientMedia):
    """A videoroom participant: publishes (one PC) and/or subscribes to feeds (one PC).

    Its media side is :class:`~trio_sfu.client.LiveKitClient`'s (ClientMedia: the PCs, the
    RTCP clock, and what the load tester reads: ``subscriptions`` with their stats,
    ``publisher_pc`` / ``subscriber_pc``, ``errors``, ``unknown_ssrc_packets``).
    """

    def __init__(self, api: JanusApi, nursery: trio.Nursery, room: int, display: str, bind_host: str,
                 certificate: DtlsCertificate) -> None:
        self.api = api
        self.room = room
        self.display = display
        self.bind_host = bind_host
        self._nursery = nursery
        self._certificate = certificate
        self.errors: list[str] = []
        self.publisher = Publisher(_NoSignal(), self._open_publisher_pc, self._error)  # type: ignore[arg-type]
        self.subscriber = Subscriber(_NoSignal(), self._open_subscriber_pc, lambda sid: "janus",  # type: ignore[arg-type]
                                     self._error, full_ice_role=IceMode.CONTROLLED)
        self.feed_id: int | None = None
        self._stream_id = str(uuid.uuid4())
        self._cname = secrets.token_urlsafe(12)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, room: int, display: str, *, bind_host: str = "127.0.0.1",
                      certificate: DtlsCertificate | None = None) -> AsyncIterator["JanusParticipant"]:
        """A Janus session on ``url`` (``ws://host:port``); destroyed and closed on exit."""
        if certificate is None:
            certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        # Whatever ends the session (the body's exception, a failed request, a lost connection)
        # is raised after every nursery here closed, so the caller sees it alone, not wrapped in
        # an exception group.
        failure: Exception | None = None
        try:
            async with trio_websocket.open_websocket_url(url, subprotocols=[SUBPROTOCOL],
                                                         message_queue_size=64,
                                                         max_message_size=MAX_MESSAGE) as ws:
                api = JanusApi(ws)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(api.read_forever)
                    try:
                        reply = await api.request({"janus": "create"})
                        api.session_id = _session_or_handle_id(reply)
                        nursery.start_soon(api.keep_alive)
                        participant = cls(api, nursery, room, display, bind_host, certificate)
                        nursery.start_soon(participant._rtcp_loop)
                        try:
                            yield participant
                        finally:
                            with trio.move_on_after(2) as cleanup:
                                cleanup.shield = True
                                with contextlib.suppress(JanusError):
                                    await api.request({"janus": "destroy"}, timeout=2)
                    except Exception as exc:
                        failure = exc
                    nursery.cancel_scope.cancel()
        except* JanusError as group:  # a keepalive that got no reply
            failure = failure or group.exceptions[0]
        except* (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as group:
            failure = failure or JanusError(f"cannot reach janus at {url}: {group.exceptions[0]}")
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ publishing

    async def publish(self, *, video: bool = True, audio: bool = False, width: int = 1280, height: int = 720,
                      bitrate: int = 1_700_000, simulcast: bool = True) -> list[LocalPublication]:
        """Join the room as a publisher and publish the tracks in one offer; Janus answers."""
        if not (video or audio):
            raise ValueError("publish needs a video or an audio track")
        handle = await self._attach()
        reply = await self.api.request({"janus": "message", "body": {
            "request": "join", "ptype": "publisher", "room": self.room, "display": self.display}},
            handle_id=handle)
        self.feed_id = _integer(_plugin_data(reply).get("id"), "a publisher id")
        publisher = self.publisher
        if video:
            layers = simulcast_layers(width, height, bitrate, simulcast)
            publisher.publications.append(LocalPublication(publisher, "video", "video", publisher._new_mid(), layers))
        if audio:
            publisher.publications.append(LocalPublication(publisher, "audio", "audio", publisher._new_mid(), []))
        for publication in publisher.publications:
            publication.sid = f"{self.feed_id}/{publication.mid}"
            publication.published.set()
        pc = publisher.ensure_pc()
        offer = build_publisher_offer(pc.local, [p.offered(self._stream_id, self._cname)
                                                 for p in publisher.publications], 1)
        publisher.pending_offer = PendingOffer(1, offer)
        reply = await self.api.request({"janus": "message", "body": {"request": "publish"},
                                        # Our rids go lowest quality first (q, h, f); Janus
                                        # assumes highest first unless told.
                                        "jsep": {"type": "offer", "sdp": serialize_sdp(offer), "rid_order": "lmh"}},
                                       handle_id=handle)
        jsep = reply.get("jsep")
        if not isinstance(jsep, dict) or jsep.get("type") != "answer" or not isinstance(jsep.get("sdp"), str):
            raise JanusError(f"publish: no SDP answer from janus ({str(reply)[:200]})")
        try:
            publisher.on_answer(rtc.SessionDescription(type="answer", sdp=jsep["sdp"], id=1))
        except (RtpStackError, ValueError, KeyError) as exc:
            raise JanusError(f"publish: janus' answer cannot be taken: {exc}") from None
        await self.api.request(_candidate_message(pc, offer.media[0].mid or "0"), handle_id=handle)
        return list(publisher.publications)

    # ------------------------------------------------------------------ subscribing

    async def publisher_feeds(self) -> list[int]:
        """The feed ids of everyone publishing in the room now."""
        handle = await self._attach()
        try:
            reply = await self.api.request({"janus": "message", "body": {
                "request": "listparticipants", "room": self.room}}, handle_id=handle)
        finally:
            with contextlib.suppress(JanusError):
                await self.api.request({"janus": "detach"}, handle_id=handle)
        participants = _plugin_data(reply).get("participants", [])
        if not isinstance(participants, list):
            raise JanusError("listparticipants: no participant list")
        return [_integer(p.get("id"), "a participant id") for p in participants
                if isinstance(p, dict) and p.get("publisher")]

    async def wait_for_feeds(self, count: int, timeout: float = 30.0) -> list[int]:
        """Until ``count`` participants publish in the room (polled); their feed ids."""
        with trio.fail_after(timeout):
            while len(feeds := await self.publisher_feeds()) < count:
                await trio.sleep(0.5)
        return feeds

    async def subscribe(self, feeds: list[int]) -> None:
        """One subscriber handle for every stream of ``feeds``: Janus offers, we answer and start."""
        handle = await self._attach()
        reply = await self.api.request({"janus": "message", "body": {
            "request": "join", "ptype": "subscriber", "room": self.room,
            "streams": [{"feed": feed} for feed in feeds]}}, handle_id=handle)
        jsep = reply.get("jsep")
        if not isinstance(jsep, dict) or jsep.get("type") != "offer" or not isinstance(jsep.get("sdp"), str):
            raise JanusError(f"subscribe: no SDP offer from janus ({str(reply)[:200]})")
        try:
            answer, first_mid = self.subscriber._answer(rtc.SessionDescription(type="offer", sdp=jsep["sdp"], id=1))
        except (RtpStackError, ValueError, KeyError) as exc:
            raise JanusError(f"subscribe: janus' offer cannot be answered: {exc}") from None
        streams = _plugin_data(reply).get("streams", [])
        self._name_tracks_by_feed([s for s in streams if isinstance(s, dict)] if isinstance(streams, list) else [])
        await self.api.request({"janus": "message", "body": {"request": "start"},
                                "jsep": {"type": "answer", "sdp": answer.sdp}}, handle_id=handle)
        pc = self.subscriber.pc
        assert pc is not None  # _answer opened it
        await self.api.request(_candidate_message(pc, first_mid), handle_id=handle)

    def _name_tracks_by_feed(self, streams: list[dict[str, Any]]) -> None:
        """Janus' offer names its m-lines after itself (msid ``janus janus<n>``); its ``streams``
        list says which feed and which of the publisher's mids each carries. A track is renamed
        ``<feed>/<publisher mid>``, as the publisher names it, so both sides agree on the sid."""
        by_mid = {track.mid: track for track in self.subscriber.subscriptions.values()}
        renamed: dict[str, RemoteTrack] = {}
        for stream in streams:
            track = by_mid.pop(str(stream.get("mid")), None)
            if track is not None and "feed_id" in stream and "feed_mid" in stream:
                track.sid = f"{stream['feed_id']}/{stream['feed_mid']}"
                track.participant_sid = str(stream["feed_id"])
                renamed[track.sid] = track
        for track in by_mid.values():
            renamed[track.sid] = track
        self.subscriber.subscriptions.clear()
        self.subscriber.subscriptions.update(renamed)

    # ------------------------------------------------------------------ inside

    async def _attach(self) -> int:
        reply = await self.api.request({"janus": "attach", "plugin": VIDEOROOM})
        return _session_or_handle_id(reply)


__all__ = ["JanusApi", "JanusError", "JanusParticipant", "KEEPALIVE_INTERVAL", "SUBPROTOCOL"]
