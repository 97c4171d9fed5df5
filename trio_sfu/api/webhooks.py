"""Signed webhooks, as LiveKit sends them: one POST per event to every configured URL.

Body: the `WebhookEvent` as protobuf-JSON (camelCase, defaults omitted), `Content-Type:
application/webhook+json`; header `Authorization: <jwt>` (no "Bearer") signed with the
configured webhook API key, whose `sha256` claim is base64(SHA-256(body)), so a receiver can
check that the body is the one that was signed.

Delivery never blocks a room: events are serialized at the moment they happen (a snapshot)
and queued without waiting on a channel per URL bounded in events and in bytes; one task per
URL posts them in order, retrying connection errors, 5xx and 429 with exponential back-off. A
full queue drops the event, and an event that exhausts its attempts is given up; both are
counted and logged. Track events name their participant by sid and identity only, as LiveKit's
do: the track is the subject, and a participant's whole info (metadata, attributes, every
track) would make each of its up to 64 track events as large as a join.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import string
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs
import httpx
import jwt
import trio
from google.protobuf import json_format
from livekit.protocol import agent as agent_pb, models, webhook

from trio_sfu import metrics as m
from trio_sfu.config import ConfigError, ServerConfig
from trio_sfu.log import get_logger
from trio_sfu.signal.participant import Participant
from trio_sfu.signal.rooms import MOVED_IN, MOVED_OUT, Room

CONTENT_TYPE = "application/webhook+json"
USER_AGENT = "LiveKit"
TOKEN_TTL = 300.0
QUEUE_SIZE = 512
# Per URL: a receiver that is down must not let queued events (each up to a participant's
# whole info, ~200 KiB at the limits) hold unbounded memory.
QUEUE_BYTES = 8 * 1024 * 1024
ATTEMPTS = 5
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
REQUEST_TIMEOUT = 10.0
SHUTDOWN_GRACE = 2.0

# Counter names (kept here: this module owns them).
WEBHOOK_SENT = "webhook_sent_total"
WEBHOOK_RETRIED = "webhook_retried_total"
WEBHOOK_DROPPED = "webhook_dropped_total"
WEBHOOK_FAILED = "webhook_failed_total"

_ALPHABET = string.ascii_letters + string.digits
_END_REASONS = {
    models.DisconnectReason.ROOM_DELETED: models.RoomEndReason.ROOM_END_API_DELETE,
    models.DisconnectReason.ROOM_CLOSED: models.RoomEndReason.ROOM_END_IDLE_TIMEOUT,
    models.DisconnectReason.SERVER_SHUTDOWN: models.RoomEndReason.ROOM_END_SERVER_SHUTDOWN,
}

_log = get_logger("trio_sfu.api.webhooks")


@attrs.frozen
class WebhookConfig:
    api_key: str
    api_secret: str
    urls: tuple[str, ...]

    @classmethod
    def from_server_config(cls, config: ServerConfig) -> "WebhookConfig | None":
        """LiveKit's `webhook: {api_key, urls}`; None when no URL is configured."""
        section: Mapping[str, Any] = config.webhook or {}
        urls = section.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ConfigError("config key 'webhook.urls' must be a list of URLs")
        if not urls:
            return None
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"config key 'webhook.urls': not an http(s) URL: {url[:200]!r}")
        api_key = section.get("api_key")
        if not isinstance(api_key, str) or not api_key:
            raise ConfigError("config key 'webhook.api_key' is required to send webhooks")
        secret = config.keys.get(api_key)
        if secret is None:
            raise ConfigError(f"config key 'webhook.api_key': {api_key[:64]!r} is not one of the configured API keys")
        return cls(api_key, secret, tuple(urls))


def event_body(event: webhook.WebhookEvent) -> bytes:
    return json_format.MessageToJson(event, indent=None).encode()


