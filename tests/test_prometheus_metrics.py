"""`/metrics` (trio_sfu.api.prometheus) against the real server, read with prometheus_client's parser.

The media test runs the server's real media stack on loopback with two of our clients, one
publishing audio and simulcast video, the other subscribed, and scrapes `/metrics` over HTTP
twice while media flows: LiveKit's packet counters rise in both directions, the room, its
participants and tracks are counted, the node-wide totals agree with each other, counters never
go down, the forwarding latency histogram has samples, and no label names a room, participant or
track. The access tests check who may read it: an API key pair as basic auth, a token with
`roomList`, loopback clients in development; 401 without credentials, 403 for a token without
the grant, 404 when disabled; and the separate `prometheus.port` listener.
"""

from __future__ import annotations

import base64
import socket

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import server_fixtures
from server_fixtures import API_KEY, API_SECRET, http, make_config, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.config import ConfigError, config_from_mapping
from trio_sfu.metrics import Histogram

ROOM = "metrics-room-xyzzy"
ALLOWED_LABELS = {"direction", "transmission", "kind", "period", "state", "le"}


def basic(user: str, password: str) -> tuple[str, str]:
    return ("authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


async def scrape(port: int, headers: list[tuple[str, str]] | None = None) -> dict[tuple[str, tuple], float]:
    """GET /metrics (with the API key pair unless `headers` are given); every sample by (name, sorted labels)."""
    if headers is None:
        headers = [basic(API_KEY, API_SECRET)]
    status, hdrs, body, _ = await http(port, "GET", "/metrics", headers)
    assert status == 200, body
    assert hdrs["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def until(condition, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_metrics_scraped_during_media_show_packet_counters_rising() -> None:
    async with server_fixtures.media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("sub", ROOM)) as subscriber, \
                LiveKitClient.connect(server.url, mint_token("pub", ROOM)) as publisher:
            await subscriber.wait_connected(timeout=10)
            audio = await publisher.publish_audio()
            video = await publisher.publish_video(width=640, height=360, bitrate=600_000, simulcast=True)
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, audio, 60.0)
                senders.start_soon(send_synthetic_video, video, 60.0)
                tracks = []
                with trio.fail_after(15):
                    async for track in subscriber.tracks():
                        tracks.append(track)
                        if len(tracks) == 2:
                            break
                    for track in tracks:
                        await track.first_packet.wait()
                first = await scrape(server.port)
                # Wait on what arrived, never on the clock: 200 more packets of media at the
                # subscriber (a video receiver sampling one packet in 64 has timed some by then).
                received = sum(t.stats.packets for t in tracks)
                await until(lambda: sum(t.stats.packets for t in tracks) >= received + 200)
                second = await scrape(server.port)
                senders.cancel_scope.cancel()
            participants = {subscriber.participant_sid, publisher.participant_sid}
            track_sids = {audio.sid, video.sid}

    for direction in ("incoming", "outgoing"):
        before = value(first, "livekit_packet_total", direction=direction, transmission="initial")
        after = value(second, "livekit_packet_total", direction=direction, transmission="initial")
        assert 0 < before < after, (direction, before, after)
        assert value(first, "livekit_packet_bytes", direction=direction) < value(
            second, "livekit_packet_bytes", direction=direction)
    # The subscriber got 200 packets between the scrapes; the server sent it at least those.
    assert value(second, "livekit_packet_total", direction="outgoing", transmission="initial") - value(
        first, "livekit_packet_total", direction="outgoing", transmission="initial") >= 200
    assert value(second, "livekit_room_total") == 1
    assert value(second, "livekit_participant_total") == 2
    for kind in ("AUDIO", "VIDEO"):
        assert value(second, "livekit_track_published_total", kind=kind) == 1
        assert value(second, "livekit_track_subscribed_total", kind=kind) == 1
    # LiveKit's names and ours read the same node-wide totals.
    incoming = sum(value(second, "livekit_packet_total", direction="incoming", transmission=t)
                   for t in ("initial", "retransmit"))
    assert value(second, "trio_sfu_media_receiver_packets_total") == incoming
    assert value(second, "trio_sfu_media_downtrack_packets_sent_total") == value(
        second, "livekit_packet_total", direction="outgoing", transmission="initial")
    assert value(second, "trio_sfu_udp_datagrams_received_total") >= incoming
    assert value(second, "trio_sfu_media_tracks_published_total") == 2
    # The forwarding latency: sampled packets, buckets cumulative, in seconds.
    count = value(second, "trio_sfu_forward_latency_seconds_count")
    assert count >= 1
    buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in second.items()
                      if name == "trio_sfu_forward_latency_seconds_bucket"))
    assert buckets[-1] == (float("inf"), count)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert 0 < value(second, "trio_sfu_forward_latency_seconds_sum") < count  # well under a second each
    assert value(second, "process_resident_memory_bytes") > 0
    # Counters only go up from one scrape to the next.
    for (name, labels), before in first.items():
        if name.endswith("_total") and (name, labels) in second and not name.startswith(("livekit_room",
                                                                                          "livekit_participant",
                                                                                          "livekit_track_")):
            assert second[(name, labels)] >= before, (name, labels)
    # Bounded cardinality: labels from fixed sets only, and nothing names a room, a participant or a track.
    for samples in (first, second):
        names = {ROOM, "sub", "pub", *participants, *track_sids}
        for (name, labels) in samples:
            assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)
            assert not any(v in names for _, v in labels), (name, labels)
            assert ROOM not in name
    # The same series in both scrapes, but for counters first bumped in between (an error path).
    assert {k for k in first if k[0].startswith("livekit_")} == {k for k in second if k[0].startswith("livekit_")}


