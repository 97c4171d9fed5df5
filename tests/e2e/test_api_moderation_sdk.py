"""The Server API's moderation as real SDK clients see it: MutePublishedTrack mutes a `livekit`
Python SDK participant's track as seen by another SDK participant (and by the publisher's own
SDK); UpdateParticipant revoking can_publish unpublishes that participant's track; and
RemoveParticipant disconnects it with PARTICIPANT_REMOVED. The scenario
(tests/e2e/api_moderation_scenario.py) runs inside the test's network namespace, next to the
server, and drives livekit-api's LiveKitAPI from there.
"""

from __future__ import annotations

import json
import sys

import pytest
from e2e_harness import E2E_DIR, Client

pytestmark = pytest.mark.slow


def test_mute_revoke_and_remove_through_the_server_api(netns, sfu, clients, tmp_path):
    """What the revoke phase observes through livekit 1.2.1's `rtc` (the SDK has no local
    "permission revoked" event of its own): on bob's Room, `track_unpublished` for alice's
    microphone publication and alice's RemoteParticipant left with no track publications; on
    alice's Room, `participant_permissions_changed` for alice with can_publish false, and
    `local_participant.permissions` showing can_publish false, can_subscribe and
    can_publish_data true; alice stays connected, so RemoveParticipant still removes her after.
    """
    argv = netns.wrap([sys.executable, str(E2E_DIR / "api_moderation_scenario.py"), "--url", sfu.ws_url, "--room", "e2e-api"])
    client = Client("api", argv, tmp_path / "api.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=90)
    client.finish()
    context = f"{client.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"the scenario produced no summary\n{context}"
    summary = done["summary"]
    phases = summary["phases"]
    detail = f"{json.dumps(summary)}\n{context}"
    assert phases.get("join", {}).get("ok"), f"alice could not publish to bob\n{detail}"
    mute = phases.get("mute", {})
    assert mute.get("ok"), f"MutePublishedTrack did not take effect in the SDKs\n{detail}"
    revoke = phases.get("revoke", {})
    assert revoke.get("ok"), f"UpdateParticipant(can_publish=False) did not unpublish alice's track in the SDKs\n{detail}"
    assert revoke["bob_alice_publications_after"] == []
    assert revoke["alice_local_permission"] == {"can_publish": False, "can_subscribe": True, "can_publish_data": True}
    remove = phases.get("remove", {})
    assert remove.get("ok"), f"RemoveParticipant did not disconnect alice with PARTICIPANT_REMOVED\n{detail}"
    assert remove["listed_after"] == ["bob"]
