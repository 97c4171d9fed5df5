"""Cheap sanity checks on the captured SDP fixtures (tests/fixtures/sdp/README.md).

They pin down what each file was captured from, so that a re-capture that went
wrong (wrong client, wrong PeerConnection, line endings mangled by an editor or
git) fails here before the SDP parser tests read the files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SDP_DIR = Path(__file__).parent / "fixtures" / "sdp"

CLIENT_OFFERS = [
    "chromium_publisher_offer_simulcast.sdp",
    "chromium_v1_join_offer.sdp",
    "chromium_v1_publishing_offer.sdp",
    "python_sdk_publisher_offer.sdp",
    "python_sdk_v1_join_offer.sdp",
]
CLIENT_ANSWERS = ["chromium_subscriber_answer.sdp", "python_sdk_subscriber_answer.sdp"]
SERVER_OFFERS = ["chromium_subscriber_offer_sent.sdp", "python_sdk_subscriber_offer_sent.sdp"]
ALL = CLIENT_OFFERS + CLIENT_ANSWERS + SERVER_OFFERS

# libwebrtc (Chromium, and the Rust core of the Python SDK) writes
# "o=- <random 64-bit id> <version> IN IP4 127.0.0.1"; aiortc writes its
# ntp-based id twice and 0.0.0.0.
LIBWEBRTC_ORIGIN = re.compile(r"^o=- \d+ \d+ IN IP4 127\.0\.0\.1\r$", re.M)
AIORTC_ORIGIN = re.compile(r"^o=- (\d+) \1 IN IP4 0\.0\.0\.0\r$", re.M)


def read(name: str) -> str:
    return (SDP_DIR / name).read_bytes().decode("utf-8")


def lines(name: str) -> list[str]:
    return read(name).split("\r\n")[:-1]


def media_sections(name: str) -> list[list[str]]:
    """Lines of each m= section, m= line first."""
    sections: list[list[str]] = []
    for line in lines(name):
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return sections


def kinds_and_directions(name: str) -> list[tuple[str, str]]:
    result = []
    for section in media_sections(name):
        kind = section[0][2:].split(" ", 1)[0]
        direction = next(
            (a[2:] for a in section if a in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive")),
            "sendrecv",
        )
        result.append((kind, direction))
    return result


@pytest.mark.parametrize("name", ALL)
def test_fixture_is_crlf_sdp(name: str) -> None:
    text = read(name)
    assert text.startswith("v=0\r\no=")
    assert text.endswith("\r\n")
    # Every line ends in CRLF: no bare LF anywhere (editors and git autocrlf break this).
    assert text.count("\n") == text.count("\r\n")
    assert "a=fingerprint:sha-256 " in text
    assert "a=ice-ufrag:" in text


@pytest.mark.parametrize("name", CLIENT_OFFERS + CLIENT_ANSWERS)
def test_client_sdp_comes_from_libwebrtc(name: str) -> None:
    assert LIBWEBRTC_ORIGIN.search(read(name))


@pytest.mark.parametrize("name", SERVER_OFFERS)
def test_server_offer_comes_from_aiortc(name: str) -> None:
    assert AIORTC_ORIGIN.search(read(name))
    assert kinds_and_directions(name) == [
        ("audio", "sendonly"), ("video", "sendonly"), ("application", "sendrecv"),
    ]


@pytest.mark.parametrize("name", CLIENT_OFFERS)
def test_client_offers_ask_for_a_dtls_role_choice(name: str) -> None:
    setups = [line for line in lines(name) if line.startswith("a=setup:")]
    assert setups and set(setups) == {"a=setup:actpass"}


def test_chromium_publisher_offer_has_three_layer_simulcast() -> None:
    name = "chromium_publisher_offer_simulcast.sdp"
    assert kinds_and_directions(name) == [("audio", "sendonly"), ("video", "sendonly")]
    video = media_sections(name)[1]
    rids = [line for line in video if line.startswith("a=rid:")]
    assert rids == ["a=rid:q send", "a=rid:h send", "a=rid:f send"]
    assert "a=simulcast:send q;h;f" in video
    assert "a=extmap-allow-mixed" in lines(name)


def test_python_sdk_publisher_offer_sends_audio_and_simulcast_video() -> None:
    name = "python_sdk_publisher_offer.sdp"
    sending = [kind for kind, direction in kinds_and_directions(name) if direction == "sendonly"]
    assert sending == ["audio", "video"]
    assert ("application", "sendrecv") in kinds_and_directions(name)
    assert any(line.startswith("a=simulcast:send ") for line in lines(name))


@pytest.mark.parametrize("name", ["chromium_v1_join_offer.sdp", "python_sdk_v1_join_offer.sdp"])
def test_v1_join_offer_is_the_single_pc_shape(name: str) -> None:
    assert kinds_and_directions(name) == [("audio", "recvonly")] * 3 + [("video", "recvonly")] * 3 + [
        ("application", "sendrecv"),
    ]


def test_chromium_v1_publishing_offer_keeps_the_receive_lines_first() -> None:
    assert kinds_and_directions("chromium_v1_publishing_offer.sdp") == [("audio", "recvonly")] * 3 + [
        ("video", "recvonly")] * 3 + [("application", "sendrecv"), ("audio", "sendonly"), ("video", "sendonly")]


@pytest.mark.parametrize("client", ["chromium", "python_sdk"])
def test_subscriber_answer_matches_the_offer_sent(client: str) -> None:
    offer = f"{client}_subscriber_offer_sent.sdp"
    answer = f"{client}_subscriber_answer.sdp"
    assert kinds_and_directions(answer) == [
        ("audio", "recvonly"), ("video", "recvonly"), ("application", "sendrecv"),
    ]

    def mids(name: str) -> list[str]:
        return [line for line in lines(name) if line.startswith("a=mid:")]

    assert mids(answer) == mids(offer)
    # The offer said actpass, so the client picked a role; libwebrtc picks active.
    assert {line for line in lines(answer) if line.startswith("a=setup:")} == {"a=setup:active"}
