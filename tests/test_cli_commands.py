"""`trio-sfu token|room|join` against a running in-process server.

The commands run as they ship: parsed by `trio_sfu.cli.build_parser` and run by
`trio_sfu.client.commands.run_command` in a worker thread (its own `trio.run`, as `main` does), or
as a real `python -m trio_sfu.cli` subprocess where the process boundary is the point (exit
codes, Ctrl-C, `join` running until stopped). What they did is checked on the server itself
(its rooms and participants), with PyJWT and the server's own verifier (tokens), and with an
independent decoder (the demo's video and tone, decoded by libvpx and libopus via aiortc/PyAV).
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jwt
import pytest
import trio

from server_fixtures import API_KEY, API_SECRET, http_base, media_config, media_server, mint_token
from rtp.packet import payload_offset, read_ssrc
from trio_sfu.api.auth import TokenVerifier
from trio_sfu.cli import build_parser, main
from trio_sfu.client import LiveKitClient
from trio_sfu.client.commands import run_command
from trio_sfu.client.demo_media import MovingPicture, vp8_payloads
from trio_sfu.client.server_api import RoomServiceClient, ServerUnreachable
from trio_sfu.client.synthetic import is_vp8_keyframe
from trio_sfu.client.tokens import TokenError, parse_duration, parse_grants
from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET

KEYS = ["--api-key", API_KEY, "--api-secret", API_SECRET]


async def cli(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run one command as `trio-sfu` would, in a worker thread: (exit code, stdout, stderr)."""
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = await trio.to_thread.run_sync(run_command, args, environ or {}, out, err)
    return code, out.getvalue(), err.getvalue()


def subprocess_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "trio_sfu.cli", *argv]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
    return env


async def read_all(stream) -> bytes:
    """What is left on a finished process's pipe."""
    assert stream is not None
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


# ---------------------------------------------------------------------- token


async def test_token_create_decodes_with_the_grants_asked_for() -> None:
    code, out, err = await cli("token", "create", *KEYS, "--room", "r1", "--identity", "alice", "--name", "Alice",
                               "--grant", "join,admin", "--grant", "no-publish-data", "--grant", "hidden",
                               "--allow-source", "camera,microphone", "--attribute", "team=blue",
                               "--valid-for", "1h30m")
    assert (code, err) == (0, "")
    token = out.strip()
    assert "\n" not in token
    claims = jwt.decode(token, API_SECRET, algorithms=["HS256"])
    assert claims["iss"] == API_KEY and claims["sub"] == "alice" and claims["name"] == "Alice"
    assert claims["exp"] - claims["nbf"] == 5400 and abs(claims["nbf"] - time.time()) < 60
    assert claims["attributes"] == {"team": "blue"}
    assert claims["video"] == {"roomJoin": True, "roomAdmin": True, "canPublishData": False, "hidden": True,
                               "room": "r1", "canPublishSources": ["camera", "microphone"]}
    grants = TokenVerifier({API_KEY: API_SECRET}).verify(token)
    assert grants.identity == "alice" and grants.name == "Alice"
    video = grants.video
    assert video is not None
    assert (video.room_join, video.room_admin, video.room, video.hidden) == (True, True, "r1", True)
    assert video.may_publish and video.may_subscribe and not video.may_publish_data
    assert video.can_publish_sources == ("camera", "microphone")
    assert not video.room_create and not video.room_list


