"""Bounds on everything a client sends on the signal channel, in one place.

Where LiveKit has a config key (`limit:` -- metadata, attributes, name and identity sizes) the
bound comes from `trio_sfu.config.LimitConfig`; the others are ours and are sized well above
what the LiveKit SDKs send (the numbers say why). The checks here are pure functions over the
request: the signal session calls them before it changes any state, and answers a refusal with
LiveKit's `RequestResponse` reasons.

Sizes are UTF-8 bytes, as LiveKit (Go's `len`) counts them.
"""

from __future__ import annotations

from typing import Iterable, Mapping, MutableMapping, TypeVar

import attrs
from livekit.protocol import models, rtc

from trio_sfu.config import LimitConfig

# A LiveKit SDK names one or a few tracks per UpdateTrackSettings / UpdateSubscription; a
# server-side UpdateSubscriptions for a large room names a few hundred at most.
MAX_TRACK_IDS_PER_REQUEST = 512
# Subscriptions and track settings may name a track that is not in the room (yet: it is being
# published, or it lives on a node we have not heard from); this many such ids are kept per
# participant, the oldest forgotten first. Everything else they name must exist.
MAX_PENDING_TRACK_IDS = 32
# LiveKit's SDKs publish a camera, a microphone and screen share (+ audio); 64 is generous.
MAX_TRACKS_PER_PARTICIPANT = 64
MAX_TRACK_NAME_LENGTH = 256
# cid and stream are SDK-made identifiers (a UUID, "camera"); 256 bytes leaves room to spare.
MAX_TRACK_ID_LENGTH = 256
# Simulcast is three layers, SVC three spatial layers; a primary and a backup codec.
MAX_TRACK_LAYERS = 8
MAX_TRACK_CODECS = 8
# The whole AddTrackRequest: a real one is a few hundred bytes.
MAX_ADD_TRACK_SIZE = 8 * 1024
# An RTCIceCandidateInit is a flat JSON object of four short fields (~250 bytes); bounding its
# size and nesting before anyone parses it keeps a hostile one from recursing in json.loads.
MAX_CANDIDATE_SIZE = 4 * 1024
MAX_CANDIDATE_NESTING = 4
# A publisher offer with 64 tracks is ~130 KiB (libwebrtc, ~2 KiB per m-line); a subscriber
# answer is ~700 bytes per m-line. Parsing is linear (~90 ms for 512 KiB here).
MAX_SDP_SIZE = 256 * 1024


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def attributes_size(attributes: Mapping[str, str]) -> int:
    """LiveKit's measure of attributes: the sum of every key's and value's length."""
    return sum(utf8_len(key) + utf8_len(value) for key, value in attributes.items())


@attrs.frozen
class Refusal:
    """Why a request was refused: a `RequestResponse.Reason` and a message for the client."""

    reason: int
    message: str


def _limit_exceeded(message: str) -> Refusal:
    return Refusal(rtc.RequestResponse.Reason.LIMIT_EXCEEDED, message)


def _invalid(message: str) -> Refusal:
    return Refusal(rtc.RequestResponse.Reason.INVALID_REQUEST, message)


