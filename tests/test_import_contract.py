"""The import contract of model code: what runs bundles never loads the server's state (issue 18).

The modules that run model code — the model host, a job's model process, and the model families they load
— run inside the sandbox and must not even import the server's context, database, secrets, ORM rows,
services or API routes: a bundle that walks `sys.modules` finds nothing of the server to call. Each entry
point is imported in a fresh interpreter, with every model family loaded, and its `sys.modules` checked.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ENTRY_POINTS = [
    "medcloud.inference.host",
    "medcloud.modelrun.main",
    "medcloud.modelrun.train",
    "medcloud.modelrun.batch",
]
FORBIDDEN_EXACT = {"medcloud.context", "medcloud.db", "medcloud.secrets", "medcloud.app", "medcloud.leader"}
FORBIDDEN_PARTS = {"orm", "service", "api", "router", "lifecycle"}

LOADER = """
import json, sys, importlib
importlib.import_module(sys.argv[1])
from medcloud.families.registry import families
for family in families():
    family.predictor  # the families' modules, as a host or job loads them
import medcloud.families.vista3d.predictor, medcloud.families.deepedit.predictor, medcloud.families.vista3d.train
print(json.dumps(sorted(m for m in sys.modules if m.startswith("medcloud"))))
"""


def _forbidden(module: str) -> bool:
    parts = module.split(".")
    return module in FORBIDDEN_EXACT or any(part in FORBIDDEN_PARTS for part in parts[1:])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_model_code_modules_never_import_the_servers_state(entry):
    proc = subprocess.run([sys.executable, "-c", LOADER, entry], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert entry in loaded
    assert [m for m in loaded if _forbidden(m)] == []


def test_the_contract_check_catches_a_server_module():
    assert _forbidden("medcloud.datasets.service") and _forbidden("medcloud.auth.orm")
    assert _forbidden("medcloud.api.deps") and _forbidden("medcloud.context")
    assert not _forbidden("medcloud.inference.host") and not _forbidden("medcloud.jobs.spec")
