"""``trio-sfu load-test --workers N``: participants spread over worker processes, one summary.

A small scenario against the project's server with its real media stack on loopback, run by two
spawned workers: everyone joins one room (a worker's subscribers receive the publisher of the
other worker), and the merged totals are the sums of the workers' own counts.
"""

from __future__ import annotations

import pytest
import trio

import server_fixtures
from server_fixtures import API_KEY, API_SECRET
from trio_sfu.client.loadtest import LoadTestParams
from trio_sfu.client.loadtest_workers import run_workers, split_params


def _params(url: str = "ws://127.0.0.1:1", **changes) -> LoadTestParams:
    base = dict(url=url, api_key=API_KEY, api_secret=API_SECRET, room="workers", video_publishers=1,
                audio_publishers=1, subscribers=3, duration=2.5, video_bitrate=300_000, width=640, height=360,
                num_per_second=20)
    return LoadTestParams(**(base | changes))


def test_split_deals_participants_round_the_workers() -> None:
    params = _params(video_publishers=3, audio_publishers=1, subscribers=5)
    shares = split_params(params, 2)
    assert [(s.video_publishers, s.audio_publishers, s.subscribers) for s in shares] == [(2, 1, 3), (1, 0, 2)]
    assert [s.identity_prefix for s in shares] == ["w0_", "w1_"]
    # Every subscriber expects every track of the room, not only its own worker's.
    assert {(s.room_publishers, s.room_tracks, s.tracks_expected) for s in shares} == {(3, 4, 4)}
    assert sum(s.num_per_second for s in shares) == params.num_per_second
    with pytest.raises(ValueError, match="exceed the participants"):
        split_params(_params(video_publishers=1, audio_publishers=0, subscribers=1), 3)


async def test_two_workers_totals_are_the_sums_of_their_counts() -> None:
    async with server_fixtures.media_server() as server:
        params = _params(server.url)
        with trio.fail_after(120):
            summary = await trio.to_thread.run_sync(lambda: run_workers(params, 2, progress=None))
    assert summary["workers_without_summary"] == 0
    assert summary["joined"] == summary["participants"] == 4
    workers = summary["workers"]
    assert len(workers) == 2
    totals = summary["totals"]
    assert totals["errors"] == 0, summary
    for key in ("packets_sent", "packets_received", "packets_lost", "packets_expected"):
        assert totals[key] == sum(w[key] for w in workers), key
    # The publisher is in worker 0; both workers' subscribers received from it.
    assert workers[0]["packets_sent"] > 0 and workers[1]["packets_sent"] == 0
    assert all(w["packets_received"] > 0 for w in workers)
    assert sorted(s["identity"] for s in summary["subscribers"]) == ["w0_sub_0", "w0_sub_1", "w1_sub_0"]
    for subscriber in summary["subscribers"]:
        assert subscriber["tracks_received"] == subscriber["tracks_expected"] == 2, subscriber
    assert totals["packets_received"] == sum(s["packets"] for s in summary["subscribers"])
    assert sum(t["packets"] for t in summary["tracks"]) == totals["packets_received"]
    for track in summary["tracks"]:
        assert track["publisher"] == "w0_pub_0" and track["subscribers"] == 3
    assert totals["latency_ms_p50"] is not None and totals["latency_ms_p50"] <= totals["latency_ms_p99"]
