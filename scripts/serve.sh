#!/usr/bin/env bash
# Set everything up (first run only) and start medcloud with its embedded defaults:
# SQLite and local storage under ./data, a demo org/user/key, demo dataset and demo bundles.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The demo's bundles are zip files on this machine: allow local bundle paths here explicitly (the
# server's default refuses them, a bundle is code). Set it to false before calling to keep them off.
export MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS="${MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS:-true}"
# The demo's datasets are folders in data/demo: local dataset paths are on here (off by default), and the
# demo org may use its own demo folder only (add folders per org with MEDCLOUD_DATASET_LOCAL_ROOTS).
export MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS="${MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS:-true}"
exec .venv/bin/medcloud serve "$@"
