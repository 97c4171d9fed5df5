#!/usr/bin/env bash
# Installs what the test suite needs that pip cannot: Debian packages and npm packages.
#   iproute2 (`ip`)          network namespaces for the end-to-end tests (tests/e2e)
#   iptables                 the ICE/TCP e2e test blocks a client's UDP inside its namespace
#   chromium                 Debian's browser, driven headless by playwright-core (never a downloaded build)
#   nodejs, npm              run playwright-core and install scripts/browser's npm packages
#   redis-server             the cluster tests' shared state (tests/redis_server.py starts its own)
#   iptables                 firewall rules inside a test's namespace (the TURN e2e test blocks UDP)
#   gcc, python3-dev         `make native` compiles trio_sfu/native's cffi extensions (the batch UDP reader
#                            and the fan-out, whose SRTP is pylibsrtp's own libsrtp); without them the
#                            server runs the pure-Python twins
#   libnss3-tools (certutil) Chromium's NSS database: the TURN e2e test makes it trust the TURN certificate
#   janus                    optional, for the benchmarks: Janus side by side (`python -m bench livestream
#                            --server janus`) and tests/test_janus_adapter.py (bench/janus/setup.sh
#                            installs it alone)
#   scripts/browser/node_modules   livekit-client + playwright-core, and esbuild (rebuilds the playground's
#                            livekit-client bundle to check the committed one), from package-lock.json (npm ci)
#   .venv-agents             the real `livekit-agents` for tests/e2e/test_e2e_agents.py, from
#                            tests/e2e/agents-requirements.txt, in a venv of its own (it pins an older
#                            `livekit` SDK than the suite's); rebuilt when the requirements change
# Each step is skipped when its result is already present, so a second run is a no-op.
#
# Two modes. By default nothing here fails the build: what cannot be installed (not root, no
# apt-get, no network) is reported, and the tests that need it skip naming what is missing.
# With TRIO_SFU_REQUIRE_E2E=1 (CI: .ci/run sets it) the end-to-end tests must run, so a failed
# step or anything still missing at the end (including a network namespace that cannot be made)
# exits non-zero: CI fails here, naming it, instead of going green with those tests skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-deps: $*" >&2; }
require=0
[ "${TRIO_SFU_REQUIRE_E2E:-}" = 1 ] && require=1
chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
failed=()
step_failed() { say "$*"; failed+=("$*"); }

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need_apt+=(iptables)
[ -x "$chromium" ] || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need_apt+=(iptables)
command -v certutil >/dev/null 2>&1 || need_apt+=(libnss3-tools)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py=.venv/bin/python
py_include="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)"
[ -n "$py_include" ] && [ -f "$py_include/Python.h" ] || need_apt+=(python3-dev)
command -v janus >/dev/null 2>&1 || need_apt+=(janus)
if ! command -v node >/dev/null 2>&1; then
    need_apt+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
    # A node from elsewhere usually bundles npm; only Debian's nodejs needs the separate package.
    need_apt+=(npm)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing ${need_apt[*]}"
        apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
            || step_failed "apt-get install ${need_apt[*]} failed"
    else
        step_failed "cannot install ${need_apt[*]} (not root or no apt-get)"
    fi
fi

# npm ci when node_modules is missing or older than the lock file. npm writes its own copy of
# the resolved tree to node_modules/.package-lock.json; it differing from package-lock.json
# means the lock file changed since the last install.
browser=scripts/browser
installed=$browser/node_modules/.package-lock.json
if command -v npm >/dev/null 2>&1; then
    stale=0
    if [ ! -f "$installed" ]; then
        stale=1
    elif ! node -e '
        const fs = require("fs");
        const want = JSON.parse(fs.readFileSync(process.argv[1])).packages || {};
        const have = JSON.parse(fs.readFileSync(process.argv[2])).packages || {};
        for (const [k, v] of Object.entries(want)) {
          if (k === "" || v.optional) continue;
          if (!have[k] || have[k].version !== v.version) process.exit(1);
        }' "$browser/package-lock.json" "$installed" 2>/dev/null; then
        stale=1
    fi
    if [ $stale = 1 ]; then
        say "npm ci in $browser"
        (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error) || step_failed "npm ci in $browser failed"
    fi
fi

# The agent framework's venv: made once per requirements file (its copy inside marks it done).
agents_venv=.venv-agents
agents_reqs=tests/e2e/agents-requirements.txt
python_bin="${PYTHON:-python3}"
if ! cmp -s "$agents_reqs" "$agents_venv/.requirements.txt" 2>/dev/null; then
    say "creating $agents_venv (livekit-agents)"
    rm -rf "$agents_venv"
    if "$python_bin" -m venv "$agents_venv" \
        && "$agents_venv/bin/python" -m pip install -q --disable-pip-version-check -r "$agents_reqs"; then
        cp "$agents_reqs" "$agents_venv/.requirements.txt"
    else
        step_failed "creating $agents_venv failed"
    fi
fi

# What the end-to-end tests will look for, checked after the installs.
missing=()
command -v ip >/dev/null 2>&1 || missing+=("ip (iproute2)")
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=("iptables")
[ -x "$chromium" ] || missing+=("Chromium at $chromium")
command -v redis-server >/dev/null 2>&1 || missing+=("redis-server")
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=("iptables")
command -v certutil >/dev/null 2>&1 || missing+=("certutil (libnss3-tools)")
command -v janus >/dev/null 2>&1 || missing+=("janus")
command -v node >/dev/null 2>&1 || missing+=("node")
[ -f "$agents_venv/.requirements.txt" ] || missing+=("$agents_venv (livekit-agents)")
for package in playwright-core livekit-client esbuild; do
    [ -d "$browser/node_modules/$package" ] || missing+=("$browser/node_modules/$package")
done
if [ "$(id -u)" != 0 ]; then
    missing+=("root, to create network namespaces")
elif command -v ip >/dev/null 2>&1; then
    # The namespace the e2e tests make (trio_sfu/testing/netns.py): one with a dummy or ifb link.
    ns="trio-sfu-deps-check-$$"
    if ip netns add "$ns" 2>/dev/null; then
        ip -n "$ns" link add t0 type dummy 2>/dev/null || ip -n "$ns" link add t0 type ifb 2>/dev/null \
            || missing+=("a dummy or ifb link in a network namespace")
        ip netns delete "$ns" 2>/dev/null || step_failed "could not delete the check namespace $ns"
    else
        missing+=("a network namespace (ip netns add failed)")
    fi
fi

if [ ${#missing[@]} -eq 0 ] && [ ${#failed[@]} -eq 0 ]; then
    exit 0
fi
for item in "${missing[@]}"; do say "missing: $item"; done
if [ $require = 1 ]; then
    say "TRIO_SFU_REQUIRE_E2E=1: the end-to-end tests must run here, and cannot (see above)"
    exit 1
fi
[ ${#missing[@]} -gt 0 ] && say "the tests that need what is missing will skip, naming it"
exit 0
