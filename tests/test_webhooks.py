"""Webhooks end to end: the server posts to a receiver started by the test, and livekit-api's
own `WebhookReceiver` (JWT check + body SHA-256 + protobuf-JSON parse) validates every post.
Also: retries with back-off, a dead receiver never blocks a room, a full queue (in events or in
bytes) drops and counts, track events do not carry their participant's whole info, and the config
checks."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import time
from typing import AsyncIterator

import attrs
import h11
import pytest
import trio
import yaml
from livekit import api
from livekit.protocol import models, rtc, webhook
from server_fixtures import (
    API_KEY,
    assert_no_leaks,
    join,
    leak_baseline,
    make_config,
    mint_token,
    open_sockets,
    recv_kind,
    running_server,
    send,
    server_ports,
    signal_client,
)

from trio_sfu.api import webhooks as wh
from trio_sfu.config import ConfigError, ServerConfig, config_from_mapping
from trio_sfu.metrics import Metrics
from trio_sfu.server import Server

WEBHOOK_KEY = "hookkey"
WEBHOOK_SECRET = "hook-secret-0123456789abcdefghijklmnopqrstu"


@attrs.define
class Received:
    headers: dict[str, str]
    body: bytes


@attrs.define
class Receiver:
    port: int = 0
    received: list[Received] = attrs.field(factory=list)
    # Status to answer for each successive request; 200 once exhausted.
    statuses: list[int] = attrs.field(factory=list)
    # Hold every request unanswered until the client hangs up (a receiver that never answers).
    hang: bool = False
    arrived: trio.Event = attrs.field(factory=trio.Event)
    held: int = 0  # requests held unanswered, with `hang`
    hung_up: int = 0  # of those, how many the client gave up on by closing its connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        headers: dict[str, str] = {}
        body = bytearray()
        with trio.move_on_after(10) as reading:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
        if reading.cancelled_caught:
            await stream.aclose()
            return
        if self.hang:
            await self._hold_until_client_leaves(stream)
            return
        with trio.move_on_after(10):
            status = self.statuses.pop(0) if self.statuses else 200
            self.received.append(Received(headers, bytes(body)))
            self.arrived.set()
            self.arrived = trio.Event()
            out = conn.send(h11.Response(status_code=status, headers=[("content-length", "0"), ("connection", "close")]))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
        await stream.aclose()

    async def _hold_until_client_leaves(self, stream: trio.SocketStream) -> None:
        # Outside the 10 s read budget: only the client (or the receiver's own nursery) ends this.
        self.held += 1
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass  # a reset is a hang-up too
        self.hung_up += 1

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while len(self.received) < count:
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def receiver(**kwargs: object) -> AsyncIterator[Receiver]:
    rec = Receiver(**kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, rec.handle, 0, host="127.0.0.1"))
        rec.port = listeners[0].socket.getsockname()[1]
        yield rec
        nursery.cancel_scope.cancel()


def webhook_config(*urls: str) -> ServerConfig:
    config = make_config()
    config.keys[WEBHOOK_KEY] = WEBHOOK_SECRET
    config.webhook = {"api_key": WEBHOOK_KEY, "urls": list(urls)}
    return config


def validate(received: Received) -> webhook.WebhookEvent:
    """What a LiveKit app does with a webhook: livekit-api's WebhookReceiver."""
    assert received.headers["content-type"] == "application/webhook+json"
    assert not received.headers["authorization"].startswith("Bearer")
    checker = api.WebhookReceiver(api.TokenVerifier(WEBHOOK_KEY, WEBHOOK_SECRET))
    return checker.receive(received.body.decode(), received.headers["authorization"])


async def test_lifecycle_events_are_signed_and_validate_with_livekit_api() -> None:
    async with receiver() as rec:
        async with running_server(webhook_config(rec.url)) as server:
            async with signal_client(server, mint_token("alice")) as alice:
                ja = await join(alice)
                await send(alice, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="m", name="mic", type=models.TrackType.AUDIO)))
                mic = (await recv_kind(alice, "track_published")).track_published.track
                await send(alice, rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)))
                await rec.wait_for(5)
            server.registry.rooms["room1"].close(models.DisconnectReason.ROOM_DELETED)
            await rec.wait_for(6)
        events = [validate(r) for r in rec.received]
    assert [e.event for e in events] == [
        "room_started",
        "participant_joined",
        "track_published",
        "track_unpublished",
        "participant_left",
        "room_finished",
    ]
    assert len({e.id for e in events}) == 6 and all(e.id.startswith("EV_") for e in events)
    assert all(e.room.name == "room1" and e.room.sid == ja.room.sid and e.created_at > 0 for e in events)
    joined, published, unpublished, left = events[1], events[2], events[3], events[4]
    assert joined.participant.sid == ja.participant.sid and joined.participant.identity == "alice"
    assert published.track.sid == unpublished.track.sid == mic.sid and published.participant.identity == "alice"
    assert left.participant.state == models.ParticipantInfo.State.DISCONNECTED
    assert events[5].room_end_reason == models.RoomEndReason.ROOM_END_API_DELETE
    # LiveKit's wire form: camelCase protobuf-JSON without defaults.
    assert b'"createdAt"' in rec.received[0].body and b"created_at" not in rec.received[0].body
    assert b'"numParticipants": 0' not in rec.received[0].body


