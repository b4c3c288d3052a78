"""Training overhead: a medcloud train job vs `python -m monai.bundle run` of the same bundle, data, epochs.

Both train the demo segmentation bundle's own `configs/train.json` on the same synthetic volumes for the
same number of epochs. The job's wall time runs from POST to Done (includes process start, data lists,
result upload-to-folder). The last line is the ratio (goal <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Client, wait_job

from medcloud.demo.bundles import ensure_demo_bundles
from medcloud.demo.synthetic import write_demo_dataset
from medcloud.devserver import medcloud_serve


def direct_run(bundle: Path, root: Path, epochs: int, out: Path) -> float:
    manifest = json.loads((root / "manifest.json").read_text())
    items = [
        {"image": str(root / e["image"]["path"][0]), "label": str(root / e["label"]["path"][0])}
        for e in manifest["data"]
        if "label" in e
    ]
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(bundle / "configs/train.json"),
            "--meta_file",
            str(bundle / "configs/metadata.json"),
            "--bundle_root",
            str(bundle),
            "--logging_file",
            str(bundle / "configs/logging.conf"),
            "--epochs",
            str(epochs),
            "--ckpt_dir",
            f"$'{out}/models'",
            "--output_dir",
            f"$'{out}/eval'",
            "--train#dataset#data",
            json.dumps(items),
            "--validate#dataset#data",
            json.dumps(items),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def job_run(client: Client, bundle: Path, root: Path, epochs: int) -> float:
    dataset_id = client.dataset(root)
    exp = client.http.post(
        "/experiments",
        json={
            "name": "t",
            "network_arch": "monai_segmentation",
            "train_datasets": [dataset_id],
            "eval_dataset": dataset_id,
            "bundle_url": str(bundle),
        },
    ).json()["id"]
    started = time.perf_counter()
    job = client.http.post(f"/experiments/{exp}/jobs", json={"action": "train", "specs": {"epochs": epochs}}).json()
    done = wait_job(client, exp, job, {"Done", "Error"})
    if done["status"] != "Done":
        raise RuntimeError(done["result"])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = ensure_demo_bundles(Path(__file__).resolve().parents[1] / ".medcloud" / "test-cache")["segmentation"]
        root = write_demo_dataset(work / "data").parent
        direct = [direct_run(bundle, root, args.epochs, work / f"direct{i}") for i in range(args.repeats)]
        with medcloud_serve(work / "server") as server:
            client = Client.login(server)
            jobs = [job_run(client, bundle, root, args.epochs) for _ in range(args.repeats)]
    print(f"python -m monai.bundle run : {', '.join(f'{t:.1f} s' for t in direct)}")
    print(f"medcloud train job        : {', '.join(f'{t:.1f} s' for t in jobs)}")
    print(f"RATIO training overhead (best job / best direct, {args.epochs} epochs): {min(jobs) / min(direct):.3f}")


if __name__ == "__main__":
    main()
