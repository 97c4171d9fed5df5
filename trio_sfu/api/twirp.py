"""Twirp over HTTP/1.1: routing, content types, bearer-token auth and Twirp's error JSON.

LiveKit's Server API is Twirp: `POST /twirp/<package.Service>/<Method>` with a protobuf or JSON
body, answered in the same encoding. Errors are always JSON `{"code","msg","meta"}` with the
status Twirp assigns to the code (the Python client parses JSON on any non-200), so every
failure here -- including a bug in a handler -- becomes a TwirpError, never a stack trace.

A call is checked in two steps so that nobody unauthenticated makes us read a body: `prepare`
needs only the request head (method, route, content type, bearer token), and only a prepared
call's body is read and passed to `dispatch`.

This module knows nothing about rooms: a service is a table of `TwirpMethod`s whose handlers
receive the caller's verified `ClaimGrants` and decoded request, and check grants themselves
(which grant applies can depend on the request, e.g. `roomAdmin` for the named room).
"""

from __future__ import annotations

import enum
import json
from typing import Awaitable, Callable, Mapping

import attrs
from google.protobuf import json_format
from google.protobuf.message import Message

from trio_sfu.api.auth import AuthError, ClaimGrants, TokenVerifier, token_from_request
from trio_sfu.log import get_logger
from trio_sfu.signal.limits import json_nesting_within

PATH_PREFIX = "/twirp/"
# JSON nesting deeper than this is refused as malformed instead of recursing.
MAX_JSON_DEPTH = 64

# Twirp's error codes and the HTTP status each one carries (twitchtv/twirp errors.go).
TWIRP_STATUS: dict[str, int] = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}

_log = get_logger("trio_sfu.api.twirp")


class TwirpError(Exception):
    """A failed call, as Twirp reports it: a code from TWIRP_STATUS, a message, optional string meta."""

    def __init__(self, code: str, msg: str, meta: Mapping[str, str] | None = None) -> None:
        if code not in TWIRP_STATUS:
            raise ValueError(f"not a Twirp error code: {code!r}")
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.meta = dict(meta or {})

    @property
    def status(self) -> int:
        return TWIRP_STATUS[self.code]

    def to_json(self) -> bytes:
        body: dict[str, object] = {"code": self.code, "msg": self.msg}
        if self.meta:
            body["meta"] = self.meta
        return json.dumps(body).encode()


class Encoding(enum.Enum):
    PROTOBUF = "application/protobuf"
    JSON = "application/json"


@attrs.frozen
class TwirpReply:
    status: int
    content_type: str
    body: bytes

    @classmethod
    def error(cls, error: TwirpError) -> "TwirpReply":
        return cls(error.status, "application/json", error.to_json())


Handler = Callable[[ClaimGrants, Message], Awaitable[Message]]


@attrs.frozen
class TwirpMethod:
    request_type: type[Message]
    handler: Handler


