"""A participant's failure inside its connection is that participant's error, not the run's end.

An error raised while the client is connected (here: a publication the client gives up on)
leaves the client's nursery inside an exception group. The load tester must count it for that
participant and go on with the others; it used to catch only a bare ClientError, so the group
ended the whole run. The fault is injected into the real client's publish call; the server, the
other participants and their media are real.
"""

from __future__ import annotations

import io

import trio

import server_fixtures
from server_fixtures import API_KEY, API_SECRET
from trio_sfu.client import ClientError, LiveKitClient
from trio_sfu.client.loadtest import LoadTest, LoadTestParams


async def test_a_refused_publication_is_counted_and_the_run_goes_on(monkeypatch) -> None:
    publish_audio = LiveKitClient.publish_audio

    async def refused_for_pub_1(self, *args, **kwargs):
        if self.identity == "pub_1":
            raise ClientError("publishing 'audio' refused: injected")
        return await publish_audio(self, *args, **kwargs)

    monkeypatch.setattr(LiveKitClient, "publish_audio", refused_for_pub_1)
    async with server_fixtures.media_server() as server:
        params = LoadTestParams(url=server.url, api_key=API_KEY, api_secret=API_SECRET, room="errors",
                                video_publishers=1, audio_publishers=2, subscribers=1, duration=2.0,
                                video_bitrate=300_000, width=640, height=360, num_per_second=20)
        with trio.fail_after(30):
            summary = await LoadTest(params, progress=io.StringIO()).run()
    publishers = {p["identity"]: p for p in summary["publishers"]}
    assert publishers["pub_1"]["errors"] == ["publishing 'audio' refused: injected"]
    assert publishers["pub_0"]["errors"] == [] and summary["totals"]["errors"] == 1
    # The others went on: pub_0's video and audio reached the subscriber.
    (subscriber,) = summary["subscribers"]
    assert subscriber["errors"] == [] and subscriber["tracks_received"] == 2 and subscriber["packets"] > 0
