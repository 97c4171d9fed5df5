"""The playground: a page at `/` that joins a room with `livekit-client`, and its dev tokens.

What a browser gets:

- `GET /` with `Accept: text/html` is the page (`index.html`, with this server's mode and name
  limits filled in); any other `GET /` stays the plain `OK` health checks expect (HttpFront
  decides, with `accepts_html`).
- `/playground/<asset>`: the page's own script and style (`app.js`, `app.css`, written by hand,
  served as they are) and `livekit-client.js`, LiveKit's browser SDK bundled into one ES module.
  Each has its content type, a strong ETag and `cache-control: no-cache` (paths are fixed, so a
  browser revalidates and gets a 304 while the file is unchanged).
- `POST /playground/dev-token` (`{"room", "identity", "name"}` as JSON) mints a join token with
  the server's own key, only when the server runs in development mode (`--dev`); otherwise the
  path does not exist (404) and the page asks for a token instead. Its inputs are bounded by
  the server's limits (room name, identity and name lengths, as a join checks them), its body
  by `MAX_TOKEN_REQUEST`, and a request from another origin is refused (403).

Why the bundle is committed (`livekit-client.js`, built by `scripts/build_playground.sh` with
esbuild from the npm package pinned in `scripts/browser/package-lock.json`) instead of built at
install time: `pip install trio-sfu` then needs no node, no npm and no network beyond PyPI, and
serves byte for byte what was reviewed and tested; no CDN is involved either. The cost is that
the file must be rebuilt when the pinned version changes; `tests/test_playground_bundle.py`
fails when the bundle and the lock file disagree, or when the script would build other bytes.

This module is sans-IO like `twirp`: HttpFront reads the request and sends what it gets back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from importlib import resources
from typing import Mapping
from urllib.parse import urlsplit

import attrs

from trio_sfu.access_token import mint_token
from trio_sfu.api.auth import MAX_TOKEN_LENGTH
from trio_sfu.config import DEV_API_KEY
from trio_sfu.signal.limits import SignalLimits, utf8_len

PREFIX = "/playground/"
TOKEN_PATH = PREFIX + "dev-token"
#: A dev-token request is three short strings; anything larger is refused before it is parsed.
MAX_TOKEN_REQUEST = 4096
#: A playground session is an afternoon of trying things, not a deployment.
DEV_TOKEN_TTL_SECONDS = 6 * 3600

_JSON = "application/json"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
#: The files served under PREFIX, by name: nothing else in the package is reachable.
ASSET_NAMES = ("app.js", "app.css", "livekit-client.js")
PAGE_NAME = "index.html"


@attrs.frozen
class Reply:
    """What to answer: HttpFront sends it as it is."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> "Asset":
        suffix = name[name.rfind("."):]
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, _TYPES[suffix], f'"{digest}"')


@functools.cache
def _package_file(name: str) -> bytes:
    """One of the package's playground files (read once per process)."""
    return resources.files(__package__).joinpath(name).read_bytes()


def accepts_html(accept: str) -> bool:
    """Whether an `Accept` header asks for HTML by name (a browser navigating does; `*/*`,
    as curl and health checkers send, does not)."""
    for media_range in accept.split(",")[:64]:
        kind, *params = media_range.split(";")
        if kind.strip().lower() != "text/html":
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps({"error": message}).encode()
    return Reply(status, body, _JSON, (("cache-control", "no-store"), *headers))


def _same_origin(headers: Mapping[str, str]) -> bool:
    """No `Origin` (not a browser's cross-site call), or one naming the host the request went to."""
    origin = headers.get("origin")
    if origin is None:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == headers.get("host", "").lower()


