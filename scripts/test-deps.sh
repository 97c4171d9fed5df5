#!/usr/bin/env bash
# Installs what the test suite needs that pip cannot: Debian packages and npm packages.
#   iproute2 (`ip`)          network namespaces for the end-to-end tests (tests/e2e)
#   chromium                 Debian's browser, driven headless by playwright-core (never a downloaded build)
#   nodejs, npm              run playwright-core and install scripts/browser's npm packages
#   scripts/browser/node_modules   livekit-client + playwright-core, from package-lock.json (npm ci)
# Each step is skipped when its result is already present, so a second run is a no-op.
# Nothing here fails the build: what cannot be installed (not root, no apt-get, no network)
# is reported, and the tests that need it skip naming what is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-deps: $*" >&2; }

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || need_apt+=(chromium)
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
            || say "apt-get install ${need_apt[*]} failed; tests needing them skip"
    else
        say "cannot install ${need_apt[*]} (not root or no apt-get); tests needing them skip"
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
        (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error) \
            || say "npm ci failed; browser tests skip"
    fi
else
    say "no npm; browser tests skip"
fi
exit 0