async def test_token_create_defaults_to_join_and_the_dev_keys_and_the_token_joins() -> None:
    code, out, _ = await cli("token", "create", "--room", "r1", "--identity", "bob")
    assert code == 0
    grants = TokenVerifier({DEV_API_KEY: DEV_API_SECRET}).verify(out.strip())
    assert grants.api_key == DEV_API_KEY and grants.video is not None
    assert grants.video.room_join and grants.video.room == "r1" and not grants.video.room_admin
    assert grants.expires_at - time.time() == pytest.approx(6 * 3600, abs=60)

    # LIVEKIT_API_KEY/SECRET stand in for the flags; the token joins a real server as `carol`.
    code, out, _ = await cli("token", "create", "--room", "room1", "--identity", "carol", "--grant",
                             '{"canSubscribe": false}', environ={"LIVEKIT_API_KEY": API_KEY,
                                                                 "LIVEKIT_API_SECRET": API_SECRET})
    assert code == 0
    async with media_server() as server:
        async with LiveKitClient.connect(server.url, out.strip()) as client:
            assert client.identity == "carol" and client.room_name == "room1"
            joined = server.registry.rooms["room1"].participants["carol"]
            assert joined.grants.video is not None and not joined.grants.video.may_subscribe


async def test_token_create_refuses_what_makes_no_sense() -> None:
    for argv, words in (
        (["--room", "r"], "needs --identity"),  # join without an identity
        (["--identity", "i", "--grant", "admin"], "needs --room"),
        (["--room", "r", "--identity", "i", "--grant", "superuser"], "unknown grant 'superuser'"),
        (["--room", "r", "--identity", "i", "--grant", '{"canPublish": "yes"}'], "must be a bool"),
        (["--room", "r", "--identity", "i", "--valid-for", "soon"], "not a duration"),
        (["--room", "r", "--identity", "i", "--allow-source", "webcam"], "unknown track source"),
    ):
        code, out, err = await cli("token", "create", *argv)
        assert code == 2 and out == "", argv
        assert err.startswith("trio-sfu: error: ") and words in err and err.count("\n") == 1, (argv, err)
    code, _, err = await cli("token", "create", "--api-key", "mine", "--room", "r", "--identity", "i")
    assert code == 2 and "no API secret for key 'mine'" in err


def test_durations_and_grant_names() -> None:
    assert [parse_duration(t) for t in ("90s", "10m", "1h30m", "2d", "45", "1.5h", "250ms")] == [
        90, 600, 5400, 172800, 45, 5400, 0.25]
    for bad in ("", "0s", "-5m", "1x", "h", "1h 30m", "inf", "nan"):
        with pytest.raises(TokenError):
            parse_duration(bad)
    assert parse_grants([]) == {"roomJoin": True}
    assert parse_grants(["list,create", "record"]) == {"roomList": True, "roomCreate": True, "roomRecord": True}
    assert parse_grants(["publish", "no-publish"]) == {"canPublish": False, "roomJoin": True}  # later wins
    assert parse_grants(['{"hidden": true}']) == {"hidden": True, "roomJoin": True}  # a participant's: joins
    assert parse_grants(['{"roomJoin": false, "roomList": true}']) == {"roomJoin": False, "roomList": True}


# ---------------------------------------------------------------------- room


async def test_room_create_list_delete_round_trip() -> None:
    async with media_server() as server:
        url = ["--url", http_base(server), *KEYS]
        code, out, err = await cli("room", "create", "standup", "--max-participants", "7", "--metadata", "daily", *url)
        assert (code, err) == (0, "")
        room = server.registry.rooms["standup"]
        assert out.strip() == f"created room 'standup' ({room.sid})"
        assert room.config.max_participants == 7 and room.metadata == "daily"

        code, out, _ = await cli("room", "list", "--json", *url)
        assert code == 0
        listed = json.loads(out)
        assert [(r["name"], r["sid"], r["max_participants"]) for r in listed] == [("standup", room.sid, 7)]
        code, out, _ = await cli("room", "list", *url)
        lines = out.splitlines()
        assert lines[0].split()[:4] == ["NAME", "SID", "PARTICIPANTS", "PUBLISHERS"]
        assert lines[1].split()[:4] == ["standup", room.sid, "0", "0"]

        code, out, err = await cli("room", "delete", "standup", *url)
        assert (code, out.strip(), err) == (0, "deleted room 'standup'", "")
        await wait_until(lambda: "standup" not in server.registry.rooms or server.registry.rooms["standup"].closed)
        code, out, _ = await cli("room", "list", *url)
        assert (code, out.strip()) == (0, "no rooms")

        # A room that is not there: the server's not_found, exit 1, one line.
        code, out, err = await cli("room", "delete", "standup", *url)
        assert code == 1 and out == "" and err.startswith("trio-sfu: error: not_found") and err.count("\n") == 1


