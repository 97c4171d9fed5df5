"""``trio-sfu load-test --workers N``: the participants spread over N worker processes.

One tester process saturates a core well before the server does (every packet it receives is
unprotected and counted in Python), so a large scenario measured the tester. Here the parent
splits the participants (publishers and subscribers alike, round the workers in turn), starts
each worker with ``multiprocessing``'s *spawn* (a fresh interpreter: no Trio state inherited
through ``fork``), and each worker runs its own Trio loop with an ordinary
:class:`~trio_sfu.client.loadtest.LoadTest` over its share. Identities get a ``w<i>_`` prefix so
all share one room; each worker's subscribers expect every track of the room.

Over its pipe a worker sends ``("counts", LoadCounts)`` once a second and ``("summary", dict)``
at the end; the parent sends ``"stop"`` (any message) when it is told to stop (SIGINT/SIGTERM;
the workers ignore SIGINT themselves, so a Ctrl-C on the terminal's process group is the
parent's to handle). The parent prints the same progress lines as one tester (summed counts),
announces each worker with a ``load-test worker <i> pid=<pid>`` line on stderr (the bench samples
their CPU), and merges the summaries: per-worker totals are kept under ``workers``; the totals are
their sums, latency percentiles come from the merged samples.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import signal
import sys
import threading
import time
from typing import Any, TextIO

import attrs
import trio

from trio_sfu.client.loadtest import LoadCounts, LoadTest, LoadTestParams
from trio_sfu.client.progress import Phase, ProgressWriter
from trio_sfu.client.stats import percentile

REPORT_INTERVAL = 1.0
#: How long the parent waits for a worker's summary after the run ended or it was told to stop.
SUMMARY_TIMEOUT = 60.0


def _share(total: int, workers: int, index: int) -> range:
    """Indices of ``total`` items worker ``index`` takes when they are dealt round in turn."""
    return range(index, total, workers)


def split_params(params: LoadTestParams, workers: int) -> list[LoadTestParams]:
    """Each worker's share of the run. Publisher ``k`` of the whole run publishes video when
    ``k < video_publishers`` and audio when ``k < audio_publishers``; a worker's publishers come
    first in its own numbering, so a worker gets the video (audio) publishers among its share."""
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    if workers > params.publishers + params.subscribers:
        raise ValueError("--workers must not exceed the participants (a worker with none would run lk's default)")
    shares = []
    for index in range(workers):
        mine = list(_share(params.publishers, workers, index))
        shares.append(attrs.evolve(
            params,
            video_publishers=sum(1 for k in mine if k < params.video_publishers),
            audio_publishers=sum(1 for k in mine if k < params.audio_publishers),
            subscribers=len(_share(params.subscribers, workers, index)),
            num_per_second=params.num_per_second / workers,
            json_path=None,
            identity_prefix=f"{params.identity_prefix}w{index}_",
            room_publishers=params.publishers_expected,
            room_tracks=params.tracks_expected,
        ))
    return shares


# ---------------------------------------------------------------------- the worker


def _worker_main(params: LoadTestParams, conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent says when to stop
    trio.run(_worker, params, conn)
    conn.close()


async def _worker(params: LoadTestParams, conn: multiprocessing.connection.Connection) -> None:
    load_test = LoadTest(params, progress=None)

    async def report() -> None:
        while True:
            await trio.sleep(REPORT_INTERVAL)
            conn.send(("counts", load_test.counts()))

    async def wait_for_stop() -> None:
        try:
            await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
        except EOFError:
            pass  # the parent is gone: stop too
        load_test.request_stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        nursery.start_soon(wait_for_stop)
        await load_test.run()
        nursery.cancel_scope.cancel()
    conn.send(("counts", load_test.counts()))
    conn.send(("summary", load_test.summary(latency_samples=True)))


# ---------------------------------------------------------------------- the parent


@attrs.define(eq=False)
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    counts: LoadCounts | None = None
    summary: dict[str, Any] | None = None
    open: bool = True


def _sum_counts(workers: list[_Worker], participants: int, tracks_expected: int) -> LoadCounts:
    known = [w.counts for w in workers if w.counts is not None]
    phase = Phase.STEADY if len(known) == len(workers) and all(c.phase is Phase.STEADY for c in known) \
        else Phase.JOINING
    return LoadCounts(
        phase=phase,
        joined=sum(c.joined for c in known),
        participants=participants,
        tracks=sum(c.tracks for c in known),
        tracks_expected=tracks_expected,
        packets_sent=sum(c.packets_sent for c in known),
        packets_received=sum(c.packets_received for c in known),
        packets_lost=sum(c.packets_lost for c in known),
        packets_expected=sum(c.packets_expected for c in known),
        errors=sum(c.errors for c in known),
    )


def run_workers(params: LoadTestParams, workers: int, progress: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Run ``params`` over ``workers`` processes until they end (``duration``) or SIGINT/SIGTERM
    arrives; the merged summary. Signals are handled only when called from the main thread
    (the command line); from another thread (a test) the run ends by its duration."""
    shares = split_params(params, workers)
    writer = ProgressWriter(progress) if progress is not None else None
    context = multiprocessing.get_context("spawn")
    running: list[_Worker] = []
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
    try:
        for index, share in enumerate(shares):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker_main, args=(share, child_end), name=f"load-test-worker-{index}",
                                      daemon=True)
            process.start()
            child_end.close()
            running.append(_Worker(index, process, parent_end))
            if progress is not None:
                print(f"load-test worker {index} pid={process.pid}", file=progress, flush=True)
        participants = params.publishers + params.subscribers
        tracks_expected = params.subscribers * params.tracks_expected
        started = time.monotonic()
        next_report = started + REPORT_INTERVAL
        last_in = last_out = 0
        stop_sent_at: float | None = None
        while any(w.open for w in running):
            conns = [w.conn for w in running if w.open]
            for conn in multiprocessing.connection.wait(conns, timeout=0.2):
                worker = next(w for w in running if w.conn is conn)
                try:
                    kind, body = conn.recv()
                except (EOFError, OSError):
                    worker.open = False
                    continue
                if kind == "counts":
                    worker.counts = body
                elif kind == "summary":
                    worker.summary = body
                    worker.open = False
            now = time.monotonic()
            if stop_requested and stop_sent_at is None:
                stop_sent_at = now
                if writer is not None:
                    writer.note("stopping: participants are leaving")
                for worker in running:
                    if worker.open:
                        try:
                            worker.conn.send("stop")
                        except OSError:
                            worker.open = False
            if stop_sent_at is not None and now - stop_sent_at > SUMMARY_TIMEOUT:
                break  # a hung worker: its summary is missing, the others are merged
            if writer is not None and now >= next_report:
                counts = _sum_counts(running, participants, tracks_expected)
                writer.show(counts.progress(now - started, counts.packets_sent - last_out,
                                            counts.packets_received - last_in))
                last_in, last_out = counts.packets_received, counts.packets_sent
                next_report += REPORT_INTERVAL * max(1, math.floor((now - next_report) / REPORT_INTERVAL) + 1)
        if writer is not None:
            writer.finish()
    finally:
        for worker in running:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return merge_summaries(params, [w.summary for w in running])


