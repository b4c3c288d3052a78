#!/usr/bin/env bash
# Set everything up (Python env, Orthanc, Azurite) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
set +e
# Two workers (one per core of the machine CI runs on); each test module runs whole on one of them
# (tests/conftest.py). MEDCLOUD_TEST_WORKERS=0 runs the suite in this one process.
.venv/bin/python -m pytest -p no:cacheprovider -n "${MEDCLOUD_TEST_WORKERS:-2}" --dist loadgroup "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