async def test_room_commands_as_a_subprocess_with_livekit_env() -> None:
    """The shipped entry point, keys and URL from LIVEKIT_* (ws:// works as well as http://)."""
    async with media_server() as server:
        env = clean_env() | {"LIVEKIT_URL": server.url, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET}
        with trio.fail_after(30):
            created = await trio.run_process(subprocess_command("room", "create", "from-env"), capture_stdout=True,
                                             capture_stderr=True, check=False, env=env)
            listed = await trio.run_process(subprocess_command("room", "list", "--json"), capture_stdout=True,
                                            capture_stderr=True, check=False, env=env)
        assert created.returncode == 0, created.stderr
        assert listed.returncode == 0, listed.stderr
        assert [r["name"] for r in json.loads(listed.stdout)] == ["from-env"]
        assert "from-env" in server.registry.rooms


async def test_room_participants_mute_and_remove_act_on_a_connected_client() -> None:
    config = media_config()
    config.room.enable_remote_unmute = True
    async with media_server(config) as server:
        url = ["--url", http_base(server), *KEYS]
        async with LiveKitClient.connect(server.url, mint_token("alice", name="Alice")) as alice:
            mic = await alice.publish_audio("mic")
            code, out, err = await cli("room", "participants", "room1", *url)
            assert (code, err) == (0, "")
            lines = out.splitlines()
            assert lines[0].startswith(f"alice (Alice)  {alice.participant_sid}  ") and "1 track(s)" in lines[0]
            assert lines[1].split()[:4] == [mic.sid, "audio", "microphone", "'mic'"]
            code, out, _ = await cli("room", "participants", "room1", "--json", *url)
            [info] = json.loads(out)
            assert (info["identity"], info["sid"], info["tracks"][0]["sid"]) == ("alice", alice.participant_sid, mic.sid)

            participant = server.registry.rooms["room1"].participants["alice"]
            # By source name, then back by name and by sid.
            code, out, err = await cli("room", "mute", "room1", "--identity", "alice", "--track", "microphone", *url)
            assert (code, err) == (0, "") and out.strip() == f"muted {mic.sid} ('mic') of 'alice' in 'room1'"
            assert participant.tracks[mic.sid].muted
            code, out, _ = await cli("room", "mute", "room1", "--identity", "alice", "--track", "mic", "--unmute", *url)
            assert code == 0 and out.startswith("unmuted") and not participant.tracks[mic.sid].muted
            code, _, _ = await cli("room", "mute", "room1", "--identity", "alice", "--track", mic.sid, *url)
            assert code == 0 and participant.tracks[mic.sid].muted

            code, out, err = await cli("room", "mute", "room1", "--identity", "alice", "--track", "camera", *url)
            assert code == 1 and f"'alice' has no track 'camera' (tracks: {mic.sid} ('mic'))" in err

            code, out, err = await cli("room", "remove", "room1", "--identity", "alice", *url)
            assert (code, out.strip(), err) == (0, "removed 'alice' from 'room1'", "")
            with trio.fail_after(5):
                await alice.left.wait()
            assert alice.leave_reason == "PARTICIPANT_REMOVED"
        code, out, _ = await cli("room", "participants", "room1", *url)
        assert code in (0, 1) and "alice" not in out


async def test_remote_unmute_refused_by_the_server_is_an_error() -> None:
    async with media_server() as server:
        url = ["--url", http_base(server), *KEYS]
        async with LiveKitClient.connect(server.url, mint_token("alice")) as alice:
            mic = await alice.publish_audio("mic")
            code, out, err = await cli("room", "mute", "room1", "--identity", "alice", "--track", mic.sid,
                                       "--unmute", *url)
            assert code == 1 and out == ""
            assert err.strip() == "trio-sfu: error: failed_precondition: remote unmute not enabled"


