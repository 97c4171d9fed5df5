"""Join a LiveKit URL with the `livekit` Python SDK and publish one audio and one
video track (SDK default publish options, so simulcast is whatever the SDK picks).

usage: python drive_python_sdk.py <livekit-ws-url> <timeout-s>
Stays connected until stdin closes or the timeout passes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from livekit import rtc


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def wait_for_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def join_and_publish(url: str) -> None:
    room = rtc.Room()
    # The fake server does not verify tokens.
    await room.connect(url, "capture-token-not-verified")
    say(connected=True, sid=await room.sid)
    audio = rtc.AudioSource(48000, 1)
    video = rtc.VideoSource(640, 480)
    audio_track = rtc.LocalAudioTrack.create_audio_track("mic", audio)
    video_track = rtc.LocalVideoTrack.create_video_track("camera", video)
    mic = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    cam = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    # Publish concurrently: each publish waits on its own negotiation.
    results = await asyncio.gather(
        room.local_participant.publish_track(audio_track, mic),
        room.local_participant.publish_track(video_track, cam),
        return_exceptions=True,
    )
    say(published=[repr(r) for r in results])
    await wait_for_stdin_eof()
    await room.disconnect()


async def main(url: str, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(join_and_publish(url), timeout_s)
    except Exception as exc:  # reported, not raised: the capture judges by the SDP it got
        say(error=repr(exc))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    say(livekit=rtc.__version__)
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