@attrs.frozen
class SignalLimits:
    """The bounds one server applies to its participants' requests."""

    max_metadata_size: int = 64000
    max_attributes_size: int = 64000
    max_participant_name_length: int = 256
    max_participant_identity_length: int = 256
    max_room_name_length: int = 256
    max_track_ids_per_request: int = MAX_TRACK_IDS_PER_REQUEST
    max_pending_track_ids: int = MAX_PENDING_TRACK_IDS
    max_tracks_per_participant: int = MAX_TRACKS_PER_PARTICIPANT

    @classmethod
    def from_config(cls, limit: LimitConfig) -> "SignalLimits":
        return cls(
            max_metadata_size=limit.max_metadata_size,
            max_attributes_size=limit.max_attributes_size,
            max_participant_name_length=limit.max_participant_name_length,
            max_participant_identity_length=limit.max_participant_identity_length,
            max_room_name_length=limit.max_room_name_length,
        )

    def room_name_too_long(self, name: str) -> bool:
        return bool(self.max_room_name_length) and utf8_len(name) > self.max_room_name_length

    def identity_too_long(self, identity: str) -> bool:
        limit = self.max_participant_identity_length
        return bool(limit) and utf8_len(identity) > limit

    # ---- the participant's own name, metadata and attributes (LiveKit's limit section) ----

    def check_name(self, name: str) -> Refusal | None:
        limit = self.max_participant_name_length
        if limit and utf8_len(name) > limit:
            return _limit_exceeded(f"exceeds name length limit of {limit} bytes")
        return None

    def check_metadata(self, metadata: str) -> Refusal | None:
        limit = self.max_metadata_size
        if limit and utf8_len(metadata) > limit:
            return _limit_exceeded(f"exceeds metadata size limit of {limit} bytes")
        return None

    def check_attributes(self, attributes: Mapping[str, str]) -> Refusal | None:
        limit = self.max_attributes_size
        if limit and attributes_size(attributes) > limit:
            return _limit_exceeded(f"exceeds attributes size limit of {limit} bytes")
        return None

    def check_participant_update(
        self, name: str, metadata: str, changes: Mapping[str, str], current: Mapping[str, str]
    ) -> Refusal | None:
        """An update of name, metadata and attributes (`changes`, where an empty value deletes).

        LiveKit checks the request's attributes only, so repeated updates with new keys could
        grow a participant without bound; the attributes it would have afterwards are checked too.
        """
        refusal = self.check_name(name) or self.check_metadata(metadata) or self.check_attributes(changes)
        if refusal is None and changes:
            refusal = self.check_attributes(merge_attributes(current, changes))
        return refusal

    # ---- requests naming tracks -------------------------------------------------------

    def check_track_ids(self, count: int) -> Refusal | None:
        if count > self.max_track_ids_per_request:
            return _limit_exceeded(f"a request may name at most {self.max_track_ids_per_request} tracks")
        return None

    def check_add_track(self, req: rtc.AddTrackRequest) -> Refusal | None:
        """An AddTrackRequest's sizes and counts."""
        if req.ByteSize() > MAX_ADD_TRACK_SIZE:
            return _limit_exceeded(f"track description exceeds {MAX_ADD_TRACK_SIZE} bytes")
        if utf8_len(req.name) > MAX_TRACK_NAME_LENGTH:
            return _limit_exceeded(f"track name exceeds {MAX_TRACK_NAME_LENGTH} bytes")
        if utf8_len(req.cid) > MAX_TRACK_ID_LENGTH or utf8_len(req.stream) > MAX_TRACK_ID_LENGTH:
            return _limit_exceeded(f"track cid and stream may be at most {MAX_TRACK_ID_LENGTH} bytes")
        if len(req.simulcast_codecs) > MAX_TRACK_CODECS:
            return _limit_exceeded(f"a track may have at most {MAX_TRACK_CODECS} codecs")
        if len(req.layers) > MAX_TRACK_LAYERS or any(len(c.layers) > MAX_TRACK_LAYERS for c in req.simulcast_codecs):
            return _limit_exceeded(f"a track may have at most {MAX_TRACK_LAYERS} layers")
        return None

    def check_track_count(self, published: int) -> Refusal | None:
        """Whether a participant with `published` tracks may publish one more."""
        if published >= self.max_tracks_per_participant:
            return _limit_exceeded(f"a participant may publish at most {self.max_tracks_per_participant} tracks")
        return None


def merge_attributes(current: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """`current` after an update: LiveKit semantics, an empty value deletes the key."""
    merged = dict(current)
    for key, value in changes.items():
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    return merged


# Which TrackType each TrackSource is: a video track labelled MICROPHONE would slip past a
# `canPublishSources: ["microphone"]` grant. UNKNOWN is not a claim, so it is not checked here.
_SOURCE_TYPES = {
    models.TrackSource.CAMERA: models.TrackType.VIDEO,
    models.TrackSource.SCREEN_SHARE: models.TrackType.VIDEO,
    models.TrackSource.MICROPHONE: models.TrackType.AUDIO,
    models.TrackSource.SCREEN_SHARE_AUDIO: models.TrackType.AUDIO,
}


def source_matches_type(source: int, track_type: int) -> bool:
    expected = _SOURCE_TYPES.get(source)
    return expected is None or expected == track_type


def check_candidate(candidate_init: str) -> Refusal | None:
    """A trickled RTCIceCandidateInit, before anyone parses it."""
    if len(candidate_init) > MAX_CANDIDATE_SIZE:
        return _limit_exceeded(f"ICE candidate exceeds {MAX_CANDIDATE_SIZE} bytes")
    if not json_nesting_within(candidate_init, MAX_CANDIDATE_NESTING):
        return _invalid("ICE candidate is not a flat JSON object")
    return None


def check_sdp(sdp: str) -> Refusal | None:
    if len(sdp) > MAX_SDP_SIZE:
        return _limit_exceeded(f"session description exceeds {MAX_SDP_SIZE} bytes")
    return None


def json_nesting_within(text: str, max_depth: int) -> bool:
    """Whether `text`'s arrays and objects nest at most `max_depth` deep (strings skipped).

    `json.loads` recurses once per level, so a deep document raises RecursionError instead of
    a parse error; this linear scan lets a caller refuse it before parsing.
    """
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif char in "]}":
            depth -= 1
    return True


V = TypeVar("V")


def assign_bounded(
    mapping: MutableMapping[str, V], track_ids: Iterable[str], value: V, known: set[str], allowance: int
) -> int:
    """Set `mapping[id] = value` for each id, keeping at most `allowance` ids that are not in
    `known` (the room's tracks): the oldest such entries go first. Returns how many were
    forgotten. The walk is over `mapping`, which this bound keeps at the room's tracks plus
    `allowance`, never over everything a client ever named."""
    for track_id in track_ids:
        # Re-inserting moves an id to the end: the oldest entries are the first in the dict.
        mapping.pop(track_id, None)
        mapping[track_id] = value
    unknown = [track_id for track_id in mapping if track_id not in known]
    excess = len(unknown) - allowance
    for track_id in unknown[:max(excess, 0)]:
        del mapping[track_id]
    return max(excess, 0)