def merge_summaries(params: LoadTestParams, summaries: list[dict[str, Any] | None]) -> dict[str, Any]:
    """One summary from the workers' (``None`` for a worker that sent none: counted as an error).
    Totals are sums; a track's entry sums its subscribers across workers and takes the publisher
    side (packets sent) from the worker that published it; percentiles from the merged samples."""
    present = [s for s in summaries if s is not None]
    tracks: dict[str, dict[str, Any]] = {}
    for summary in present:
        for entry in summary["tracks"]:
            merged = tracks.get(entry["sid"])
            if merged is None:
                merged = tracks[entry["sid"]] = dict(entry, latency_samples=list(entry.get("latency_samples", [])),
                                                     bitrate_bps=entry["bitrate_bps"] * entry["subscribers"])
                continue
            if merged["publisher"] == "?" and entry["publisher"] != "?":
                merged["publisher"], merged["packets_sent"] = entry["publisher"], entry["packets_sent"]
            for key in ("subscribers", "packets", "bytes", "packets_lost", "expected"):
                merged[key] = merged.get(key, 0) + entry.get(key, 0)
            merged["bitrate_bps"] += entry["bitrate_bps"] * entry["subscribers"]
            merged["latency_samples"].extend(entry.get("latency_samples", []))
    for entry in tracks.values():
        samples = entry.pop("latency_samples")
        expected = entry.pop("expected", 0)
        entry["bitrate_bps"] /= entry["subscribers"] or 1
        entry["loss"] = entry["packets_lost"] / expected if expected else 0.0
        entry["latency_ms_p50"] = percentile(samples, 0.50)
        entry["latency_ms_p99"] = percentile(samples, 0.99)
    worker_totals = [dict(s["totals"]) for s in present]
    samples = [x for t in worker_totals for x in t.pop("latency_samples", [])]
    lost = sum(t["packets_lost"] for t in worker_totals)
    expected = sum(t.get("packets_expected", 0) for t in worker_totals)
    drops = [t["socket_drops"] for t in worker_totals]
    missing = len(summaries) - len(present)
    participants = params.publishers + params.subscribers
    return {
        "params": {k: v for k, v in attrs.asdict(params).items() if k not in ("api_secret",)} | {"workers": len(summaries)},
        "duration_s": max((s["duration_s"] for s in present), default=0.0),
        "participants": participants,
        "joined": sum(s["joined"] for s in present),
        "tracks": sorted(tracks.values(), key=lambda e: (e["publisher"], e["kind"])),
        "subscribers": [x for s in present for x in s["subscribers"]],
        "publishers": [x for s in present for x in s["publishers"]],
        "totals": {
            "packets_sent": sum(t["packets_sent"] for t in worker_totals),
            "packets_received": sum(t["packets_received"] for t in worker_totals),
            "packets_lost": lost,
            "packets_expected": expected,
            "loss": lost / expected if expected else 0.0,
            "latency_ms_p50": percentile(samples, 0.50),
            "latency_ms_p99": percentile(samples, 0.99),
            "errors": sum(t["errors"] for t in worker_totals) + missing,
            "socket_drops": None if None in drops else sum(drops),
        },
        "workers": worker_totals,
        "workers_without_summary": missing,
    }


__all__ = ["merge_summaries", "run_workers", "split_params"]
