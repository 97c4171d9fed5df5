"""Real `livekit` Python SDK participants (libwebrtc) move between two trio-sfu nodes of one room
and do not notice: bob (subscriber) and then alice (publisher) are migrated from node A to node B
while bob decodes alice's sine. Both SDKs are connected to node A's URL and resume there (node A
forwards the resume to node B). Asserted: neither rejoins under a new sid (the nodes' join records),
each migration reports success, no `disconnected` event, bob decodes loud audio in every phase and
is subscribed to alice's track once for the whole run, node B counted both migrations in, and
neither SDK sees the other participant or its track go away.

The two nodes run in one process (tests/e2e/two_nodes.py), the SDK participants in another
(tests/e2e/migration_sdk_scenario.py), both inside the test's network namespace.
"""

from __future__ import annotations

import json
import re
import os
import sys
import time

import pytest
from e2e_harness import E2E_DIR, Client, assert_clean_exit

pytestmark = pytest.mark.slow

ROOM = "migration"
PHASE_S = 4.0
MIN_LOUD_PER_PHASE = 50  # 10 ms frames: 4 s of sine is ~400; 50 means audio really came through
MIGRATE_WAIT_S = 45.0  # two_nodes.py gives up on a migrate after 40 s


def send(client: Client, item: dict) -> None:
    assert client.proc.stdin is not None
    client.proc.stdin.write(json.dumps(item) + "\n")
    client.proc.stdin.flush()