async def test_metrics_need_an_api_key_pair_or_a_room_list_token() -> None:
    async with server_fixtures.running_server() as server:
        port = server.port
        status, hdrs, body, _ = await http(port, "GET", "/metrics")
        assert status == 401 and hdrs["www-authenticate"].startswith("Basic")
        for refused in ([basic(API_KEY, "wrong")], [basic("nokey", API_SECRET)], [("authorization", "Basic !!")],
                        [("authorization", "Bearer not-a-jwt")], [("authorization", "Digest x")]):
            assert (await http(port, "GET", "/metrics", refused))[0] == 401, refused
        # A valid token, but only to join a room: authenticated, not allowed.
        status, _, body, _ = await http(port, "GET", "/metrics", [("authorization", f"Bearer {mint_token('x')}")])
        assert status == 403 and b"roomList" in body
        assert server.metrics.get("auth_failed_total") == 7

        samples = await scrape(port)
        assert value(samples, "livekit_room_total") == 0
        assert value(samples, "trio_sfu_auth_failed_total") == 7
        admin = mint_token("ops", "", room_list=True, room_join=False)
        assert await scrape(port, [("authorization", f"Bearer {admin}")])
        status, _, body, _ = await http(port, "HEAD", "/metrics", [basic(API_KEY, API_SECRET)])
        assert status == 200 and body == b""
        status, hdrs, _, _ = await http(port, "POST", "/metrics", [basic(API_KEY, API_SECRET)])
        assert status == 405 and hdrs["allow"] == "GET, HEAD"
        # The health answer tools expect is unchanged.
        assert (await http(port, "GET", "/"))[2] == b"OK"


async def test_development_opens_metrics_to_loopback_and_disabled_metrics_are_not_found() -> None:
    config = make_config()
    config.development = True
    async with server_fixtures.running_server(config) as server:
        # The test's client connects from 127.0.0.1.
        assert value(await scrape(server.port, []), "livekit_participant_total") == 0
    config = make_config()
    config.prometheus.enabled = False
    async with server_fixtures.running_server(config) as server:
        status, _, _, _ = await http(server.port, "GET", "/metrics", [basic(API_KEY, API_SECRET)])
        assert status == 404


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_metrics_port_of_its_own_serves_only_metrics() -> None:
    config = make_config()
    config.prometheus.port = free_port()
    async with server_fixtures.running_server(config) as server:
        assert server.metrics_port == config.prometheus.port
        # Open, as LiveKit's metrics port is without a username and password...
        assert value(await scrape(server.metrics_port, []), "livekit_room_total") == 0
        status, _, _, _ = await http(server.metrics_port, "GET", "/twirp/livekit.RoomService/ListRooms")
        assert status == 404
        # ...while the HTTP port still wants credentials.
        assert (await http(server.port, "GET", "/metrics"))[0] == 401
    config = make_config()
    config.prometheus.port = free_port()
    config.prometheus.username, config.prometheus.password = "prom", "scraper-secret"
    async with server_fixtures.running_server(config) as server:
        assert (await http(server.metrics_port, "GET", "/metrics"))[0] == 401
        assert (await http(server.metrics_port, "GET", "/metrics", [basic(API_KEY, API_SECRET)]))[0] == 401
        assert await scrape(server.metrics_port, [basic("prom", "scraper-secret")])
        # The HTTP port takes that pair too.
        assert await scrape(server.port, [basic("prom", "scraper-secret")])


def test_prometheus_config_section() -> None:
    config, warnings = config_from_mapping({"prometheus": {"port": 6789, "username": "u", "password": "p"}})
    assert (config.prometheus.enabled, config.prometheus.port, config.prometheus.username,
            config.prometheus.password) == (True, 6789, "u", "p") and warnings == []
    config, _ = config_from_mapping({"prometheus_port": 6790})  # LiveKit's older key
    assert config.prometheus.port == 6790
    config, _ = config_from_mapping({"prometheus_port": 1, "prometheus": {"port": 2}})
    assert config.prometheus.port == 2  # the section wins, as in LiveKit
    config, _ = config_from_mapping({"prometheus": {"enabled": False}})
    assert config.prometheus.enabled is False
    with pytest.raises(ConfigError, match="prometheus.username"):
        config_from_mapping({"prometheus": {"username": "u"}})
    with pytest.raises(ConfigError, match="prometheus.port"):
        config_from_mapping({"prometheus": {"port": 70000}})
    with pytest.raises(ConfigError, match="prometheus.enabled"):
        config_from_mapping({"prometheus": {"enabled": "yes"}})


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    histogram = Histogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.5):
        histogram.observe(seconds)
    assert histogram.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(0.5035)
    with pytest.raises(ValueError):
        Histogram((0.01, 0.001))


def test_a_counter_read_from_live_objects_never_goes_down() -> None:
    """A node-wide total can dip for a moment (a track handed to the relay while its participant
    moves is neither live in a room nor folded yet; a layer's loss restarts with its SSRC):
    the collector reports the highest value it reported before, as a Prometheus counter must."""
    from trio_sfu.api.prometheus import ServerCollector
    from trio_sfu.metrics import Metrics
    from trio_sfu.signal.rooms import RoomRegistry
    from trio_sfu.signal.media_port import UnavailableMediaSession

    metrics = Metrics()
    collector = ServerCollector(metrics, RoomRegistry(make_config().room, metrics, UnavailableMediaSession), None)
    readings = [collector._counter("livekit_packet_loss_total", "", ["direction"], [(("incoming",), v)])
                for v in (5, 3, 7)]
    assert [family.samples[0].value for family in readings] == [5, 5, 7]
