#!/usr/bin/env bash
# Bundles livekit-client (the version pinned in scripts/browser/package-lock.json) into one ES
# module for the playground page: trio_sfu/api/playground/livekit-client.js, committed, so that
# installing trio-sfu needs no node (trio_sfu/api/playground/__init__.py says why).
#
#   bash scripts/build_playground.sh            rebuild the committed bundle
#   bash scripts/build_playground.sh OUT.js     build elsewhere (tests/test_playground_bundle.py
#                                               compares that with the committed file)
#
# Needs scripts/browser/node_modules (npm ci there: livekit-client and the esbuild devDependency).
# The output depends only on those two pinned versions: same lock file, same bytes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
browser="$root/scripts/browser"
out="${1:-$root/trio_sfu/api/playground/livekit-client.js}"
esbuild="$browser/node_modules/.bin/esbuild"
if [ ! -x "$esbuild" ] || [ ! -d "$browser/node_modules/livekit-client" ]; then
    echo "build_playground: run 'npm ci' in scripts/browser first (livekit-client, esbuild)" >&2
    exit 1
fi
version() { node -p "require('$browser/node_modules/$1/package.json').version"; }
livekit_version="$(version livekit-client)"
esbuild_version="$(version esbuild)"
banner="/*! livekit-client ${livekit_version} (Apache-2.0, https://github.com/livekit/client-sdk-js) with its dependencies, bundled for trio-sfu's playground by scripts/build_playground.sh with esbuild ${esbuild_version}. Generated: do not edit. */"
# --legal-comments=eof keeps the bundled packages' license notices; no sourcemap (the npm
# package has the sources); --log-level=warning keeps a successful build quiet.
(cd "$browser" && "$esbuild" playground_entry.mjs --bundle --format=esm --platform=browser --minify \
    --legal-comments=eof --charset=utf8 --log-level=warning "--banner:js=$banner" "--outfile=$out")
