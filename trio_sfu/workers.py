"""`trio-sfu --workers N`: N node processes on one machine, one cluster.

One Python process forwards on one core (the GIL), so a machine with N cores runs N nodes. Each
worker is a whole node -- its own Trio run, UDP media port, relay listener and private signal
port -- and the workers find and link to each other through Redis exactly as nodes on different
machines do: a room spread over workers takes the same code path as a room spread over machines.
They share the public HTTP port with SO_REUSEPORT, so the kernel spreads new connections over
them; a connection that reaches the wrong worker (a resume, a full node) is spliced to the right
one by the front door (trio_sfu.api.http_front).

This module is the supervisor: it starts the workers (`python -m trio_sfu.cli <args>
--worker-index i`), passes SIGINT/SIGTERM on to them (each drains: its participants migrate to
the nodes still serving), restarts a worker that dies on its own (with a capped back-off, so a
worker that cannot start does not spin), and exits once every worker has.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import AsyncIterator, Sequence

import attrs
import trio

from trio_sfu.log import get_logger

_log = get_logger("trio_sfu.workers")

#: A worker that ran at least this long before dying is restarted at once; one that died sooner
#: waits, doubling up to RESTART_BACKOFF_MAX, so a worker failing at start-up does not spin.
HEALTHY_RUN = 10.0
RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 30.0
#: After the first SIGTERM, how long the supervisor waits for draining workers before SIGKILL
#: (a worker's own drain deadline is shorter; this only catches a stuck one).
STOP_GRACE = 90.0


@attrs.define
class WorkerState:
    index: int
    starts: int = 0
    backoff: float = RESTART_BACKOFF_MIN
    process: trio.Process | None = None


def worker_command(argv: Sequence[str], index: int) -> list[str]:
    """The command line of worker `index`: ours, without --workers, plus --worker-index."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        args.append(arg)
    return [sys.executable, "-m", "trio_sfu.cli", *args, "--worker-index", str(index)]


class WorkerSupervisor:
    def __init__(self, argv: Sequence[str], count: int) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.argv = list(argv)
        self.workers = [WorkerState(i) for i in range(count)]
        self._stopping = False

    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pass_signals, signals, nursery)
                async with trio.open_nursery() as workers:
                    for worker in self.workers:
                        workers.start_soon(self._keep_running, worker)
                # Each worker's task returns only once stopping and its process has exited.
                nursery.cancel_scope.cancel()
        return 0

    async def _keep_running(self, worker: WorkerState) -> None:
        while not self._stopping:
            command = worker_command(self.argv, worker.index)
            worker.starts += 1
            started_at = trio.current_time()
            # Its own session: a terminal's Ctrl-C reaches the supervisor only, which passes it
            # on once (a worker's second signal would cut its drain short).
            process = await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL, start_new_session=True)
            worker.process = process
            _log.info("worker started", kv={"worker": worker.index, "pid": process.pid, "start": worker.starts})
            try:
                code = await process.wait()
            finally:
                worker.process = None
            if self._stopping:
                _log.info("worker stopped", kv={"worker": worker.index, "code": code})
                return
            ran = trio.current_time() - started_at
            worker.backoff = RESTART_BACKOFF_MIN if ran >= HEALTHY_RUN else min(worker.backoff * 2, RESTART_BACKOFF_MAX)
            delay = 0.0 if ran >= HEALTHY_RUN else worker.backoff
            _log.warning("worker died, restarting", kv={"worker": worker.index, "code": code,
                                                        "ran_s": round(ran, 1), "delay_s": delay})
            await trio.sleep(delay)

    async def _pass_signals(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self._stopping:
                self._stopping = True
                _log.info("stopping workers", kv={"signal": name})
                self._forward(signum)
                nursery.start_soon(self._kill_after, trio.current_time() + STOP_GRACE)
            else:
                # A second signal: the operator is impatient; pass it on (a worker's second
                # SIGTERM ends its drain at once).
                self._forward(signum)

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None:
                try:
                    worker.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    async def _kill_after(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        for worker in self.workers:
            if worker.process is not None:
                _log.error("worker did not stop in time; killing", kv={"worker": worker.index})
                worker.process.kill()


def run_workers(argv: Sequence[str], count: int) -> int:
    return trio.run(WorkerSupervisor(argv, count).run)
