#!/usr/bin/env bash
# Set everything up (Python env, Orthanc, Azurite) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
set +e
# Two workers (one per core of the machine CI runs on); each test module runs whole on one of them
# (tests/conftest.py). MEDCLOUD_TEST_WORKERS=0 runs the suite in this one process. One math thread per
# process unless set: the workers' servers, model hosts and jobs already fill the cores, and spinning
# OpenMP threads on a busy core cost more than they give (docs/testing.md).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
.venv/bin/python -m pytest -p no:cacheprovider -n "${MEDCLOUD_TEST_WORKERS:-2}" --dist loadgroup "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
