"""Shared set-up for the benchmarks: a real server, a key, a local dataset and a real-time experiment."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the real-service starters (Orthanc) the tests use

from medcloud.devserver import Server, create_key  # noqa: E402  (after the sys.path set-up)

ORG = "bench"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<34} n={len(ms):3d}  p50={percentile(ms, 50):9.1f} ms  p95={percentile(ms, 95):9.1f} ms  "
        f"p99={percentile(ms, 99):9.1f} ms  mean={statistics.mean(ms):9.1f} ms"
    )


@dataclass
class Client:
    """An authenticated HTTP client on one org of a running server."""

    server: Server
    http: httpx.Client

    @classmethod
    def login(cls, server: Server) -> Client:
        key = create_key(server.data_dir, ORG, "bench")
        http = httpx.Client(base_url=f"{server.url}/api/v1/orgs/{ORG}", timeout=600)
        token = httpx.post(f"{server.url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        return cls(server=server, http=http)

    def dataset(self, folder: Path) -> str:
        resp = self.http.post("/datasets", json={"name": "bench", "client_url": str(folder)})
        resp.raise_for_status()
        return resp.json()["id"]

    def realtime_experiment(self, dataset_id: str, bundle: Path, timeout: int = 600, **extra) -> tuple[str, float]:
        """Create a real-time experiment; return its id and how long the POST took."""
        started = time.perf_counter()
        resp = self.http.post(
            "/experiments",
            json={
                "name": "bench",
                "network_arch": "monai_custom",
                "train_datasets": [dataset_id],
                "realtime_infer": True,
                "realtime_infer_request_timeout": timeout,
                "bundle_url": str(bundle),
                **extra,
            },
        )
        resp.raise_for_status()
        return resp.json()["id"], time.perf_counter() - started

    def infer(self, experiment_id: str, image_id: str) -> float:
        started = time.perf_counter()
        resp = self.http.post(
            f"/experiments/{experiment_id}/jobs", json={"action": "inference", "specs": {"image": image_id}}
        )
        elapsed = time.perf_counter() - started
        if resp.status_code != 201:
            raise RuntimeError(resp.text)
        return elapsed

    def cache(self, dataset_id: str, image_id: str) -> None:
        self.http.post(
            f"/datasets/{dataset_id}/jobs", json={"action": "cacheimage", "specs": {"image": image_id}}
        ).raise_for_status()


def single_image_dataset(folder: Path, image: Path) -> str:
    """A manifest with one image; returns the image id."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / image.name).write_bytes(image.read_bytes())
    image_id = "00000000-0000-4000-8000-000000000001"
    (folder / "manifest.json").write_text(json.dumps({"data": [{"image": {"path": [image.name], "id": image_id}}]}))
    return image_id


def wait_job(client: Client, experiment_id: str, job_id: str, statuses: set[str], timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.http.get(f"/experiments/{experiment_id}/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not reach {statuses}")
