"""One HTTP/1.1 POST over Trio, for the two callers of a LiveKit Server API: our client's
commands (trio_sfu.client.server_api) and a cluster node forwarding a call to another node
(trio_sfu.api.cluster_rooms). A foundation, so both sides of the layering use the one copy.
"""

from __future__ import annotations

import os
import ssl
import urllib.parse
from typing import Sequence

import attrs
import h11
import trio


class HttpUnreachable(Exception):
    """Nothing usable answered at the address (refused, broken, not HTTP, too slow, too large);
    `str()` is the one-line reason."""


@attrs.frozen
class HttpEndpoint:
    """Where the Server API of a LiveKit URL is: `ws(s)://` and `http(s)://` name the same server."""

    tls: bool
    host: str
    port: int
    path: str  # any path prefix the URL had, without a trailing slash

    @classmethod
    def from_url(cls, url: str) -> "HttpEndpoint":
        parts = urllib.parse.urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must be http://, https://, ws:// or wss:// with a host, not {url!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"server URL has a bad port: {url!r}") from None
        return cls(scheme == "https", parts.hostname, port, parts.path.rstrip("/"))

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{self.path}"


async def _open_stream(endpoint: HttpEndpoint) -> trio.abc.Stream:
    if endpoint.tls:
        return await trio.open_ssl_over_tcp_stream(endpoint.host, endpoint.port,
                                                   ssl_context=ssl.create_default_context())
    return await trio.open_tcp_stream(endpoint.host, endpoint.port)


def os_reason(exc: BaseException) -> str:
    """`connection refused`, not the errno soup of one failed attempt per address."""
    pending: list[BaseException | None] = [exc]
    seen = 0
    while pending and seen < 32:  # trio wraps the attempts: OSError from a group of OSErrors
        cause = pending.pop(0)
        if cause is None:
            continue
        seen += 1
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()  # trio's own strerror repeats the address
        pending += [*getattr(cause, "exceptions", ()), cause.__cause__]
    return str(exc) or type(exc).__name__


async def post(endpoint: HttpEndpoint, target: str, headers: Sequence[tuple[str, str]], body: bytes,
               timeout: float, max_reply: int) -> tuple[int, bytes]:
    """One HTTP/1.1 POST: (status, body). Raises HttpUnreachable."""
    connection = h11.Connection(h11.CLIENT)
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    status = 0
    reply = bytearray()
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await _open_stream(endpoint)
        except (OSError, ssl.SSLError) as exc:
            raise HttpUnreachable(f"cannot reach the server at {endpoint.base} ({os_reason(exc)})") from None
        try:
            async with stream:
                head = h11.Request(method="POST", target=target, headers=[
                    ("host", f"{host}:{endpoint.port}"), *headers,
                    ("content-length", str(len(body))), ("connection", "close")])
                await stream.send_all(connection.send(head) + connection.send(h11.Data(data=body))
                                      + connection.send(h11.EndOfMessage()))
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        reply += event.data
                        if len(reply) > max_reply:
                            raise HttpUnreachable(f"the answer from {endpoint.base} is larger than {max_reply} bytes")
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
        except h11.ProtocolError:
            raise HttpUnreachable(f"{endpoint.base} did not answer in HTTP/1.1: is it a LiveKit server?") from None
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            raise HttpUnreachable(f"the connection to {endpoint.base} broke ({os_reason(exc)})") from None
    if scope.cancelled_caught:
        raise HttpUnreachable(f"no answer from {endpoint.base} within {timeout:g} s")
    return status, bytes(reply)
