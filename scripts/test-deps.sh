#!/usr/bin/env bash
# Installs what the test suite needs that pip cannot: Debian packages and npm packages.
# Each step is skipped when its result is already present.
set -uo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg_bin in "iproute2:ip"; do
    pkg=${pkg_bin%%:*}; bin=${pkg_bin##*:}
    command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "test-deps: cannot install ${need_apt[*]} (not root or no apt-get); tests needing them skip" >&2
    fi
fi
exit 0
