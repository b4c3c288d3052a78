#!/usr/bin/env bash
# Refresh the vendored NiiVue build (src/medcloud/viewer/static/vendor/) from its npm package.
# Usage: scripts/update-niivue.sh [VERSION]   (default: the version in vendor/NIIVUE_VERSION)
# Needs npm (only this script does: neither pip install nor the tests need Node). It copies the
# package's self-contained ESM build (dist/index.js, no imports, no bundler needed), writes its
# version and sha256, and keeps NiiVue's BSD-2-Clause licence next to it. tests/test_viewer_static.py
# checks the file against the recorded checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=src/medcloud/viewer/static/vendor
version="${1:-$(cat "$vendor/NIIVUE_VERSION")}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@niivue/niivue@$version" >/dev/null && tar xzf niivue-niivue-*.tgz)
license=$(node -e "console.log(require('$work/package/package.json').license)")
[ "$license" = "BSD-2-Clause" ] || { echo "NiiVue $version is licensed $license, not BSD-2-Clause: check before vendoring" >&2; exit 1; }
if grep -q "^import \|import(" "$work/package/dist/index.js"; then
  echo "NiiVue $version's dist/index.js imports other files: it is no longer self-contained" >&2; exit 1
fi
cp "$work/package/dist/index.js" "$vendor/niivue.js"
echo "$version" > "$vendor/NIIVUE_VERSION"
(cd "$vendor" && sha256sum niivue.js > niivue.js.sha256)
echo "vendored @niivue/niivue $version: $(cut -c1-16 "$vendor/niivue.js.sha256")…"
