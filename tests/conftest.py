import os
import pathlib

from hypothesis import HealthCheck, settings

from local_peers import forbid_ice_servers

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# Shared machines are slow and noisy: no per-example deadline, and CI runs a
# bounded but meaningful number of examples per property.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=5000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# No in-process test peer may gather against a STUN or TURN server (see local_peers.py).
forbid_ice_servers()
