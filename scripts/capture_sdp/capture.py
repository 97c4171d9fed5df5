"""Capture real SDP from livekit-client in Chromium and from the `livekit` Python SDK.

    .venv/bin/python scripts/capture_sdp/capture.py --out tests/fixtures/sdp

Starts the fake LiveKit signal server (fake_signal_server.py) on 127.0.0.1 with an
ephemeral port, runs each client driver against it, and writes the SDP it saw,
byte for byte, into --out.

Why a network namespace: libwebrtc (Chromium and the Python SDK) gathers no ICE
candidate on loopback, and the Python SDK will not publish until its subscriber
PeerConnection has connected.  As root, the script therefore re-runs itself in a
private network namespace that holds only `lo` and one interface with the test
address 198.18.0.1 (RFC 2544 benchmarking range, no routes), so ICE and DTLS with
the aiortc peer stay inside the namespace.  The namespace is deleted afterwards.
Without root (or with --no-netns) no ICE is attempted at all (no candidates are
offered, trickle is dropped) and signalling runs on 127.0.0.1: Chromium still
publishes (livekit-client waits only for the signal connection before it
publishes), the Python SDK does not (it waits for its subscriber PC).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aiortc_peers import AiortcPeers, restrict_ice_addresses  # noqa: E402
from fake_signal_server import CaptureLog, ClientCapture, FakeLiveKitServer, serve  # noqa: E402

BROWSER_DIR = HERE.parent / "browser"
NETNS_ENV = "TRIO_SFU_CAPTURE_NETNS"
NETNS_ADDRESS = "198.18.0.1"
# Time for a driver to finish after its capture is complete, before it is killed.
GRACE_S = 5.0
log = logging.getLogger("capture_sdp")


def write_sdp(out: Path, name: str, sdp: str | None) -> bool:
    if sdp is None:
        log.warning("not captured: %s", name)
        return False
    # Binary write: the SDP keeps its CRLF line endings exactly as received.
    (out / name).write_bytes(sdp.encode("utf-8"))
    log.info("wrote %s (%d bytes)", name, len(sdp))
    return True


async def run_driver(
    argv: list[str], capture: ClientCapture, timeout_s: float, transcript: Path, linger_s: float,
) -> bool:
    """Run one client driver until its capture completes or the timeout passes."""
    log.info("starting %s", " ".join(argv))
    with open(transcript, "wb") as out:
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=out, stderr=out)
        try:
            with trio.move_on_after(timeout_s):
                await capture.done.wait()
            completed = capture.done.is_set()
            if completed and linger_s > 0:
                # Debug aid: watch the client (room state, ICE) after the capture.
                await trio.sleep(linger_s)
            # Closing stdin tells the driver to leave and close its browser/room.
            assert proc.stdin is not None
            await proc.stdin.aclose()
            with trio.move_on_after(GRACE_S):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log.info("driver exited with %s; capture complete: %s", proc.returncode, completed)
    return completed


async def capture_all(
    out: Path, logs: Path, clients: list[str], timeout_s: float, linger_s: float, in_netns: bool,
) -> dict[str, bool]:
    peers = AiortcPeers(connect=in_netns)
    captures = CaptureLog()
    server = FakeLiveKitServer(captures, peers, static_root=BROWSER_DIR)
    results: dict[str, bool] = {}
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, server)
            base = f"127.0.0.1:{port}"
            log.info("fake LiveKit server on %s", base)
            if "chromium" in clients:
                start = time.monotonic()
                js = captures.for_sdk("js")
                ok = await run_driver(
                    ["node", str(HERE / "drive_chromium.mjs"), f"http://{base}/livekit_page.html",
                     f"ws://{base}", str(int(timeout_s * 1000))],
                    js, timeout_s, logs / "chromium_driver.log", linger_s,
                )
                results["chromium"] = ok
                write_sdp(out, "chromium_publisher_offer_simulcast.sdp", js.publisher_offer)
                write_sdp(out, "chromium_subscriber_offer_sent.sdp", js.subscriber_offer_sent)
                write_sdp(out, "chromium_subscriber_answer.sdp", js.subscriber_answer)
                write_sdp(out, "chromium_v1_join_offer.sdp", js.v1_join_offer)
                log.info("chromium: %.1f s, %d publisher offer(s), query %s",
                         time.monotonic() - start, len(js.publisher_offers), json.dumps(js.query))
            if "python" in clients:
                start = time.monotonic()
                py = captures.for_sdk("python")
                ok = await run_driver(
                    [sys.executable, str(HERE / "drive_python_sdk.py"), f"ws://{base}", str(timeout_s)],
                    py, timeout_s, logs / "python_sdk_driver.log", linger_s,
                )
                results["python"] = ok
                write_sdp(out, "python_sdk_publisher_offer.sdp", py.publisher_offer)
                write_sdp(out, "python_sdk_subscriber_offer_sent.sdp", py.subscriber_offer_sent)
                write_sdp(out, "python_sdk_subscriber_answer.sdp", py.subscriber_answer)
                write_sdp(out, "python_sdk_v1_join_offer.sdp", py.v1_join_offer)
                log.info("python: %.1f s, %d publisher offer(s), query %s",
                         time.monotonic() - start, len(py.publisher_offers), json.dumps(py.query))
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(peers.close)
    return results


def rerun_in_netns(argv: list[str]) -> int:
    """Re-run this script inside a fresh private network namespace, then delete it."""
    name = f"trio-sfu-capture-{os.getpid()}"
    setup = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        # ifb, because this kernel has no `dummy` link type.
        ["ip", "-n", name, "link", "add", "t0", "type", "ifb"],
        ["ip", "-n", name, "addr", "add", f"{NETNS_ADDRESS}/32", "dev", "t0"],
        ["ip", "-n", name, "link", "set", "t0", "up"],
    ]
    try:
        for cmd in setup:
            subprocess.run(cmd, check=True)
        env = dict(os.environ, **{NETNS_ENV: name})
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, *argv], env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the .sdp files")
    parser.add_argument("--client", choices=["chromium", "python"], action="append",
                        help="capture only this client (repeatable; default both)")
    parser.add_argument("--timeout", type=float, default=45.0, help="seconds per client")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "trio-sfu-capture",
                        help="directory for the drivers' transcripts")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds to keep each client running after its capture (debugging)")
    parser.add_argument("--no-netns", action="store_true", help="do not use a network namespace")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    if not args.no_netns and NETNS_ENV not in os.environ:
        if os.geteuid() == 0:
            return rerun_in_netns([str(Path(__file__).resolve()), *sys.argv[1:]])
        log.warning("not root: running on 127.0.0.1 only; the Python SDK will not publish")

    in_netns = NETNS_ENV in os.environ
    restrict_ice_addresses([NETNS_ADDRESS] if in_netns else ["127.0.0.1"])
    args.out.mkdir(parents=True, exist_ok=True)
    args.logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = trio.run(capture_all, args.out, args.logs, args.client or ["chromium", "python"], args.timeout,
        args.linger, in_netns,
    )
    log.info("results %s in %.1f s", results, time.monotonic() - started)
    return 0 if results and all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
