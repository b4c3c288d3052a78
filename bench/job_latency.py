"""Job latency through the API, local backend vs Ray Jobs: submit → Running, and cancel → Canceled.

For each backend a real `medcloud serve` (Ray: on a local Ray cluster this script starts and stops
itself, its settings naming the cluster) trains the demo segmentation bundle with many epochs, one job
at a time, and measures per job:

- `submit → Running`: POST .../jobs until GET .../jobs/{id} says Running (the scheduler's claim, written
  just before it hands the job to the backend);
- `submit → worker started`: POST until GET .../logs shows the worker's first line (the job really
  runs on its backend: a process here, a Ray job's entrypoint there);
- `cancel → Canceled`: once the model trains, POST :cancel until it answers (it returns when Canceled
  is recorded and nothing of the job runs; checked with a GET right after).

Medians and p90 per backend, then the Ray / local ratios of the medians on the last line. Model code
runs in the sandbox on both backends where the machine has one (a root server with the set-up's group).

Run: `.venv/bin/python bench/job_latency.py [--jobs 5]`.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import Client, percentile, wait_job

from medcloud.demo.bundles import ensure_demo_bundles, pack_bundle
from medcloud.demo.synthetic import write_demo_dataset
from medcloud.devserver import medcloud_serve

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 10_000  # never ends by itself: every job is cancelled


@contextlib.contextmanager
def server(kind: str, work: Path) -> Iterator[Client]:
    env = {"MEDCLOUD_MAX_TRAIN_JOBS": "1"}
    if kind == "local":
        with medcloud_serve(work / "local", env=env) as running:
            yield Client.login(running)
        return
    from ray_cluster import start_cluster, stop_cluster  # tests/ray_cluster.py: never `ray stop`

    cluster, proc = start_cluster()
    try:
        env |= {
            "MEDCLOUD_RAY_ADDRESS": cluster.address,
            "MEDCLOUD_RAY_DASHBOARD_URL": cluster.dashboard_url,
            "MEDCLOUD_RAY_SHARED_DIR": str(cluster.shared_dir),
        }
        with medcloud_serve(work / "ray", env=env) as running:
            yield Client.login(running)
    finally:
        stop_cluster(cluster, proc)


def poll(condition, timeout: float = 600, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("timed out")


def one_job(client: Client, experiment_id: str) -> dict[str, float]:
    base = f"/experiments/{experiment_id}/jobs"
    posted = time.perf_counter()
    resp = client.http.post(base, json={"action": "train", "specs": {"epochs": EPOCHS}})
    resp.raise_for_status()
    job_id = resp.json()
    wait_job(client, experiment_id, job_id, {"Running"}, timeout=120)
    running = time.perf_counter() - posted

    def worker_started() -> bool:
        logs = client.http.get(f"{base}/{job_id}/logs")
        return logs.status_code == 200 and f"Job {job_id}: worker started" in logs.text

    poll(worker_started)
    started = time.perf_counter() - posted
    poll(lambda: client.http.get(f"{base}/{job_id}").json()["result"].get("max_epoch"), interval=0.2)
    cancel_at = time.perf_counter()
    resp = client.http.post(f"{base}/{job_id}:cancel")
    canceled = time.perf_counter() - cancel_at
    resp.raise_for_status()
    status = client.http.get(f"{base}/{job_id}").json()["status"]
    if status != "Canceled":
        raise RuntimeError(f"job {job_id} is {status} after its cancel answered")
    return {"submit → Running": running, "submit → worker started": started, "cancel → Canceled": canceled}


def measure(kind: str, work: Path, bundle_zip: Path, dataset: Path, jobs: int) -> dict[str, list[float]]:
    with server(kind, work) as client:
        dataset_id = client.dataset(dataset)
        resp = client.http.post(
            "/experiments",
            json={
                "name": "latency",
                "network_arch": "monai_segmentation",
                "train_datasets": [dataset_id],
                "eval_dataset": dataset_id,
                "bundle_url": str(bundle_zip),
            },
        )
        resp.raise_for_status()
        experiment_id = resp.json()["id"]
        figures: dict[str, list[float]] = {}
        for i in range(jobs + 1):
            result = one_job(client, experiment_id)
            print(f"  {kind} job {i}{' (warm-up, not counted)' if i == 0 else ''}: "
                  + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.items()), flush=True)  # fmt: skip
            if i > 0:
                for name, seconds in result.items():
                    figures.setdefault(name, []).append(seconds)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5, help="measured jobs per backend (after one warm-up job)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="joblat-") as tmp:
        work = Path(tmp)
        bundle = ensure_demo_bundles(REPO / ".medcloud" / "test-cache")["segmentation"]
        bundle_zip = pack_bundle(bundle, work, "zip")
        dataset = write_demo_dataset(work / "dataset").parent
        results = {kind: measure(kind, work, bundle_zip, dataset, args.jobs) for kind in ("local", "ray")}
    for kind, figures in results.items():
        for name, seconds in figures.items():
            print(f"{kind:<6} {name:<24} n={len(seconds)}  p50={percentile(seconds, 50):7.2f} s  "
                  f"p90={percentile(seconds, 90):7.2f} s")  # fmt: skip
    ratios = [
        f"{name} {percentile(results['ray'][name], 50) / percentile(results['local'][name], 50):.2f}"
        for name in results["local"]
    ]
    print("RATIO ray / local (medians): " + "; ".join(ratios))


if __name__ == "__main__":
    main()
