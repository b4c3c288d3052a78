#!/usr/bin/env bash
# Installs everything medcloud needs on a fresh Debian machine: the Python environment in .venv/
# (CPU PyTorch first, so pip never pulls a CUDA build) and, with --test, the services the test
# suite starts (Orthanc with DICOMweb, Azurite from npm, PostgreSQL) and Debian's chromium for the viewer tests. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

stamp=.venv/.medcloud-installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  # torch first: the CPU wheel lies on this disk; anything else would fetch a CUDA build.
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install --quiet "torch==2.13.0"
  .venv/bin/pip install --quiet -e ".[test,ray,postgres]"
  touch "$stamp"
fi

# Model code runs in a bubblewrap sandbox (docs/security.md): Debian's `bubblewrap`; `prlimit` and `setpriv`
# come with util-linux.
if ! command -v bwrap >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bubblewrap >/dev/null
fi

if [ "$want_test" = 1 ]; then
  if ! command -v Orthanc >/dev/null 2>&1 || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
  fi
  # The viewer's browser tests: Debian's chromium, driven by playwright (which cannot download its own here).
  if ! command -v chromium >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  # PostgreSQL 15 for tests/postgres.py, which starts its own server in a temporary folder (initdb and
  # pg_ctl from PATH or /usr/lib/postgresql/<version>/bin). No cluster is created or started here.
  if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    $SUDO mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/medcloud.conf >/dev/null
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  if [ ! -x node_modules/.bin/azurite-blob ]; then
    npm ci --silent --no-audit --no-fund
  fi
fi
