#!/usr/bin/env bash
# Installs Janus (Debian's package, 1.1.2 in bookworm) for the side-by-side benchmark
# (`python -m bench livestream --server janus`) and tests/test_janus_adapter.py. Optional:
# nothing else in the project needs it. The package's own service is not used; the bench starts
# Janus with the config files next to this script (see bench/janus_server.py).
set -euo pipefail
if command -v janus >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "janus setup: cannot install janus (not root or no apt-get)" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends janus >/dev/null