# ---------------------------------------------------------------------- errors


async def test_server_down_is_exit_1_with_one_line() -> None:
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = clean_env()
    for argv in (["room", "list"], ["join", "--room", "r", "--identity", "i"]):
        with trio.fail_after(30):
            result = await trio.run_process(subprocess_command(*argv, "--url", f"http://127.0.0.1:{port}"),
                                            capture_stdout=True, capture_stderr=True, check=False, env=env)
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"trio-sfu: error: cannot reach the server at http://127.0.0.1:{port} "
                              f"(connection refused); is the server running?"), err


async def test_bad_key_is_exit_1_with_a_message_naming_the_key() -> None:
    async with media_server() as server:
        env = clean_env()
        for argv in (["room", "list"], ["join", "--room", "r", "--identity", "i"]):
            command = subprocess_command(*argv, "--url", server.url, "--api-key", API_KEY, "--api-secret", "wrong")
            with trio.fail_after(30):
                result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False, env=env)
            err = result.stderr.decode()
            assert result.returncode == 1, err
            assert err.count("\n") == 1 and "Traceback" not in err, err
            assert err.startswith("trio-sfu: error: the server refused the API key or secret ("), err
            assert "signature verification failed" in err and f"key in use: '{API_KEY}'" in err, err
        # An unknown key: the server names it.
        code, _, err = await cli("room", "list", "--url", server.url, "--api-key", "nobody", "--api-secret", "x" * 32)
        assert code == 1 and "invalid API key: nobody" in err


async def test_bad_arguments_are_argparse_errors_exit_2() -> None:
    env = clean_env()
    for argv in (["room"], ["room", "mute", "r", "--track", "t"], ["join", "--room", "r"],
                 ["join", "--room", "r", "--identity", "i", "--video-size", "big"],
                 ["room", "list", "--url", "ftp://example"]):
        with trio.fail_after(30):
            result = await trio.run_process(subprocess_command(*argv), capture_stdout=True, capture_stderr=True,
                                            check=False, env=env)
        assert result.returncode == 2, (argv, result.stderr)
        assert b"Traceback" not in result.stderr and b"error:" in result.stderr, (argv, result.stderr)
    with pytest.raises(SystemExit) as exited:
        main(["token", "create", "--valid-for"])
    assert exited.value.code == 2


# ---------------------------------------------------------------------- join --publish-demo


def _decoded_video(packets: list[bytes]) -> list:
    """The frames libvpx (through aiortc's depacketizer and jitter buffer) decodes from `packets`."""
    codecs = pytest.importorskip("aiortc.codecs")
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtp import RtpPacket as AiortcRtpPacket

    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    decoder = codecs.get_decoder(codec)
    jitter = JitterBuffer(capacity=1024, is_video=True)
    frames = []
    for raw in packets:
        packet = AiortcRtpPacket.parse(raw)
        if not packet.payload:
            continue  # padding
        packet._data = codecs.depayload(codec, packet.payload)
        _, frame = jitter.add(packet)
        if frame is not None:
            frames += decoder.decode(frame)
    return frames


def media_stream(packets: list[bytes], ssrcs: set[int]) -> list[bytes]:
    """The packets of a track's media stream: its most frequent (SSRC, payload type), so
    retransmissions on an RTX stream stay out."""
    ours = [p for p in packets if read_ssrc(p) in ssrcs]
    if not ours:
        return []
    key = collections.Counter((read_ssrc(p), p[1] & 0x7F) for p in ours).most_common(1)[0][0]
    return [p for p in ours if (read_ssrc(p), p[1] & 0x7F) == key]