def wait_nth(client: Client, key: str, n: int, timeout_s: float) -> dict | None:
    """The n-th (1-based) stdout object having `key`, or None after the timeout or process exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [item for item in list(client.lines) if key in item]
        if len(found) >= n:
            return found[n - 1]
        if client.proc.poll() is not None:
            time.sleep(0.2)  # let the reader drain what the process printed last
            found = [item for item in list(client.lines) if key in item]
            return found[n - 1] if len(found) >= n else None
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("signalling", ["v1", "v0"])
def test_sdk_participants_migrate_between_nodes(netns, clients, tmp_path, signalling):
    """`v1`: the SDK's default, one peer connection (/rtc/v1); `v0`: two (/rtc)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    nodes = Client("two-nodes", netns.wrap([sys.executable, str(E2E_DIR / "two_nodes.py"), "--node-ip", netns.address]),
                   tmp_path / "two_nodes.log", env=env)
    clients.append(nodes)

    def logs(*extra: Client) -> str:
        return "\n".join(c.log_tail(150) for c in (*extra, nodes))

    ready = nodes.wait_for("ready", timeout_s=20)
    assert ready is not None, f"nodes not ready\n{logs()}"
    urls = ready["ready"]
    scenario = Client("sdk", netns.wrap([sys.executable, str(E2E_DIR / "migration_sdk_scenario.py"),
                                         "--url", urls["node-a"], "--room", ROOM,
                                         *(["--v0"] if signalling == "v0" else [])]),
                      tmp_path / "sdk.log", env=env)
    clients.append(scenario)

    def everything() -> str:  # read at failure time, so the tails include the end
        return logs(scenario)

    receiving = scenario.wait_for("receiving", timeout_s=60)
    assert receiving is not None, f"bob never decoded alice's audio\n{everything()}"
    time.sleep(PHASE_S)

    migrations = []
    for n, (identity, phase) in enumerate((("bob", "bob-moved"), ("alice", "both-moved")), start=1):
        send(nodes, {"migrate": {"room": ROOM, "identity": identity, "to": "node-b"}})
        result = wait_nth(nodes, "migrated", n, MIGRATE_WAIT_S)
        assert result is not None, f"no answer to migrate {identity}\n{everything()}"
        migrations.append(result["migrated"])
        send(scenario, {"phase": phase})
        time.sleep(PHASE_S)

    scenario.close_stdin()
    done = scenario.wait_for("summary", timeout_s=30)
    scenario.finish()
    nodes.close_stdin()
    stopped = nodes.wait_for("stopped", timeout_s=30)
    nodes_rc = nodes.finish()
    context = everything()

    assert done is not None, f"scenario printed no summary\n{context}"
    summary = done["summary"]
    assert "error" not in summary, f"{summary['error']}\n{context}"
    assert stopped is not None and nodes_rc == 0, f"nodes did not stop cleanly (rc {nodes_rc})\n{context}"
    assert_clean_exit("two_nodes.py", nodes_rc, nodes.log)
    assert all(node["shutdown_clean"] for node in stopped["stopped"].values()), stopped
    a, b = stopped["stopped"]["a"], stopped["stopped"]["b"]
    events = summary["alice"]["events"] + summary["bob"]["events"]
    brief = json.dumps({"migrations": migrations, "phases": summary["phases"], "nodes": stopped["stopped"],
                        "events": sorted(events, key=lambda e: e["at_s"]),
                        "tracks": summary["bob_received_track_sids"]}, indent=1)

    # A resume keeps the sid; a rejoin (the SDK's full reconnect) gets a new one. The SDK's own
    # local_participant.sid is no proof: after a full reconnect it still read the first sid while
    # the server had assigned a new one. The nodes' join records are.
    sids = {"alice": summary["alice"]["sid_start"], "bob": summary["bob"]["sid_start"]}
    assert all(sids.values()), brief
    for node in (a, b):
        for identity, joined in node["joined"].items():
            assert joined == [sids[identity]], \
                f"{identity} joined a node again under a new sid instead of resuming: {joined} (first {sids[identity]})\n{brief}\n{context}"
    assert set(a["joined"]) == {"alice", "bob"}, brief
    for identity in ("alice", "bob"):
        assert summary[identity]["sid_end"] == sids[identity], f"{identity}'s sid changed\n{brief}\n{context}"
    assert [m.get("sid") for m in migrations] == [sids["bob"], sids["alice"]], brief
    for migration in migrations:
        assert migration["ok"], f"migration failed: {migration}\n{brief}\n{context}"
    disconnected = [e for e in events if e["event"] == "disconnected"]
    assert not disconnected, f"an SDK room disconnected instead of resuming: {disconnected}\n{brief}\n{context}"
    for phase in ("start", "bob-moved", "both-moved"):
        got = summary["phases"].get(phase)
        assert got is not None and got["loud"] >= MIN_LOUD_PER_PHASE, \
            f"bob's audio stopped in phase {phase}: {got}\n{brief}\n{context}"
    published = summary["published_track_sid"]
    # One subscription for the whole run: a resume keeps the receiver, a rejoin subscribes anew.
    assert published and summary["bob_received_track_sids"] == [published], \
        f"bob's track changed or was subscribed again (published {published})\n{brief}\n{context}"
    assert b["migrations_in_total"] == 2 and a["migrations_out_total"] == 2, f"{brief}\n{context}"
    assert a["migrations_failed_total"] == 0 and b["migrations_failed_total"] == 0, f"{brief}\n{context}"

    # The move must be invisible to the room as the SDKs see it, not only to the media: nobody
    # leaves, no track is taken away, and at the end each still sees the other as before.
    churn = [e for e in events if e["event"] in ("participant_disconnected", "track_unsubscribed", "track_unpublished")]
    assert not churn, f"the SDKs saw the other participant or its track go away during the moves: {churn}\n{brief}\n{context}"
    alice_seen = summary["bob"]["remote_end"].get("alice")
    assert alice_seen == {"sid": sids["alice"], "tracks": [{"sid": published, "subscribed": True, "has_track": True}]}, \
        f"bob's view of alice at the end: {alice_seen}\n{brief}"
    bob_seen = summary["alice"]["remote_end"].get("bob")
    assert bob_seen == {"sid": sids["bob"], "tracks": []}, f"alice's view of bob at the end: {bob_seen}\n{brief}"

    assert_signalling(nodes.log, signalling)


def assert_signalling(nodes_log, signalling: str) -> None:
    """Every join and resume on both nodes went through the signalling path under test."""
    expected = "v1 single-pc" if signalling == "v1" else "v0 dual-pc"
    joins = re.findall(r'participant joined .*identity=(\S+) signalling="([^"]+)"', nodes_log.read_text(errors="replace"))
    assert joins and all(how == expected for _, how in joins), (signalling, joins)
