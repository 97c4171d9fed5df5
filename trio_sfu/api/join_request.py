"""`/rtc/v1`'s `join_request` query parameter: LiveKit's single peer connection join.

The clients put every join option in one parameter: base64url (padding optional) of a
serialized `WrappedJoinRequest`, whose `join_request` bytes are a `JoinRequest`, gzip-compressed
when `compression` says so (livekit-client compresses whenever the browser can; the Rust SDK
when that is smaller). The `JoinRequest` carries the client info, the connection settings, the
participant's attributes and metadata, the resume fields (`reconnect`, `participant_sid`,
`reconnect_reason`) and the first publisher offer, sometimes with `add_track_requests`.

Everything is bounded before it is decoded: the parameter's length, the decompressed size (a
gzip stream is inflated with a hard cap on its output, so a compression bomb costs at most
`MAX_JOIN_REQUEST_SIZE` bytes), the number of add_track requests. Whatever is wrong is a
`JoinRequestError` with the reason the client gets in a 400 (LiveKit's wording where it has one).
"""

from __future__ import annotations

import base64
import binascii
import zlib

from google.protobuf.message import DecodeError
from livekit.protocol import rtc

from trio_sfu.signal.participant import JoinOptions

#: The parameter's length: a request head is at most 16 KiB (trio_sfu.api.http_front.MAX_HEAD).
MAX_JOIN_REQUEST_PARAM = 16 * 1024
#: The JoinRequest's serialized size, after decompression. A browser's first offer (six media
#: m-lines and the data channel) is about 10 KiB; the cap leaves room for many more m-lines.
MAX_JOIN_REQUEST_SIZE = 128 * 1024
#: add_track requests carried in one join (each is then checked as a signal request is).
MAX_JOIN_ADD_TRACKS = 32


class JoinRequestError(ValueError):
    """A `join_request` that cannot be used; `reason` is what the client is told (HTTP 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64url_decode(value: str) -> bytes:
    if len(value) > MAX_JOIN_REQUEST_PARAM:
        raise JoinRequestError("join request too large")
    try:
        raw = value.encode("ascii")
        # Strict: characters outside the url-safe alphabet are an error, not skipped.
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise JoinRequestError("cannot base64 decode wrapped join request") from None


def gunzip_capped(data: bytes, limit: int) -> bytes:
    """Inflate a gzip stream to at most `limit` bytes; JoinRequestError if it holds more, is
    truncated or corrupt, or has bytes after its end."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        # Never asks for more than limit + 1 bytes of output: the bomb stops here.
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise JoinRequestError("cannot read decompressed join request") from None
    if len(out) > limit:
        raise JoinRequestError("join request too large")
    if not inflater.eof or inflater.unused_data:
        raise JoinRequestError("cannot read decompressed join request")
    return out


def decode_join_request(value: str) -> rtc.JoinRequest:
    """The `JoinRequest` in a `join_request` parameter value (already percent-decoded)."""
    if not value:
        raise JoinRequestError("join_request is required")
    wrapped_bytes = _b64url_decode(value)
    wrapped = rtc.WrappedJoinRequest()
    try:
        wrapped.ParseFromString(wrapped_bytes)
    except DecodeError:
        raise JoinRequestError("cannot unmarshal wrapped join request") from None
    payload = wrapped.join_request
    if wrapped.compression == rtc.WrappedJoinRequest.Compression.GZIP:
        payload = gunzip_capped(payload, MAX_JOIN_REQUEST_SIZE)
    elif wrapped.compression != rtc.WrappedJoinRequest.Compression.NONE:
        raise JoinRequestError(f"unknown join request compression {int(wrapped.compression)}")
    elif len(payload) > MAX_JOIN_REQUEST_SIZE:
        raise JoinRequestError("join request too large")
    request = rtc.JoinRequest()
    try:
        request.ParseFromString(payload)
    except DecodeError:
        raise JoinRequestError("cannot unmarshal join request") from None
    if len(request.add_track_requests) > MAX_JOIN_ADD_TRACKS:
        raise JoinRequestError(f"join request carries more than {MAX_JOIN_ADD_TRACKS} add_track requests")
    if request.HasField("publisher_offer") and request.publisher_offer.type not in ("", "offer"):
        raise JoinRequestError("publisher_offer must be an offer")
    return request


def join_options_from_join_request(request: rtc.JoinRequest) -> JoinOptions:
    """The join's options, as `join_options_from_query` reads them from a v0 query string."""
    info = request.client_info
    # The same bounds as the v0 query parameters' (64 characters each).
    for field in ("version", "os", "os_version", "device_model", "browser", "browser_version", "network",
                  "address", "other_sdks"):
        value = getattr(info, field)
        if len(value) > 64:
            setattr(info, field, value[:64])
    settings = request.connection_settings
    offer = request.publisher_offer if request.HasField("publisher_offer") and request.publisher_offer.sdp else None
    if offer is not None and not offer.type:
        offer.type = "offer"
    return JoinOptions(
        auto_subscribe=settings.auto_subscribe,
        adaptive_stream=settings.adaptive_stream,
        protocol=info.protocol,
        client_info=info,
        reconnect=request.reconnect,
        participant_sid=request.participant_sid,
        reconnect_reason=int(request.reconnect_reason),
        single_peer_connection=True,
        publisher_offer=offer,
        add_track_requests=tuple(request.add_track_requests),
    )


__all__ = ["MAX_JOIN_ADD_TRACKS", "MAX_JOIN_REQUEST_PARAM", "MAX_JOIN_REQUEST_SIZE", "JoinRequestError",
           "decode_join_request", "gunzip_capped", "join_options_from_join_request"]