def _tone_level(packets: list[bytes]) -> float:
    """The RMS level (0..1) libopus decodes from the Opus payloads of `packets`."""
    av = pytest.importorskip("av")
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "stereo", 48000
    samples = []
    for raw in packets:
        for frame in decoder.decode(av.Packet(raw[payload_offset(raw):])):
            samples.append(frame.to_ndarray().astype("float64").ravel() / 32768.0)
    import numpy

    joined = numpy.concatenate(samples)
    return float(numpy.sqrt(numpy.mean(joined ** 2)))


async def test_join_publish_demo_is_seen_as_a_publisher_of_a_moving_picture_and_a_tone(monkeypatch) -> None:
    pytest.importorskip("av")
    received: list[bytes] = []
    original = LiveKitClient._on_subscriber_rtp

    def record(self: LiveKitClient, packet: bytes, now: float) -> None:
        received.append(bytes(packet))
        original(self, packet, now)

    monkeypatch.setattr(LiveKitClient, "_on_subscriber_rtp", record)
    async with media_server() as server:
        command = subprocess_command("join", "--url", server.url, *KEYS, "--room", "demo", "--identity", "demo-bot",
                                     "--publish-demo", "--video-size", "320x180", "--fps", "15")
        proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                env=clean_env())
        seen = b""

        async def read_until(marker: bytes, timeout: float = 30) -> None:
            nonlocal seen
            assert proc.stderr is not None
            with trio.fail_after(timeout):
                while marker not in seen:
                    chunk = await proc.stderr.receive_some(4096)
                    assert chunk, seen.decode()
                    seen += chunk

        try:
            await read_until(b"publishing TR_")
            async with LiveKitClient.connect(server.url, mint_token("viewer", room="demo")) as viewer:
                tracks = {t.kind: t for t in await viewer.wait_for_tracks(2, timeout=20)}
                assert sorted(tracks) == ["audio", "video"]
                [bot] = [p for p in viewer.remote_participants.values() if p.identity == "demo-bot"]
                assert bot.is_publisher
                from livekit.protocol import models
                sources = {models.TrackSource.Name(t.source): (t.sid, t.width, t.height) for t in bot.tracks}
                assert sources == {"CAMERA": (tracks["video"].sid, 320, 180), "MICROPHONE": (tracks["audio"].sid, 0, 0)}
                # Three seconds of it: the demo's picture moves and its tone is not silence.
                await wait_until(lambda: tracks["video"].stats.packets > 0 and tracks["audio"].stats.packets > 0, 15)
                await trio.sleep(3.0)
                # The stats line has seen us subscribe by now (once a second).
                await read_until(b"subscribers 1", timeout=5)
            video = media_stream(received, tracks["video"].ssrcs)
            audio = media_stream(received, tracks["audio"].ssrcs)
            frames = _decoded_video(video)
            assert len(frames) >= 20, len(frames)  # 15 fps for ~3 s, the first key frame may come late
            assert {(f.width, f.height) for f in frames} == {(320, 180)}
            first, last = frames[0].to_ndarray(format="gray"), frames[-1].to_ndarray(format="gray")
            assert (abs(first.astype(int) - last.astype(int)) > 16).mean() > 0.05, "the picture does not move"
            assert len(audio) >= 100  # 50 packets a second
            assert _tone_level(audio) > 0.02

            line = [ln for ln in seen.decode().splitlines() if "subscribers 1" in ln][-1]
            assert "demo/demo-bot: video " in line and " pkt " in line and "kbps" in line, line
            proc.send_signal(signal.SIGINT)
            with trio.fail_after(15):
                await proc.wait()
                seen += await read_all(proc.stderr)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = seen.decode()
        assert proc.returncode == 0, text
        assert "leaving room 'demo' (sent video " in text and "Traceback" not in text, text
        room = server.registry.rooms.get("demo")
        await wait_until(lambda: room is None or "demo-bot" not in room.participants)