async def test_a_tampered_body_fails_validation() -> None:
    async with receiver() as rec:
        async with running_server(webhook_config(rec.url)) as server:
            await server.registry.get_or_create("solo")
            await rec.wait_for(1)
    good = rec.received[0]
    assert validate(good).event == "room_started"
    forged = Received(good.headers, good.body.replace(b"solo", b"sol0"))
    with pytest.raises(Exception, match="hash mismatch"):
        validate(forged)


async def test_every_url_gets_every_event_in_order() -> None:
    async with receiver() as first, receiver() as second:
        async with running_server(webhook_config(first.url, second.url)) as server:
            for name in ("a", "b", "c"):
                await server.registry.get_or_create(name)
            await first.wait_for(3)
            await second.wait_for(3)
        for rec in (first, second):
            assert [validate(r).room.name for r in rec.received[:3]] == ["a", "b", "c"]


async def test_failed_posts_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wh, "BACKOFF_BASE", 0.05)
    async with receiver(statuses=[503, 500]) as rec:
        async with running_server(webhook_config(rec.url)) as server:
            await server.registry.get_or_create("r")
            await rec.wait_for(3)
            with trio.fail_after(5):
                while not server.metrics.get(wh.WEBHOOK_SENT):
                    await trio.sleep(0.01)
            assert server.metrics.get(wh.WEBHOOK_RETRIED) == 2 and server.metrics.get(wh.WEBHOOK_FAILED) == 0
    # Each attempt is re-signed over the same body, and the last one is what the app accepts.
    assert len({r.body for r in rec.received[:3]}) == 1
    assert validate(rec.received[2]).event == "room_started"


async def test_a_refusing_receiver_is_not_retried() -> None:
    async with receiver(statuses=[401]) as rec:
        async with running_server(webhook_config(rec.url)) as server:
            await server.registry.get_or_create("r")
            await rec.wait_for(1)
            with trio.fail_after(5):
                while not server.metrics.get(wh.WEBHOOK_FAILED):
                    await trio.sleep(0.01)
            assert server.metrics.get(wh.WEBHOOK_RETRIED) == 0


async def test_a_hanging_receiver_never_blocks_rooms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wh, "REQUEST_TIMEOUT", 30.0)
    # Not `running_server`: its leak check runs right after the server's shutdown, but the
    # receiver has to keep hanging through that shutdown. So the same census (`assert_no_leaks`,
    # from a baseline taken before the receiver) runs once the receiver's nursery has closed.
    baseline = leak_baseline()
    async with receiver(hang=True) as rec:
        server = Server(webhook_config(rec.url))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            ports = server_ports(server)
            with trio.fail_after(5):
                for i in range(5):
                    async with signal_client(server, mint_token(f"user{i}")) as ws:
                        await join(ws)
                # The joins above went through while the first post was already held.
                while not rec.held:
                    await trio.sleep(0.01)
            # Shutdown is bounded too: undelivered webhooks are abandoned after the grace period.
            started = trio.current_time()
            server.request_shutdown()
        assert trio.current_time() - started < wh.SHUTDOWN_GRACE + 4
        # Abandoning a post means hanging up on the receiver, not leaving the connection open.
        with trio.fail_after(5):
            while rec.hung_up < rec.held:
                await trio.sleep(0.01)
    assert not rec.received and server.shutdown_clean
    assert_no_leaks(server, baseline, ports)
    # Stricter than the shared check, which only counts sockets on the server's own ports: with
    # the receiver and every client closed too, no socket made since the baseline may be open
    # (the server's outgoing webhook connections included).
    assert open_sockets() <= baseline.sockets, sorted(open_sockets() - baseline.sockets)


async def test_a_full_queue_drops_and_counts() -> None:
    config = wh.WebhookConfig(WEBHOOK_KEY, WEBHOOK_SECRET, ("http://127.0.0.1:9/never",))
    metrics = Metrics()
    notifier = wh.WebhookNotifier(config, metrics, queue_size=2)
    for i in range(5):
        notifier.enqueue(webhook.WebhookEvent(event="room_started", id=f"EV_{i}"))
    assert metrics.get(wh.WEBHOOK_DROPPED) == 3


def big_event(i: int, size: int = 60_000) -> webhook.WebhookEvent:
    return webhook.WebhookEvent(event="room_started", id=f"EV_{i}", room=models.Room(name="r", metadata="m" * size))


