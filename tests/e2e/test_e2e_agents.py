"""Real `livekit-agents` workers (their own venv: they pin an older `livekit` than our test
SDK) against trio-sfu, met by a real `livekit` SDK participant: automatic dispatch, explicit
dispatch through AgentDispatchService and through a token's roomConfig, a worker killed
mid-job (its job is re-dispatched to the other worker), and a worker that sends garbage
(closed alone; the real worker beside it keeps serving). Scenario: agent_sdk_scenario.py;
the worker: agent_worker.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_harness import E2E_DIR, ROOT, Client, stop_process, tail

pytestmark = pytest.mark.slow

AGENTS_VENV = Path(os.environ.get("TRIO_SFU_AGENTS_VENV", ROOT / ".venv-agents"))
AGENTS_PYTHON = AGENTS_VENV / "bin" / "python"
REGISTER_TIMEOUT_S = 60.0
#: The worker runs offline: nothing reaches beyond the namespace.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LIVEKIT_AGENTS_DISABLE_TELEMETRY": "1",
    "OTEL_SDK_DISABLED": "true",
    "PYTHONUNBUFFERED": "1",
}


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                        "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_AGENT_NAME")}
    env.update(OFFLINE_ENV)
    return env


class Worker:
    """One `livekit-agents` worker process in the namespace."""

    def __init__(self, netns, url: str, agent_name: str, log: Path) -> None:
        self.log = log
        argv = netns.wrap([str(AGENTS_PYTHON), str(E2E_DIR / "agent_worker.py"), url, "devkey", "secret", agent_name])
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=_worker_env())

    def wait_registered(self) -> None:
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while "registered AW_" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}\n{tail(self.log)}"
            assert time.monotonic() < deadline, f"worker did not register\n{tail(self.log)}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, grace_s=10.0)


@pytest.fixture
def workers():
    if not AGENTS_PYTHON.exists():
        pytest.skip(f"livekit-agents venv missing at {AGENTS_VENV}: `make test-deps` creates it")
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def start_worker(netns, sfu, workers, tmp_path: Path, name: str, agent_name: str = "") -> Worker:
    worker = Worker(netns, sfu.ws_url, agent_name, tmp_path / f"{name}.log")
    workers.append(worker)
    worker.wait_registered()
    return worker


def run_scenario(netns, sfu, clients, tmp_path: Path, *args: str, name: str = "participant") -> Client:
    argv = netns.wrap([sys.executable, str(E2E_DIR / "agent_sdk_scenario.py"), "--url", sfu.ws_url, *args])
    client = Client(name, argv, tmp_path / f"{name}.log")
    clients.append(client)
    return client


def summary_of(client: Client, sfu, workers, timeout_s: float = 170) -> dict:
    done = client.wait_for("summary", timeout_s=timeout_s)
    client.finish()
    context = "\n".join([client.log_tail(), sfu.log_tail(80), *(f"--- {w.log.name} ---\n{tail(w.log, 40)}" for w in workers)])
    assert done is not None, f"no summary\n{context}"
    s = done["summary"]
    assert "error" not in s, f"{s}\n{context}"
    return s


def assert_agent_works(report: dict, agent_name: str) -> None:
    assert report["kind"] == 4, report  # ParticipantInfo.Kind.AGENT
    assert report["attributes"].get("lk.agent_name") == agent_name, report
    assert report["has_audio"], report
    # The tone: its bin carries far more energy than an unrelated one, and the audio is loud.
    assert report["tone_energy"] > 100 * report["off_energy"], report
    assert report["rms"] > 1000, report
    assert report["echoed"], report


def test_automatic_dispatch_agent_joins_plays_a_tone_and_echoes_data(netns, sfu, clients, workers, tmp_path):
    start_worker(netns, sfu, workers, tmp_path, "worker")
    s = summary_of(run_scenario(netns, sfu, clients, tmp_path, "--dispatch", "auto"), sfu, workers)
    assert_agent_works(s["first"], "")
    assert s["first"]["identity"].startswith("agent-AJ_"), s


def test_explicit_dispatch_through_agent_dispatch_service(netns, sfu, clients, workers, tmp_path):
    start_worker(netns, sfu, workers, tmp_path, "worker", agent_name="concierge")
    s = summary_of(run_scenario(netns, sfu, clients, tmp_path, "--dispatch", "api", "--agent-name", "concierge"),
                   sfu, workers)
    assert s["dispatch"]["agent_name"] == "concierge" and s["dispatch"]["id"].startswith("AD_"), s
    assert_agent_works(s["first"], "concierge")
    # The room's dispatches: the explicit one with its running job (the automatic one has no
    # job: no worker without an agent name is registered).
    explicit = [d for d in s["listed"] if d["id"] == s["dispatch"]["id"]]
    assert explicit and explicit[0]["jobs"], s["listed"]
    job = explicit[0]["jobs"][0]
    assert job["status"] == 1 and job["identity"] == s["first"]["identity"], job  # JS_RUNNING
    assert s["deleted"] == s["dispatch"]["id"] and s["agent_left_after_delete"], s


def test_explicit_dispatch_through_the_tokens_room_configuration(netns, sfu, clients, workers, tmp_path):
    start_worker(netns, sfu, workers, tmp_path, "worker", agent_name="concierge")
    s = summary_of(run_scenario(netns, sfu, clients, tmp_path, "--dispatch", "token", "--agent-name", "concierge"),
                   sfu, workers)
    assert_agent_works(s["first"], "concierge")


def test_worker_killed_mid_job_its_job_goes_to_the_other_worker(netns, sfu, clients, workers, tmp_path):
    first = start_worker(netns, sfu, workers, tmp_path, "worker-a")
    second = start_worker(netns, sfu, workers, tmp_path, "worker-b")
    pids = {str(first.proc.pid): first, str(second.proc.pid): second}
    client = run_scenario(netns, sfu, clients, tmp_path, "--dispatch", "auto", "--follow-agent")
    line = client.wait_for("agent", timeout_s=120)
    assert line is not None, f"no agent\n{client.log_tail()}\n{sfu.log_tail()}"
    pid = line["agent"]["worker_pid"]
    assert pid in pids, (pid, list(pids))
    os.kill(int(pid), signal.SIGKILL)
    s = summary_of(client, sfu, workers)
    assert_agent_works(s["first"], "")
    assert_agent_works(s["second"], "")
    survivor = next(p for p in pids if p != pid)
    assert s["second"]["attributes"]["worker_pid"] == survivor, s
    # Same job, re-dispatched: the new agent has the job's identity, and replaced the stale one.
    assert s["second"]["identity"] == s["first"]["identity"], s
    assert s["first_left"], s
    log = sfu.log.read_text(errors="replace")
    assert "re-dispatching" in log, sfu.log_tail()


def test_bad_workers_are_refused_or_closed_alone_while_a_real_worker_keeps_serving(netns, sfu, clients, workers,
                                                                                    tmp_path):
    start_worker(netns, sfu, workers, tmp_path, "worker")
    bad = Client("bad", netns.wrap([sys.executable, str(E2E_DIR / "agent_bad_worker.py"), "--url", sfu.ws_url]),
                 tmp_path / "bad.log")
    clients.append(bad)
    done = bad.wait_for("done", timeout_s=60)
    assert done is not None, f"{bad.log_tail()}\n{sfu.log_tail()}"
    results = {k: v for line in bad.lines for k, v in line.items()}
    assert results["no_token"] == 401 and results["wrong_grant"] == 401, results
    assert results["registered"].startswith("AW_"), results
    assert results["closed"]["code"] == 1007 and "malformed" in results["closed"]["reason"], results
    # The real worker was not disturbed: a room still gets its agent, which still works.
    s = summary_of(run_scenario(netns, sfu, clients, tmp_path, "--dispatch", "auto"), sfu, workers)
    assert_agent_works(s["first"], "")
