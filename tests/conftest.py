"""Shared fixtures: an in-process app with real model hosts, users in two orgs, and trained demo bundles."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow_server import mlflow_url  # noqa: F401  (session fixtures of real services, for every test module)
from orthanc import empty_orthanc_fixture, orthanc_fixture  # noqa: F401
from postgres import database_per_test, pg_database, postgres_server, postgres_url  # noqa: F401
from ray_cluster import ray_cluster  # noqa: F401  (one real local Ray cluster per test run)
from services import azurite, s3_server  # noqa: F401

from medcloud.app import create_app
from medcloud.auth import service as auth
from medcloud.config import Settings
from medcloud.context import Context

REPO = Path(__file__).resolve().parents[1]
# Test workers (pytest-xdist, scripts/test.sh) run servers side by side: each worker's model code gets its
# own uid range, as two servers on one machine must (a shared uid would share process limits and folders).
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
os.environ.setdefault("MEDCLOUD_SANDBOX_UID_BASE", str(2_100_000_000 + WORKER * 50_000_000))
# Trained demo bundles are deterministic: build them once per checkout and reuse them.
BUNDLE_CACHE = Path(os.environ.get("MEDCLOUD_TEST_CACHE", REPO / ".medcloud" / "test-cache"))


@dataclass
class Api:
    """A running app plus logged-in users: alice and bob in org `acme`, eve in org `other`."""

    client: TestClient
    ctx: Context
    tokens: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def url(self, path: str, org: str = "acme") -> str:
        return f"/api/v1/orgs/{org}/{path.lstrip('/')}"

    def get(self, path: str, user: str = "alice", org: str = "acme", **kw):  # type: ignore[no-untyped-def]
        return self.client.get(self.url(path, org), headers=self.headers(user), **kw)

    def post(self, path: str, user: str = "alice", org: str = "acme", **kw):  # type: ignore[no-untyped-def]
        return self.client.post(self.url(path, org), headers=self.headers(user), **kw)

    def patch(self, path: str, user: str = "alice", org: str = "acme", **kw):  # type: ignore[no-untyped-def]
        return self.client.patch(self.url(path, org), headers=self.headers(user), **kw)

    def delete(self, path: str, user: str = "alice", org: str = "acme", **kw):  # type: ignore[no-untyped-def]
        return self.client.delete(self.url(path, org), headers=self.headers(user), **kw)


USERS = {"alice": "acme", "bob": "acme", "eve": "other"}
# Tests fetch bundles, images, storage (moto, Azurite), DICOMweb (Orthanc) and MLflow from this machine and
# use local bundle paths and local datasets in temporary folders: allowed explicitly here, as the server's
# defaults refuse them. Any setting passed to make_api overrides these.
LOCAL_TEST_SETTINGS: dict[str, object] = {
    "egress_allowed_networks": ["127.0.0.0/8", "::1/128"],
    "bundle_allow_local_paths": True,
    "bundle_allowed_hosts": ["127.0.0.1", "localhost"],
    "dataset_allow_local_paths": True,
    "dataset_local_roots": {"*": ["/"]},
}


@contextlib.contextmanager
def make_api(data_dir: Path, **settings: object) -> Iterator[Api]:
    data_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context.build(Settings(data_dir=data_dir, demo=False, **{**LOCAL_TEST_SETTINGS, **settings}))
    with TestClient(create_app(context=ctx)) as client:
        api = Api(client=client, ctx=ctx)
        for user, org in USERS.items():
            with ctx.db.session() as session:
                api.keys[user] = auth.create_api_key(session, org=org, user=user)
            resp = client.post("/api/v1/login", json={"ngc_api_key": api.keys[user]})
            assert resp.status_code == 201, resp.text
            api.tokens[user] = resp.json()["token"]
        yield api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with make_api(tmp_path / "data") as running:
        yield running


@pytest.fixture(scope="session")
def demo_bundles() -> dict[str, Path]:
    from medcloud.demo.bundles import ensure_demo_bundles

    return ensure_demo_bundles(BUNDLE_CACHE)


@pytest.fixture(scope="session")
def demo_zips(demo_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo bundles packed as zip archives, as a user would upload them."""
    from medcloud.demo.bundles import pack_bundle

    out = tmp_path_factory.mktemp("zips")
    return {kind: pack_bundle(folder, out, "zip") for kind, folder in demo_bundles.items()}


@pytest.fixture
def local_dataset(tmp_path: Path) -> Path:
    """A synthetic dataset folder with manifest.json (CT NIfTIs, some labeled, and RGB PNGs)."""
    from medcloud.demo.synthetic import write_demo_dataset

    return write_demo_dataset(tmp_path / "dataset").parent


@pytest.fixture(scope="session")
def weak_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained segmentation bundle (zip): continual learning has something to improve."""
    from medcloud.demo.bundles import make_segmentation_bundle, pack_bundle

    folder = make_segmentation_bundle(tmp_path_factory.mktemp("weak"), name="weak_seg", train=False, seed=3)
    return pack_bundle(folder, tmp_path_factory.mktemp("weakzip"), "zip")


@pytest.fixture(scope="session")
def vista_bundle() -> Path:
    """The small VISTA-3D trained on synthetic CT (spleen = 3): the demo's own, built once into the test cache."""
    from medcloud.families.vista3d.demo import ensure_demo_vista3d

    return ensure_demo_vista3d(BUNDLE_CACHE)


@pytest.fixture(scope="session")
def deepedit_bundle() -> Path:
    """The small DeepEdit trained on synthetic CT (bright blobs = spleen): the demo's own, built once."""
    from medcloud.families.deepedit.demo import ensure_demo_deepedit

    return ensure_demo_deepedit(BUNDLE_CACHE)


# -- running on several workers (pytest-xdist, `--dist loadgroup` in scripts/test.sh) -------------------------

# Modules that share an expensive session service run on one worker: it starts once.
SHARED_GROUPS = {"test_ray_hosts": "ray", "test_ray_jobs": "ray", "test_sandbox_ray": "ray"}
# The longest modules start first, so that no worker is left with one long module at the end (seconds on a
# 2-core machine, from a serial run's durations; the rest keep their order).
LONG_FIRST = [
    "test_vista3d_api",
    "test_sandbox",
    "ray",
    "test_notebooks",
    "test_viewer_e2e",
    "test_vista3d",
    "test_deepedit_api",
    "test_fuzz",
    "test_realtime_inference",
    "test_accelerated_inference",
    "test_demo_annotation",
    "test_guide_001",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test module runs whole on one worker (its module-scoped servers are built once), modules sharing a
    session service run on the same worker, and the longest start first."""

    def group(item: pytest.Item) -> str:
        module = item.module.__name__ if item.module is not None else item.nodeid
        return SHARED_GROUPS.get(module, module)

    rank = {name: index for index, name in enumerate(LONG_FIRST)}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=lambda item: rank.get(group(item), len(rank)))  # stable: the rest keep their order
