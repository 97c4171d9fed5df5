"""Server API moderation seen by real clients: two `livekit` Python SDK participants (real
libwebrtc) and livekit-api's `LiveKitAPI`, all in this process, against a LiveKit URL.

    python api_moderation_scenario.py --url ws://127.0.0.1:PORT --room R

alice publishes a microphone (a sine); bob subscribes. Then, through the Server API:
MutePublishedTrack mutes alice's track (bob's SDK must report the remote publication muted,
alice's SDK its local one); UpdateParticipant revokes alice's can_publish (bob's SDK must report
`track_unpublished` for her publication and list none left for her, alice's SDK must report
`participant_permissions_changed` for herself with can_publish false, while she stays
connected); RemoveParticipant then removes alice (her SDK must report `disconnected` with
PARTICIPANT_REMOVED, bob's `participant_disconnected`).

Output: JSON lines; the last one is {"summary": ...}. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import struct
import sys
import time

from livekit import api, rtc

SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def feed_audio(source: rtc.AudioSource) -> None:
    samples = [int(8000 * math.sin(2 * math.pi * 500 * i / SAMPLE_RATE)) for i in range(FRAME_SAMPLES)]
    frame = rtc.AudioFrame(struct.pack(f"<{FRAME_SAMPLES}h", *samples), SAMPLE_RATE, 1, FRAME_SAMPLES)
    while True:
        await source.capture_frame(frame)


async def until(predicate, timeout: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


def token(args: argparse.Namespace, identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room=args.room)
    return api.AccessToken(args.api_key, args.api_secret).with_identity(identity).with_grants(grants).to_jwt()


async def run(args: argparse.Namespace) -> dict[str, object]:
    summary: dict[str, object] = {"phases": {}}
    phases: dict[str, object] = summary["phases"]  # type: ignore[assignment]
    alice, bob = rtc.Room(), rtc.Room()
    alice_reasons: list[int] = []
    bob_saw_gone: list[str] = []
    bob_saw_muted: list[str] = []
    alice.on("disconnected", lambda reason: alice_reasons.append(int(reason)))
    bob.on("participant_disconnected", lambda p: bob_saw_gone.append(p.identity))
    bob.on("track_muted", lambda p, pub: bob_saw_muted.append(f"{p.identity}/{pub.sid}"))
    bob_saw_unpublished: list[str] = []
    bob.on("track_unpublished", lambda pub, p: bob_saw_unpublished.append(f"{p.identity}/{pub.sid}"))
    # (identity, can_publish, can_subscribe, can_publish_data) per permission event alice's SDK reports
    alice_saw_permissions: list[tuple[str, bool, bool, bool]] = []
    alice.on(
        "participant_permissions_changed",
        lambda p, perm: alice_saw_permissions.append(
            (p.identity, perm.can_publish, perm.can_subscribe, perm.can_publish_data)
        ),
    )
    alice_saw_local_unpublished: list[str] = []
    alice.on("local_track_unpublished", lambda pub: alice_saw_local_unpublished.append(pub.sid))
    feeder: asyncio.Task[None] | None = None
    lkapi = api.LiveKitAPI(args.url.replace("ws://", "http://"), args.api_key, args.api_secret)
    try:
        await asyncio.wait_for(alice.connect(args.url, token(args, "alice")), args.timeout)
        await asyncio.wait_for(bob.connect(args.url, token(args, "bob")), args.timeout)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        feeder = asyncio.ensure_future(feed_audio(source))
        mic = rtc.LocalAudioTrack.create_audio_track("mic", source)
        pub = await asyncio.wait_for(
            alice.local_participant.publish_track(mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)),
            args.timeout,
        )
        sid = pub.sid

        def bob_publication() -> rtc.RemoteTrackPublication | None:
            remote = bob.remote_participants.get("alice")
            return remote.track_publications.get(sid) if remote else None

        ok = await until(lambda: bob_publication() is not None and bob_publication().track is not None, args.timeout)
        phases["join"] = {"ok": ok, "track_sid": sid}
        say(phase="join", ok=ok)
        if not ok:
            return summary

        muted = await lkapi.room.mute_published_track(
            api.MuteRoomTrackRequest(room=args.room, identity="alice", track_sid=sid, muted=True)
        )
        remote_muted = await until(lambda: bool(bob_publication() and bob_publication().muted), args.timeout)
        local_muted = await until(lambda: pub.muted, args.timeout)
        event_seen = await until(lambda: f"alice/{sid}" in bob_saw_muted, args.timeout)
        phases["mute"] = {
            "ok": muted.track.muted and remote_muted and local_muted and event_seen,
            "api_says_muted": muted.track.muted,
            "bob_sees_muted": remote_muted,
            "bob_track_muted_events": bob_saw_muted,
            "alice_local_muted": local_muted,
        }
        say(phase="mute", **phases["mute"])  # type: ignore[arg-type]

        revoked = await lkapi.room.update_participant(
            api.UpdateParticipantRequest(
                room=args.room,
                identity="alice",
                permission=api.ParticipantPermission(can_publish=False, can_subscribe=True, can_publish_data=True),
            )
        )

        def bob_alice_publications() -> list[str] | None:
            remote = bob.remote_participants.get("alice")
            return sorted(remote.track_publications) if remote else None

        # One budget for the three waits so a failing phase still leaves time for the summary.
        revoke_deadline = time.monotonic() + args.timeout
        left = lambda: max(0.0, revoke_deadline - time.monotonic())  # noqa: E731
        bob_event = await until(lambda: f"alice/{sid}" in bob_saw_unpublished, left())
        bob_none_left = await until(lambda: bob_alice_publications() == [], left())
        alice_event = await until(lambda: any(e[0] == "alice" and not e[1] for e in alice_saw_permissions), left())
        local_perm = alice.local_participant.permissions
        phases["revoke"] = {
            "ok": (
                not revoked.permission.can_publish
                and bob_event
                and bob_none_left
                and alice_event
                and not local_perm.can_publish
                and local_perm.can_subscribe
                and local_perm.can_publish_data
                and alice.connection_state == rtc.ConnectionState.CONN_CONNECTED
                and not alice_reasons
            ),
            "api_says_can_publish": revoked.permission.can_publish,
            "bob_track_unpublished_events": list(bob_saw_unpublished),
            "bob_alice_publications_after": bob_alice_publications(),
            "alice_permission_events": list(alice_saw_permissions),
            "alice_local_permission": {
                "can_publish": local_perm.can_publish,
                "can_subscribe": local_perm.can_subscribe,
                "can_publish_data": local_perm.can_publish_data,
            },
            # Observed, not required: whether alice's SDK drops her own publication too (copies,
            # so the summary shows the state at this point, not after RemoveParticipant).
            "alice_local_track_unpublished_events": list(alice_saw_local_unpublished),
            "alice_local_publications_after": sorted(alice.local_participant.track_publications),
            "alice_connected": alice.connection_state == rtc.ConnectionState.CONN_CONNECTED,
        }
        say(phase="revoke", **phases["revoke"])  # type: ignore[arg-type]
        if not phases["revoke"]["ok"]:  # type: ignore[index]
            return summary

        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=args.room, identity="alice"))
        alice_gone = await until(lambda: bool(alice_reasons), args.timeout)
        bob_notified = await until(lambda: "alice" in bob_saw_gone, args.timeout)
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=args.room))
        phases["remove"] = {
            "ok": alice_gone and bob_notified and alice_reasons[:1] == [rtc.DisconnectReason.PARTICIPANT_REMOVED],
            "alice_disconnect_reasons": alice_reasons,
            "bob_saw_participant_disconnected": bob_notified,
            "listed_after": sorted(p.identity for p in listed.participants),
        }
        say(phase="remove", **phases["remove"])  # type: ignore[arg-type]
        return summary
    finally:
        if feeder is not None:
            feeder.cancel()
        await lkapi.aclose()
        for room in (alice, bob):
            try:
                await asyncio.wait_for(room.disconnect(), 5)
            except Exception:
                pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="e2e-api")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    try:
        summary = asyncio.run(run(args))
    except Exception as exc:
        summary = {"phases": {}, "error": f"{type(exc).__name__}: {exc}"}
    say(summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