class Playground:
    """The page, its assets and (in development mode) its token endpoint, for one server."""

    def __init__(self, *, development: bool, keys: Mapping[str, str], limits: SignalLimits) -> None:
        self.development = development
        self.limits = limits
        self._key: tuple[str, str] | None = None
        if development and keys:
            # The dev key when it is configured (it is, under --dev), else the first one.
            name = DEV_API_KEY if DEV_API_KEY in keys else next(iter(keys))
            self._key = (name, keys[name])
        page = _package_file(PAGE_NAME)
        for placeholder, value in (
            ("{{mode}}", "development" if self._key is not None else "production"),
            ("{{max_room}}", str(limits.max_room_name_length)),
            ("{{max_name}}", str(limits.max_participant_name_length)),
            ("{{max_identity}}", str(limits.max_participant_identity_length)),
        ):
            page = page.replace(placeholder.encode(), value.encode())
        self.page = Asset.of(PAGE_NAME, page)
        self.assets = {name: Asset.of(name, _package_file(name)) for name in ASSET_NAMES}

    # ---- the page and its files --------------------------------------------------------

    def page_reply(self, headers: Mapping[str, str]) -> Reply:
        # `/` also answers `OK` to other clients: caches must key on Accept.
        return self._asset_reply(self.page, headers, (("vary", "accept"),))

    def asset_reply(self, method: str, path: str, headers: Mapping[str, str]) -> Reply:
        """A GET or HEAD of a path under PREFIX other than the token endpoint."""
        asset = self.assets.get(path[len(PREFIX):]) if path.startswith(PREFIX) else None
        if asset is None:
            return Reply(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        return self._asset_reply(asset, headers)

    @staticmethod
    def _asset_reply(asset: Asset, headers: Mapping[str, str],
                     extra: tuple[tuple[str, str], ...] = ()) -> Reply:
        caching = (("etag", asset.etag), ("cache-control", "no-cache"),
                   ("x-content-type-options", "nosniff"), *extra)
        if_none_match = headers.get("if-none-match", "")
        if asset.etag in (tag.strip() for tag in if_none_match.split(",")) or if_none_match.strip() == "*":
            return Reply(304, headers=caching)
        return Reply(200, asset.body, asset.content_type, caching)

    # ---- POST /playground/dev-token ----------------------------------------------------

    def token_refusal(self, method: str, headers: Mapping[str, str]) -> Reply | None:
        """What the head alone decides, before a byte of the body is read."""
        if self._key is None:
            return Reply(404, b"not found\n")  # only a development server has this endpoint
        if method != "POST":
            return _error(405, "use POST with a JSON body", (("allow", "POST"),))
        if not _same_origin(headers):
            return _error(403, "dev tokens are minted for this server's own page only")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != _JSON:
            return _error(415, "the body must be application/json")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_TOKEN_REQUEST:
            return _error(413, f"the body exceeds {MAX_TOKEN_REQUEST} bytes")
        return None

    def token_reply(self, body: bytes | None, now: float | None = None) -> Reply:
        """The token for a request `token_refusal` let through; `body` None: it was too large."""
        if body is None:
            return _error(413, f"the body exceeds {MAX_TOKEN_REQUEST} bytes")
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return _error(400, "the body is not JSON")
        if not isinstance(request, dict):
            return _error(400, 'the body must be a JSON object: {"room": ..., "identity": ..., "name": ...}')
        room, identity, name = (request.get(key, "") for key in ("room", "identity", "name"))
        for key, value in (("room", room), ("identity", identity), ("name", name)):
            if not isinstance(value, str):
                return _error(400, f"{key} must be a string")
        refusal = self._check(room, identity, name)
        if refusal is not None:
            return _error(400, refusal)
        token = self._mint(room, identity, name or identity, time.time() if now is None else now)
        if len(token) > MAX_TOKEN_LENGTH:
            # Only where the limits are switched off (0) can the strings get this long.
            return _error(400, "room, identity and name are too long together for a token")
        return Reply(200, json.dumps({"token": token}).encode(), _JSON, (("cache-control", "no-store"),))

    def _check(self, room: str, identity: str, name: str) -> str | None:
        """The join's own checks (HttpFront.authorize_join), told before a token exists."""
        limits = self.limits
        if not room.strip():
            return "room name cannot be empty"
        if limits.room_name_too_long(room):
            return f"room name exceeds limits: max length {limits.max_room_name_length}"
        if not identity.strip():
            return "participant identity cannot be empty"
        if limits.identity_too_long(identity):
            return f"participant identity exceeds limits: max length {limits.max_participant_identity_length}"
        if limits.max_participant_name_length and utf8_len(name) > limits.max_participant_name_length:
            return f"participant name exceeds limits: max length {limits.max_participant_name_length}"
        return None

    def _mint(self, room: str, identity: str, name: str, now: float) -> str:
        assert self._key is not None
        key, secret = self._key
        return mint_token(key, secret, identity=identity, room=room, name=name, now=now,
                          valid_for=DEV_TOKEN_TTL_SECONDS,
                          video={"roomJoin": True, "canPublish": True, "canSubscribe": True, "canPublishData": True})
