"""Token verification against tokens minted by livekit-api's AccessToken (an independent
producer) and hostile tokens built with PyJWT under other keys and algorithms."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import models

from trio_sfu.api.auth import LEEWAY_SECONDS, AuthError, TokenVerifier, token_from_request
from server_fixtures import API_KEY, API_SECRET

VERIFIER = TokenVerifier({API_KEY: API_SECRET, "other": "other-secret-0123456789abcdefghijklmnop"})


def full_token(ttl: timedelta = timedelta(hours=1)) -> str:
    grants = api.VideoGrants(
        room_create=True, room_list=True, room_admin=True, room_join=True, room="r1",
        can_publish=True, can_subscribe=False, can_publish_data=False,
        can_publish_sources=["camera", "microphone"], can_update_own_metadata=True, hidden=True,
        recorder=True, agent=True,
    )
    return (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity("alice").with_name("Alice").with_metadata('{"a":1}')
        .with_attributes({"k": "v"}).with_kind("agent").with_ttl(ttl).with_grants(grants)
        .to_jwt()
    )


def test_livekit_api_token_maps_every_claim() -> None:
    claims = VERIFIER.verify(full_token())
    assert (claims.api_key, claims.identity, claims.name, claims.metadata) == (API_KEY, "alice", "Alice", '{"a":1}')
    assert dict(claims.attributes) == {"k": "v"}
    assert claims.participant_kind == models.ParticipantInfo.Kind.AGENT
    video = claims.video
    assert video is not None
    assert video.room_join and video.room == "r1" and video.room_admin and video.room_create and video.room_list
    assert video.may_publish and not video.may_subscribe and not video.may_publish_data
    assert video.may_update_own_metadata and video.hidden and video.recorder and video.agent
    assert video.may_publish_source(models.TrackSource.CAMERA)
    assert not video.may_publish_source(models.TrackSource.SCREEN_SHARE)
    perm = video.to_permission()
    assert list(perm.can_publish_sources) == [models.TrackSource.CAMERA, models.TrackSource.MICROPHONE]
    assert perm.can_update_metadata and perm.hidden and not perm.can_subscribe


def test_defaults_follow_livekit_when_grants_are_absent() -> None:
    token = jwt.encode({"iss": API_KEY, "sub": "x", "exp": time.time() + 60, "video": {"roomJoin": True, "room": "r"}}, API_SECRET, "HS256")
    video = VERIFIER.verify(token).video
    assert video is not None
    assert video.may_publish and video.may_subscribe and video.may_publish_data
    assert not video.may_update_own_metadata
    assert all(video.may_publish_source(s) for s in (models.TrackSource.CAMERA, models.TrackSource.SCREEN_SHARE_AUDIO))
    token = jwt.encode({"iss": API_KEY, "sub": "x", "exp": time.time() + 60, "video": {"roomJoin": True, "canPublish": False}}, API_SECRET, "HS256")
    video = VERIFIER.verify(token).video
    assert video is not None and not video.may_publish_data  # canPublishData follows canPublish


def test_second_key_selects_its_own_secret() -> None:
    token = api.AccessToken("other", "other-secret-0123456789abcdefghijklmnop").with_identity("b").with_grants(api.VideoGrants(room_join=True, room="r")).to_jwt()
    assert VERIFIER.verify(token).api_key == "other"


def test_expiry_with_leeway() -> None:
    token = full_token()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    VERIFIER.verify(token, now=exp + LEEWAY_SECONDS - 1)
    with pytest.raises(AuthError, match="expired") as info:
        VERIFIER.verify(token, now=exp + LEEWAY_SECONDS + 1)
    assert info.value.status == 401


def test_not_before_with_leeway() -> None:
    token = full_token()
    nbf = jwt.decode(token, options={"verify_signature": False})["nbf"]
    VERIFIER.verify(token, now=nbf - LEEWAY_SECONDS + 1)
    with pytest.raises(AuthError, match="not valid yet"):
        VERIFIER.verify(token, now=nbf - LEEWAY_SECONDS - 5)


def test_really_expired_token_from_livekit_api() -> None:
    with pytest.raises(AuthError, match="expired"):
        VERIFIER.verify(full_token(ttl=timedelta(seconds=-120)))


def test_unknown_api_key() -> None:
    token = api.AccessToken("stranger", API_SECRET).with_identity("x").with_grants(api.VideoGrants(room_join=True, room="r")).to_jwt()
    with pytest.raises(AuthError, match="invalid API key"):
        VERIFIER.verify(token)


def test_wrong_secret() -> None:
    token = api.AccessToken(API_KEY, "wrong-secret-0123456789abcdefghijklmnopq").with_identity("x").with_grants(api.VideoGrants(room_join=True, room="r")).to_jwt()
    with pytest.raises(AuthError, match="signature"):
        VERIFIER.verify(token)


def test_tampered_payload() -> None:
    header, payload, signature = full_token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["video"]["room"] = "someone-elses-room"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError, match="signature"):
        VERIFIER.verify(f"{header}.{forged}.{signature}")


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"iss": API_KEY, "sub": "x", "exp": time.time() + 60, "video": {"roomJoin": True}}, None, algorithm="none")
    with pytest.raises(AuthError, match="algorithm"):
        VERIFIER.verify(token)
    # The same, hand-built with an empty signature and a capitalised alg.
    header = base64.urlsafe_b64encode(b'{"alg":"None","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({"iss": API_KEY, "exp": time.time() + 60}).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        VERIFIER.verify(f"{header}.{body}.")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(alg: str) -> None:
    token = jwt.encode({"iss": API_KEY, "sub": "x", "exp": time.time() + 60}, API_SECRET, algorithm=alg)
    with pytest.raises(AuthError, match="algorithm"):
        VERIFIER.verify(token)


def test_rs256_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"iss": API_KEY, "sub": "x", "exp": time.time() + 60}, key, algorithm="RS256")
    with pytest.raises(AuthError, match="algorithm"):
        VERIFIER.verify(token)


def test_missing_exp_is_refused() -> None:
    token = jwt.encode({"iss": API_KEY, "sub": "x", "video": {"roomJoin": True}}, API_SECRET, "HS256")
    with pytest.raises(AuthError, match="exp"):
        VERIFIER.verify(token)


@pytest.mark.parametrize(
    "claims",
    [
        {"video": "yes"},
        {"video": {"roomJoin": "true"}},
        {"video": {"canPublishSources": "camera"}},
        {"attributes": ["a"]},
        {"sub": 5},
        {"exp": "tomorrow"},
    ],
)
def test_wrongly_typed_claims_are_refused(claims: dict) -> None:
    payload = {"iss": API_KEY, "sub": "x", "exp": time.time() + 60, **claims}
    with pytest.raises(AuthError):
        VERIFIER.verify(jwt.encode(payload, API_SECRET, "HS256"))


def test_header_beats_query_and_must_be_bearer() -> None:
    assert token_from_request("Bearer abc", "xyz") == "abc"
    assert token_from_request(None, "xyz") == "xyz"
    assert token_from_request(None, None) is None
    with pytest.raises(AuthError):
        token_from_request("Basic abc", "xyz")


@settings(max_examples=examples(3), deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_tokens_only_raise_auth_error(token: str) -> None:
    try:
        VERIFIER.verify(token)
    except AuthError as exc:
        assert exc.status == 401


@settings(max_examples=examples(2), deadline=None)
@given(st.dictionaries(st.sampled_from(["sub", "name", "video", "attributes", "kind", "nbf", "exp", "metadata", "roomConfig"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                                    max_leaves=8)))
def test_arbitrary_signed_claims_never_crash(claims: dict) -> None:
    payload = {"iss": API_KEY, **claims}
    try:
        VERIFIER.verify(jwt.encode(payload, API_SECRET, "HS256"))
    except AuthError as exc:
        assert exc.status == 401


def test_identity_falls_back_to_jti_like_livekit() -> None:
    token = jwt.encode({"iss": API_KEY, "jti": "legacy-id", "exp": time.time() + 60}, API_SECRET, "HS256")
    assert VERIFIER.verify(token).identity == "legacy-id"
