"""A real client: the `livekit` Python SDK (Rust core, real libwebrtc) against our server.

Over loopback libwebrtc gathers no usable candidate, so the SDK cannot finish connecting; what we
can and do check is everything up to that point: it joins through /rtc/v1 (single peer
connection) without falling back to /rtc, our server admits it (a join is counted and the
participant appears in the room), the SDK accepts our JoinResponse, and what finally fails is the
PeerConnection wait -- not signalling or the join. (Media end to end: tests/e2e.)
The SDK is asyncio-only, so it runs in a subprocess.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import trio

from trio_sfu import metrics as m
from server_fixtures import mint_token, running_server

CLIENT = r'''
import asyncio, sys
from livekit import rtc

async def main(url, token):
    room = rtc.Room()
    try:
        await asyncio.wait_for(room.connect(url, token), float(sys.argv[3]))
        print("RESULT connected", flush=True)
    except asyncio.TimeoutError:
        print("RESULT timeout", flush=True)
    except Exception as exc:
        print(f"RESULT error {type(exc).__name__}: {exc}", flush=True)
    try:
        await room.disconnect()
    except Exception:
        pass

asyncio.run(main(sys.argv[1], sys.argv[2]))
'''


@pytest.mark.slow
async def test_python_sdk_joins_through_rtc_v1_and_accepts_our_join(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("livekit.rtc", reason="needs the livekit Python SDK (pip install livekit)")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    async with running_server() as server:
        seen_in_room = trio.Event()

        async def watch_room() -> None:
            while "sdk-user" not in getattr(server.registry.rooms.get("room1"), "participants", {}):
                await trio.sleep(0.05)
            seen_in_room.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_room)
            # One SDK attempt waits ~15 s for the PeerConnection; stop it a little after that.
            result = await trio.run_process(
                [sys.executable, str(script), f"ws://127.0.0.1:{server.port}", mint_token("sdk-user"), "20"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
            nursery.cancel_scope.cancel()
        out = result.stdout.decode(errors="replace")
        err = result.stderr.decode(errors="replace")
        assert seen_in_room.is_set(), err[-2000:]
        assert server.metrics.get(m.SIGNAL_JOINS) >= 1
        assert "falling back to v0 path" not in err, err[-2000:]
        assert server.metrics.get(m.HTTP_RTC_V1_REQUESTS) >= 1
        assert server.metrics.get(m.HTTP_RTC_V0_REQUESTS) == 0
        # The SDK got past the JoinResponse: its failure is the PeerConnection wait.
        assert "wait_pc_connection timed out" in err or "RESULT timeout" in out, out + err[-2000:]
        for signal_failure in ("JoinResponse", "signal failure", "missing participant", "UnsupportedServer"):
            assert signal_failure not in out + err, (signal_failure, out, err[-2000:])
