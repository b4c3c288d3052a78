"""Notify → train job Running: how fast the annotation controller reacts to a notification.

An annotation job with round_size 1 waits; each `notify` should start a train job at once (the
reference polls every 15 s). Prints each latency; the last line is the median (goal < 2 s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import Client, wait_job

from medcloud.demo.bundles import ensure_demo_bundles
from medcloud.demo.synthetic import write_demo_dataset
from medcloud.devserver import medcloud_serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = ensure_demo_bundles(Path(__file__).resolve().parents[1] / ".medcloud" / "test-cache")
        root = write_demo_dataset(work / "data").parent
        with medcloud_serve(work / "server") as server:
            client = Client.login(server)
            dataset_id = client.dataset(root)
            exp = client.http.post(
                "/experiments",
                json={
                    "name": "notify",
                    "network_arch": "monai_segmentation",
                    "train_datasets": [dataset_id],
                    "eval_dataset": dataset_id,
                    "bundle_url": str(demo["segmentation"]),
                },
            ).json()["id"]
            cl = client.http.post(
                f"/experiments/{exp}/jobs",
                json={
                    "action": "annotation",
                    "specs": {
                        "round_size": 1,
                        "stop_criteria": {"max_rounds": args.rounds},
                        "train_spec": {"epochs": 1},
                    },
                },
            ).json()
            wait_job(client, exp, cl, {"Running"})
            for index in range(args.rounds):
                seen = {j["id"] for j in client.http.get(f"/experiments/{exp}/jobs").json()["jobs"]}
                started = time.perf_counter()
                client.http.post(
                    f"/datasets/{dataset_id}/jobs",
                    json={
                        "action": "notify",
                        "specs": {"added": {"image": f"image-{index}", "label": f"label-{index}"}},
                    },
                ).raise_for_status()
                while True:
                    new = [
                        j
                        for j in client.http.get(f"/experiments/{exp}/jobs").json()["jobs"]
                        if j["id"] not in seen and j["status"] in ("Running", "Done", "Error")
                    ]
                    if new:
                        break
                    time.sleep(0.01)
                latencies.append(time.perf_counter() - started)
                print(f"round {index + 1}: notify -> train job Running in {latencies[-1] * 1000:.0f} ms")
                wait_job(client, exp, new[0]["id"], {"Done", "Error"})
    print(
        f"RATIO-free figure: median notify -> Running = {statistics.median(latencies):.2f} s (goal < 2 s; "
        "reference polls every 15 s)"
    )


if __name__ == "__main__":
    main()
