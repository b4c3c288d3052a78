"""Training overhead: a medcloud train job vs `python -m monai.bundle run` of the same bundle, data, epochs.

Both train the same `configs/train.json` on the same synthetic volumes for the same number of epochs, with
the same overrides. The job's wall time runs from POST to Done (includes process start, data lists, result
upload-to-folder); the direct run's from process start to exit. The last line is the ratio.

- default: the demo segmentation bundle (goal <= 1.10).
- `--zoo`: the model zoo's own `spleen_ct_segmentation` configs verbatim (from ../shared/reference/model-zoo,
  random weights) on small data: 2 train + 1 validation volumes of 32³, the 96³ crop and sliding window set
  to 32³, epochs by `train#trainer#max_epochs` as the notebooks do (goal <= 1.05).
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
from medcloud.demo.synthetic import stable_id, write_demo_dataset, write_synthetic_ct
from medcloud.devserver import medcloud_serve

ZOO_BUNDLE = "spleen_ct_segmentation"
ZOO_SHAPE = (32, 32, 32)
ZOO_OVERRIDES = {
    "val_interval": 1,
    "train#random_transforms#0#spatial_size": list(ZOO_SHAPE),
    "validate#inferer#roi_size": list(ZOO_SHAPE),
}


def labeled_items(root: Path) -> list[dict[str, str]]:
    manifest = json.loads((root / "manifest.json").read_text())
    return [
        {"image": str(root / e["image"]["path"][0]), "label": str(root / e["label"]["path"][0])}
        for e in manifest["data"]
        if "label" in e
    ]


def ct_folder(root: Path, count: int, seed: int) -> Path:
    """`count` labeled synthetic CTs of `ZOO_SHAPE` with a manifest.json; the folder."""
    data = []
    for i in range(count):
        image, label = f"imagesTr/ct_{seed + i}.nii.gz", f"labelsTr/ct_{seed + i}.nii.gz"
        write_synthetic_ct(root / image, root / label, seed=seed + i, shape=ZOO_SHAPE, rad_min=5, rad_max=9)
        data.append(
            {"image": {"path": [image], "id": stable_id(image)}, "label": {"path": [label], "id": stable_id(label)}}
        )
    (root / "manifest.json").write_text(json.dumps({"label_key": ["label"], "data": data}))
    return root


def direct_run(bundle: Path, train: Path, val: Path, overrides: dict, out: Path) -> float:
    args = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs/train.json"),
        "--meta_file", str(bundle / "configs/metadata.json"),
        "--bundle_root", str(bundle),
        "--logging_file", str(bundle / "configs/logging.conf"),
        "--ckpt_dir", f"$'{out}/models'",
        "--output_dir", f"$'{out}/eval'",
        "--train#dataset#data", json.dumps(labeled_items(train)),
        "--validate#dataset#data", json.dumps(labeled_items(val)),
    ]  # fmt: skip
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value)]
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - started


def job_run(client: Client, bundle: Path, train: Path, val: Path, specs: dict) -> float:
    train_id = client.dataset(train)
    val_id = train_id if val == train else client.dataset(val)
    exp = client.http.post(
        "/experiments",
        json={
            "name": "t",
            "network_arch": "monai_segmentation",
            "train_datasets": [train_id],
            "eval_dataset": val_id,
            "bundle_url": str(bundle),
        },
    ).json()["id"]
    started = time.perf_counter()
    job = client.http.post(f"/experiments/{exp}/jobs", json={"action": "train", "specs": specs}).json()
    done = wait_job(client, exp, job, {"Done", "Error"}, timeout=3600)
    if done["status"] != "Done":
        raise RuntimeError(done["result"])
    return time.perf_counter() - started


def zoo_setup(work: Path, epochs: int) -> tuple[Path, Path, Path, dict]:
    """The zoo's spleen bundle (random weights), its train and validation folders, and the overrides."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from model_zoo import MODEL_ZOO, NO_MODEL_ZOO, zoo_bundle_folder

    if not MODEL_ZOO.is_dir():
        raise SystemExit(NO_MODEL_ZOO)
    bundle = zoo_bundle_folder(ZOO_BUNDLE, work / "zoo")
    train, val = ct_folder(work / "train", 2, seed=100), ct_folder(work / "val", 1, seed=200)
    return bundle, train, val, {"train#trainer#max_epochs": epochs, **ZOO_OVERRIDES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--zoo", action="store_true", help=f"the model zoo's {ZOO_BUNDLE} train.json, not the demo's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.zoo:
            bundle, train, val, overrides = zoo_setup(work, args.epochs)
        else:
            bundle = ensure_demo_bundles(Path(__file__).resolve().parents[1] / ".medcloud" / "test-cache")[
                "segmentation"
            ]
            train = val = write_demo_dataset(work / "data").parent
            overrides = {"epochs": args.epochs}
        direct = [direct_run(bundle, train, val, overrides, work / f"direct{i}") for i in range(args.repeats)]
        with medcloud_serve(work / "server") as server:
            client = Client.login(server)
            jobs = [job_run(client, bundle, train, val, overrides) for _ in range(args.repeats)]
    name = ZOO_BUNDLE if args.zoo else "demo segmentation"
    print(f"python -m monai.bundle run : {', '.join(f'{t:.1f} s' for t in direct)}")
    print(f"medcloud train job        : {', '.join(f'{t:.1f} s' for t in jobs)}")
    print(
        f"RATIO training overhead ({name}, best job / best direct, {args.epochs} epochs): {min(jobs) / min(direct):.3f}"
    )


if __name__ == "__main__":
    main()