def encoding_of(content_type: str | None) -> Encoding:
    """The body encoding named by a Content-Type header (parameters after ';' ignored)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    for encoding in Encoding:
        if media_type == encoding.value:
            return encoding
    raise TwirpError("bad_route", f"unexpected Content-Type: {media_type[:100]!r}")


def decode_request(encoding: Encoding, body: bytes, message_type: type[Message]) -> Message:
    """Parse a request body; anything unparsable is TwirpError('malformed')."""
    message = message_type()
    if encoding is Encoding.PROTOBUF:
        try:
            message.ParseFromString(body)
        except Exception:
            # The protobuf runtimes (upb, C++, pure Python) differ in what they raise on hostile
            # input; any failure to parse means a malformed body.
            raise TwirpError("malformed", "the request body could not be decoded as protobuf") from None
        return message
    try:
        text = body.decode("utf-8") if body else "{}"
    except UnicodeDecodeError:
        raise TwirpError("malformed", "the JSON request body is not UTF-8") from None
    # json.loads recurses per nesting level; bound it before parsing so hostile input is a
    # malformed error, not a RecursionError.
    if not json_nesting_within(text, MAX_JSON_DEPTH):
        raise TwirpError("malformed", "the JSON request body is nested too deeply")
    try:
        # Parse accepts proto (snake_case) and JSON (camelCase) field names alike; unknown
        # fields are skipped, as Twirp's protojson.UnmarshalOptions{DiscardUnknown: true}.
        json_format.Parse(text, message, ignore_unknown_fields=True, max_recursion_depth=MAX_JSON_DEPTH)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise TwirpError("malformed", f"the JSON request body could not be decoded: {str(exc)[:200]}") from None
    return message


def encode_response(encoding: Encoding, message: Message) -> bytes:
    if encoding is Encoding.PROTOBUF:
        return message.SerializeToString()
    # Twirp's JSON: proto field names and every field, defaults included.
    text = json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=None
    )
    return text.encode()


@attrs.frozen
class TwirpCall:
    """A request whose head passed: its method, the body's encoding and the caller's grants."""

    method: TwirpMethod
    encoding: Encoding
    grants: ClaimGrants


class TwirpServer:
    """Dispatches Twirp requests to the registered services."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier
        self._services: dict[str, Mapping[str, TwirpMethod]] = {}

    def register(self, service: str, methods: Mapping[str, TwirpMethod]) -> None:
        """Serve `methods` under `/twirp/<service>/` (service as `livekit.RoomService`)."""
        self._services[service] = dict(methods)

    def route(self, path: str) -> TwirpMethod:
        if not path.startswith(PATH_PREFIX):
            raise TwirpError("bad_route", "no handler for path")
        service, _, method = path[len(PATH_PREFIX):].partition("/")
        methods = self._services.get(service)
        found = methods.get(method) if methods is not None and "/" not in method else None
        if found is None:
            raise TwirpError("bad_route", f"no handler for path {path[:200]!r}")
        return found

    def authenticate(self, authorization: str | None) -> ClaimGrants:
        try:
            token = token_from_request(authorization, None)
            if token is None:
                raise AuthError(401, "authorization header missing: expected 'Bearer <token>'")
            return self._verifier.verify(token)
        except AuthError as exc:
            raise TwirpError("unauthenticated", exc.reason) from None

    def prepare(self, http_method: str, path: str, headers: Mapping[str, str]) -> TwirpCall | TwirpReply:
        """Check a request's head (`headers` with lower-case names): the call to make once the
        body is read, or the error reply to send without reading it."""
        try:
            if http_method != "POST":
                raise TwirpError("bad_route", f"unsupported method {http_method[:16]!r} (only POST is allowed)")
            method = self.route(path)
            encoding = encoding_of(headers.get("content-type"))
            grants = self.authenticate(headers.get("authorization"))
            return TwirpCall(method, encoding, grants)
        except TwirpError as exc:
            return _error_reply(path, exc)

    async def dispatch(self, call: TwirpCall, path: str, body: bytes) -> TwirpReply:
        """Decode the body and run the prepared call. Never raises."""
        try:
            request = decode_request(call.encoding, body, call.method.request_type)
            response = await call.method.handler(call.grants, request)
            return TwirpReply(200, call.encoding.value, encode_response(call.encoding, response))
        except TwirpError as exc:
            return _error_reply(path, exc)
        except Exception:
            _log.exception("twirp handler crashed", kv={"path": path[:200]})
            return TwirpReply.error(TwirpError("internal", "internal server error"))

    async def handle(self, http_method: str, path: str, headers: Mapping[str, str], body: bytes) -> TwirpReply:
        """Answer one request whose body was already read. Never raises."""
        call = self.prepare(http_method, path, headers)
        if isinstance(call, TwirpReply):
            return call
        return await self.dispatch(call, path, body)


def _error_reply(path: str, exc: TwirpError) -> TwirpReply:
    if exc.status >= 500:
        _log.warning("twirp call failed", kv={"path": path[:200], "code": exc.code, "msg": exc.msg})
    else:
        _log.info("twirp call refused", kv={"path": path[:200], "code": exc.code, "msg": exc.msg})
    return TwirpReply.error(exc)