async def test_join_ends_with_exit_1_when_the_room_is_deleted() -> None:
    async with media_server() as server:
        command = subprocess_command("join", "--url", server.url, *KEYS, "--room", "gone", "--identity", "listener")
        with trio.fail_after(30):
            proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    env=clean_env())
            try:
                await wait_until(lambda: "listener" in getattr(server.registry.rooms.get("gone"), "participants", {}),
                                 timeout=20)
                code, _, _ = await cli("room", "delete", "gone", "--url", http_base(server), *KEYS)
                assert code == 0
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            err = (await read_all(proc.stderr)).decode()
        assert proc.returncode == 1, err
        assert "trio-sfu: error: the server ended the session: ROOM_DELETED" in err, err


# ---------------------------------------------------------------------- the parts


async def test_server_api_reports_a_server_that_is_not_http_or_silent() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")
        await stream.aclose()

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        [garbage_listener] = await nursery.start(functools.partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
        [silent_listener] = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = garbage_listener.socket.getsockname()[1]
        api = RoomServiceClient(f"http://127.0.0.1:{port}", API_KEY, API_SECRET)
        with pytest.raises(ServerUnreachable, match=r"did not answer in HTTP/1\.1"):
            await api.list_rooms()
        port = silent_listener.socket.getsockname()[1]
        api = RoomServiceClient(f"ws://127.0.0.1:{port}", API_KEY, API_SECRET, timeout=0.5)
        with pytest.raises(ServerUnreachable, match=r"no answer from http://127\.0\.0\.1:\d+ within 0\.5 s"):
            await api.list_rooms()
        nursery.cancel_scope.cancel()


def test_vp8_payloads_split_a_frame_behind_rfc7741_descriptors() -> None:
    frame = bytes(range(256)) * 20  # 5120 octets
    payloads = vp8_payloads(frame, keyframe=True, picture_id=0x1234, tl0_pic_idx=7, max_payload=1000)
    assert all(len(p) <= 1000 for p in payloads) and len(payloads) == 6
    descriptor = 6
    assert b"".join(p[descriptor:] for p in payloads) == frame
    assert [bool(p[0] & 0x10) for p in payloads] == [True] + [False] * 5  # S only on the first
    assert {(p[2] & 0x7F) << 8 | p[3] for p in payloads} == {0x1234} and {p[4] for p in payloads} == {7}
    assert is_vp8_keyframe(payloads[0])  # the frame tag's P bit (frame[0] = 0) is found behind the descriptor
    with pytest.raises(ValueError):
        vp8_payloads(frame, keyframe=False, picture_id=0, tl0_pic_idx=0, max_payload=6)


def test_the_demo_picture_moves_and_keeps_its_size() -> None:
    numpy = pytest.importorskip("numpy")
    picture = MovingPicture(numpy, 64, 36)
    first, later = picture.frame(0.0), picture.frame(0.7)
    assert first.shape == later.shape == (54, 64) and first.dtype == numpy.uint8
    assert (first != later).mean() > 0.2
    with pytest.raises(ValueError):
        MovingPicture(numpy, 63, 36)


async def test_join_publish_demo_without_pyav_falls_back_to_synthetic_media(tmp_path) -> None:
    """Where PyAV is missing (`make run` installs no extras) the demo still publishes, and says why
    there is no picture: an `av` that fails to import stands in for the missing package."""
    shadow = tmp_path / "shadow" / "av"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named av', name='av')\n")
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])
    async with media_server() as server:
        command = subprocess_command("join", "--url", server.url, *KEYS, "--room", "plain", "--identity", "bot",
                                     "--publish-demo", "--duration", "30")
        proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            async with LiveKitClient.connect(server.url, mint_token("viewer", room="plain")) as viewer:
                with trio.fail_after(30):
                    tracks = await viewer.wait_for_tracks(2, timeout=30)
                    await wait_until(lambda: all(t.stats.packets > 20 for t in tracks), timeout=20)
            proc.send_signal(signal.SIGINT)
            with trio.fail_after(15):
                await proc.wait()
            err = (await read_all(proc.stderr)).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err
    assert "no real encoders (av is not installed (pip install av numpy)): sending synthetic" in err, err
    assert sorted(t.kind for t in tracks) == ["audio", "video"]
