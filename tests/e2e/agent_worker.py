"""A minimal `livekit-agents` worker, run by tests/e2e/test_e2e_agents.py in its own venv.

Usage: python agent_worker.py URL API_KEY API_SECRET [AGENT_NAME]

No AI plugins: its job's entrypoint joins the room, publishes a 440 Hz tone and echoes every
data message back to its sender (prefixed "echo:"). The worker accepts each job with the
attribute `worker_pid` (this process), so a test knows which worker an agent came from. Jobs
run in a thread of this process (JobExecutorType.THREAD): killing the process kills its agents
with it, as a crashed machine would. Prints "registered <worker id>" once registered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys

import numpy as np
from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest

SAMPLE_RATE = 48000
TONE_HZ = 440.0
FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms


def main() -> None:
    url, api_key, api_secret = sys.argv[1:4]
    agent_name = sys.argv[4] if len(sys.argv) > 4 else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    server = AgentServer(
        ws_url=url, api_key=api_key, api_secret=api_secret,
        job_executor_type=JobExecutorType.THREAD,
        num_idle_processes=0,
        port=0, host="127.0.0.1",
        load_threshold=math.inf,
        max_retry=3,
    )

    async def on_request(request: JobRequest) -> None:
        await request.accept(attributes={"worker_pid": str(os.getpid())})

    @server.rtc_session(agent_name=agent_name, on_request=on_request)
    async def entrypoint(ctx: JobContext) -> None:
        await ctx.connect()
        room = ctx.room

        def on_data(packet: rtc.DataPacket) -> None:
            if packet.participant is None:
                return
            asyncio.ensure_future(room.local_participant.publish_data(
                b"echo:" + packet.data, reliable=True, topic=packet.topic or "",
                destination_identities=[packet.participant.identity]))

        room.on("data_received", on_data)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        t = np.arange(FRAME_SAMPLES) / SAMPLE_RATE
        n = 0
        while room.isconnected():
            phase = 2 * math.pi * TONE_HZ * (n * FRAME_SAMPLES / SAMPLE_RATE)
            samples = (0.5 * 32767 * np.sin(2 * math.pi * TONE_HZ * t + phase)).astype(np.int16)
            frame = rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, FRAME_SAMPLES)
            await source.capture_frame(frame)
            n += 1

    server.on("worker_registered", lambda worker_id, info: print(f"registered {worker_id}", flush=True))
    asyncio.run(server.run())


if __name__ == "__main__":
    main()
