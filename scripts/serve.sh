#!/usr/bin/env bash
# Set everything up (first run only) and start medcloud with its embedded defaults:
# SQLite and local storage under ./data, a demo org/user/key, demo dataset and demo bundles.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/medcloud serve "$@"