async def test_the_queue_is_bounded_in_bytes_too() -> None:
    # Events can be large (a participant's whole info); 512 of them must not pin ~100 MB for a
    # receiver that is down.
    config = wh.WebhookConfig(WEBHOOK_KEY, WEBHOOK_SECRET, ("http://127.0.0.1:9/never",))
    metrics = Metrics()
    notifier = wh.WebhookNotifier(config, metrics)
    body_size = len(wh.event_body(big_event(0)))
    for i in range(400):
        notifier.enqueue(big_event(i))
    kept = 400 - metrics.get(wh.WEBHOOK_DROPPED)
    assert kept == wh.QUEUE_BYTES // body_size, (kept, body_size)


async def test_delivered_events_give_their_bytes_back() -> None:
    async with receiver() as rec:
        config = wh.WebhookConfig(WEBHOOK_KEY, WEBHOOK_SECRET, (rec.url,))
        metrics = Metrics()
        notifier = wh.WebhookNotifier(config, metrics, queue_bytes=200_000)
        for i in range(4):
            notifier.enqueue(big_event(i))
        assert metrics.get(wh.WEBHOOK_DROPPED) == 1  # three fit in 200 KB, the fourth does not
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
            await rec.wait_for(3)
            for i in range(4, 7):
                notifier.enqueue(big_event(i))
            await rec.wait_for(6)
            nursery.cancel_scope.cancel()
        assert metrics.get(wh.WEBHOOK_DROPPED) == 1


async def test_track_events_name_their_participant_without_its_whole_info() -> None:
    async with receiver() as rec:
        async with running_server(webhook_config(rec.url)) as server:
            # As much as fits in a token under the 16 KiB request head.
            token = mint_token("alice", metadata="m" * 5_000, attributes={"k": "v" * 2_000})
            async with signal_client(server, token) as alice:
                ja = await join(alice)
                for i in range(3):
                    await send(alice, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                        cid=f"c{i}", name=f"mic{i}", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)))
                    await recv_kind(alice, "track_published")
                await rec.wait_for(5)
        events = [validate(r) for r in rec.received]
    joined = next(e for e in events if e.event == "participant_joined")
    published = [e for e in events if e.event == "track_published"]
    # A join carries the whole participant, as LiveKit's does.
    assert len(joined.participant.metadata) == 5_000 and joined.participant.attributes["k"] == "v" * 2_000
    # A track event names the participant (sid and identity, as LiveKit's), the track is the subject.
    assert len(published) == 3
    for event in published:
        assert (event.participant.sid, event.participant.identity) == (ja.participant.sid, "alice")
        assert event.participant.metadata == "" and not event.participant.attributes and not event.participant.tracks
        assert event.track.name.startswith("mic")
    assert all(len(r.body) < 2000 for r, e in zip(rec.received, events) if e.event == "track_published")


def test_signature_is_sha256_of_the_body() -> None:
    body = wh.event_body(webhook.WebhookEvent(event="room_started", room=models.Room(name="r")))
    token = wh.sign_body(body, WEBHOOK_KEY, WEBHOOK_SECRET, now=time.time())
    claims = api.TokenVerifier(WEBHOOK_KEY, WEBHOOK_SECRET).verify(token)
    assert base64.b64decode(claims.sha256) == hashlib.sha256(body).digest()


def test_backoff_grows_and_is_capped() -> None:
    delays = [wh.backoff_delay(n) for n in range(10)]
    assert delays == sorted(delays) and delays[0] == wh.BACKOFF_BASE and delays[-1] == wh.BACKOFF_MAX


@pytest.mark.parametrize(
    "section,message",
    [
        ({"api_key": "unknown", "urls": ["http://x/"]}, "not one of the configured API keys"),
        ({"urls": ["http://x/"]}, "webhook.api_key"),
        ({"api_key": API_KEY, "urls": ["ftp://x/"]}, "not an http"),
        ({"api_key": API_KEY, "urls": "http://x/"}, "list of URLs"),
    ],
)
def test_unusable_webhook_config_is_refused(section: dict, message: str) -> None:
    config = make_config()
    config.webhook = section
    with pytest.raises(ConfigError, match=message):
        Server(config)


def test_no_urls_means_no_webhooks() -> None:
    config = make_config()
    config.webhook = {"api_key": API_KEY}
    assert Server(config).webhooks is None
    assert wh.WebhookConfig.from_server_config(webhook_config("http://127.0.0.1:1/")) == wh.WebhookConfig(
        WEBHOOK_KEY, WEBHOOK_SECRET, ("http://127.0.0.1:1/",)
    )


def test_livekit_style_yaml_config_enables_webhooks() -> None:
    text = f"""
keys:
  {WEBHOOK_KEY}: {WEBHOOK_SECRET}
webhook:
  api_key: {WEBHOOK_KEY}
  urls:
    - http://127.0.0.1:8080/hooks
    - https://example.invalid/lk
room:
  enable_remote_unmute: true
"""
    config, warnings = config_from_mapping(yaml.safe_load(text))
    assert warnings == [] and config.room.enable_remote_unmute
    server = Server(config)
    assert server.webhooks is not None and server.webhooks in server.registry.observers
    assert server.webhooks.config.urls == ("http://127.0.0.1:8080/hooks", "https://example.invalid/lk")