def sign_body(body: bytes, api_key: str, api_secret: str, now: float) -> str:
    """The Authorization value for `body`: a JWT whose sha256 claim is base64(SHA-256(body))."""
    claims = {
        "iss": api_key,
        "nbf": int(now),
        "exp": int(now + TOKEN_TTL),
        "sha256": base64.b64encode(hashlib.sha256(body).digest()).decode("ascii"),
    }
    return jwt.encode(claims, api_secret, algorithm="HS256")


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (0-based)."""
    return min(BACKOFF_MAX, BACKOFF_BASE * math.pow(2, attempt))


class WebhookNotifier:
    """A RoomObserver that posts every room event to the configured URLs."""

    def __init__(self, config: WebhookConfig, metrics: m.Metrics, *, queue_size: int = QUEUE_SIZE,
                 queue_bytes: int = QUEUE_BYTES) -> None:
        self.config = config
        self.metrics = metrics
        self._queues = {url: trio.open_memory_channel[bytes](queue_size) for url in config.urls}
        self._queue_bytes = queue_bytes
        self._queued_bytes = dict.fromkeys(config.urls, 0)
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()

    @classmethod
    def from_server_config(cls, config: ServerConfig, metrics: m.Metrics) -> "WebhookNotifier | None":
        webhook_config = WebhookConfig.from_server_config(config)
        return None if webhook_config is None else cls(webhook_config, metrics)

    # ---- producing (synchronous, never blocks) -----------------------------------------

    def room_event(
        self, event: str, room: Room, participant: Participant | None = None, track: models.TrackInfo | None = None
    ) -> None:
        if event in (MOVED_IN, MOVED_OUT):
            return  # a migration between nodes: the participant neither joined nor left
        message = webhook.WebhookEvent(
            event=event,
            room=room.to_proto(),
            id="EV_" + "".join(secrets.choice(_ALPHABET) for _ in range(12)),
            created_at=int(time.time()),
        )
        if track is not None:
            message.track.CopyFrom(track)
            if participant is not None:
                message.participant.sid = participant.sid
                message.participant.identity = participant.identity
        elif participant is not None:
            message.participant.CopyFrom(participant.to_info())
        if event == "room_finished":
            message.room_end_reason = _END_REASONS.get(
                getattr(room, "close_reason", None), models.RoomEndReason.ROOM_END_UNKNOWN
            )
        self.enqueue(message)

    def job_event(self, event: str, job: agent_pb.Job) -> None:
        """An agent job started or ended (trio_sfu.agents; LiveKit's open-source server sends
        no job events, so the names are ours): the job, its state saying how, and its room."""
        message = webhook.WebhookEvent(
            event=event,
            id="EV_" + "".join(secrets.choice(_ALPHABET) for _ in range(12)),
            created_at=int(time.time()),
        )
        message.job.CopyFrom(job)
        message.room.CopyFrom(job.room)
        self.enqueue(message)

    def enqueue(self, message: webhook.WebhookEvent) -> None:
        body = event_body(message)
        for url, (send, _) in self._queues.items():
            try:
                if self._queued_bytes[url] + len(body) > self._queue_bytes:
                    raise trio.WouldBlock
                send.send_nowait(body)
            except trio.WouldBlock:
                self.metrics.inc(WEBHOOK_DROPPED)
                _log.warning("webhook queue full, event dropped",
                             kv={"url": url, "event": message.event, "queued_bytes": self._queued_bytes[url]})
                continue
            self._queued_bytes[url] += len(body)
            self._pending += 1
            self._idle = trio.Event() if self._idle.is_set() else self._idle

    # ---- delivering --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One delivery task per URL; runs until cancelled (meant for the server nursery)."""
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, follow_redirects=False) as client:
            async with trio.open_nursery() as nursery:
                for url, (_, receive) in self._queues.items():
                    nursery.start_soon(self._deliver_all, client, url, receive)
                task_status.started()

    async def drain(self, timeout: float = SHUTDOWN_GRACE) -> bool:
        """Wait until everything queued was delivered or given up; False on timeout."""
        with trio.move_on_after(timeout):
            while self._pending:
                await self._idle.wait()
            return True
        return False

    async def _deliver_all(self, client: httpx.AsyncClient, url: str, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async for body in receive:
            self._queued_bytes[url] -= len(body)
            try:
                await self._deliver(client, url, body)
            finally:
                self._pending -= 1
                if not self._pending:
                    self._idle.set()

    async def _deliver(self, client: httpx.AsyncClient, url: str, body: bytes) -> None:
        last_error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                self.metrics.inc(WEBHOOK_RETRIED)
                await trio.sleep(backoff_delay(attempt - 1))
            headers = {
                "content-type": CONTENT_TYPE,
                "authorization": sign_body(body, self.config.api_key, self.config.api_secret, time.time()),
                "user-agent": USER_AGENT,
            }
            try:
                with trio.fail_after(REQUEST_TIMEOUT + 1):
                    response = await client.post(url, content=body, headers=headers)
            except (httpx.HTTPError, trio.TooSlowError, OSError) as exc:
                last_error = exc.__class__.__name__
                continue
            if 200 <= response.status_code < 300:
                self.metrics.inc(WEBHOOK_SENT)
                return
            last_error = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                # The receiver refused this event (e.g. a signature it rejects); retrying cannot help.
                break
        self.metrics.inc(WEBHOOK_FAILED)
        _log.warning("webhook delivery failed", kv={"url": url, "error": last_error, "size": len(body)})
