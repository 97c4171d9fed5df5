"""A `livekit` Python SDK participant meets an agent dispatched by trio-sfu to a real
`livekit-agents` worker (tests/e2e/agent_worker.py): the agent joins as kind AGENT with
LiveKit's `lk.agent_name` attribute, the participant hears its 440 Hz tone (Goertzel energy at
440 Hz against 1 kHz in the decoded audio) and gets its data echoed.

--dispatch auto    the room gets the automatic dispatch (a worker without an agent name)
--dispatch token   the participant's token asks for --agent-name in roomConfig.agents
--dispatch api     AgentDispatchService.CreateDispatch before the join; ListDispatch shows the
                   job; DeleteDispatch at the end makes the agent leave
--follow-agent     after the first agent is checked, print {"agent": ...} and wait for a
                   different agent (the test kills the first one's worker) and check it too

Prints JSON lines on stdout; the last one is {"summary": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys

import numpy as np
from livekit import api, rtc

SAMPLE_RATE = 48000
TONE_HZ = 440.0


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


def goertzel(samples: np.ndarray, freq: float) -> float:
    """Energy of `samples` at `freq` (one Goertzel bin)."""
    coeff = 2 * math.cos(2 * math.pi * freq / SAMPLE_RATE)
    s1 = s2 = 0.0
    for x in samples.astype(np.float64):
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


async def until(predicate, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class Participant:
    def __init__(self) -> None:
        self.room = rtc.Room()
        self.audio: dict[str, rtc.Track] = {}  # participant sid -> its audio track
        self.echoes: list[tuple[str, str]] = []
        self.left: set[str] = set()

    def agents(self) -> list[rtc.RemoteParticipant]:
        return [p for p in self.room.remote_participants.values()
                if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT]


async def check_agent(side: Participant, agent: rtc.RemoteParticipant, nonce: str) -> dict[str, object]:
    """Hear the agent's tone and get a message echoed by it."""
    report: dict[str, object] = {"identity": agent.identity, "sid": agent.sid,
                                 "kind": int(agent.kind), "attributes": dict(agent.attributes)}
    report["has_audio"] = await until(lambda: agent.sid in side.audio, 20)
    if report["has_audio"]:
        stream = rtc.AudioStream(side.audio[agent.sid], sample_rate=SAMPLE_RATE, num_channels=1)
        chunks: list[np.ndarray] = []
        async def read() -> None:
            async for event in stream:
                chunks.append(np.frombuffer(event.frame.data, dtype=np.int16))
                if sum(len(c) for c in chunks) >= SAMPLE_RATE * 2:
                    return
        try:
            await asyncio.wait_for(read(), 15)
        except asyncio.TimeoutError:
            pass
        await stream.aclose()
        if chunks:
            # The last second: past the jitter buffer's start-up.
            samples = np.concatenate(chunks)[-SAMPLE_RATE:]
            tone, off = goertzel(samples, TONE_HZ), goertzel(samples, 1000.0)
            report["tone_energy"], report["off_energy"] = tone, off
            report["rms"] = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    message = f"hello-{nonce}"
    for _ in range(5):
        await side.room.local_participant.publish_data(message.encode(), reliable=True,
                                                       destination_identities=[agent.identity])
        if await until(lambda: (agent.identity, "echo:" + message) in side.echoes, 3):
            break
    report["echoed"] = (agent.identity, "echo:" + message) in side.echoes
    return report


async def run(args: argparse.Namespace) -> dict[str, object]:
    summary: dict[str, object] = {}
    lkapi = api.LiveKitAPI(args.url.replace("ws://", "http://"), args.api_key, args.api_secret)
    try:
        if args.dispatch == "api":
            dispatch = await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                agent_name=args.agent_name, room=args.room, metadata="from-the-api"))
            summary["dispatch"] = {"id": dispatch.id, "agent_name": dispatch.agent_name, "room": dispatch.room}
        side = Participant()

        def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                          participant: rtc.RemoteParticipant) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                side.audio[participant.sid] = track

        def on_data(packet: rtc.DataPacket) -> None:
            if packet.participant is not None:
                side.echoes.append((packet.participant.identity, packet.data.decode(errors="replace")))

        side.room.on("track_subscribed", on_subscribed)
        side.room.on("data_received", on_data)
        side.room.on("participant_disconnected", lambda p: side.left.add(p.sid))
        token = (api.AccessToken(args.api_key, args.api_secret).with_identity("human")
                 .with_grants(api.VideoGrants(room_join=True, room=args.room)))
        if args.dispatch == "token":
            token = token.with_room_config(api.RoomConfiguration(
                agents=[api.RoomAgentDispatch(agent_name=args.agent_name, metadata="from-the-token")]))
        await side.room.connect(args.url, token.to_jwt(), rtc.RoomOptions(auto_subscribe=True))
        summary["joined"] = True
        if not await until(lambda: side.agents(), 30):
            summary["error"] = "no agent joined"
            return summary
        first = side.agents()[0]
        summary["first"] = await check_agent(side, first, "1")
        if args.dispatch == "api":
            listed = await lkapi.agent_dispatch.list_dispatch(room_name=args.room)
            summary["listed"] = [{"id": d.id, "agent_name": d.agent_name,
                                  "jobs": [{"id": j.id, "status": int(j.state.status),
                                            "identity": j.state.participant_identity} for j in d.state.jobs]}
                                 for d in listed]
        if args.follow_agent:
            say(agent={"sid": first.sid, "identity": first.identity,
                       "worker_pid": first.attributes.get("worker_pid", "")})
            if not await until(lambda: any(a.sid != first.sid for a in side.agents()), 60):
                summary["error"] = "no second agent joined"
                return summary
            second = next(a for a in side.agents() if a.sid != first.sid)
            summary["second"] = await check_agent(side, second, "2")
            summary["first_left"] = first.sid in side.left or first.sid not in {
                a.sid for a in side.agents()}
        if args.dispatch == "api":
            dispatch_id = summary["dispatch"]["id"]  # type: ignore[index]
            deleted = await lkapi.agent_dispatch.delete_dispatch(dispatch_id, args.room)
            summary["deleted"] = deleted.id
            summary["agent_left_after_delete"] = await until(lambda: not side.agents(), 20)
        await side.room.disconnect()
        return summary
    finally:
        await lkapi.aclose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="agents-room")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--dispatch", choices=("auto", "token", "api"), default="auto")
    parser.add_argument("--agent-name", default="")
    parser.add_argument("--follow-agent", action="store_true")
    args = parser.parse_args()
    try:
        summary = asyncio.run(asyncio.wait_for(run(args), 150))
    except Exception as exc:  # the test prints this with the logs
        summary = {"error": f"{exc.__class__.__name__}: {exc}"}
    say(summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
