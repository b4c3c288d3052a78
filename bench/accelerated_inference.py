"""Accelerated inference: each mode vs `exact` vs the bundle run in-process, same bundle, weights and volume.

The model is the spleen UNet (channels 16-256, 2 residual units, batch norm), briefly trained on
synthetic CT (not random weights), served with the model zoo's own `configs/inference.json` when
`../shared/reference/model-zoo/spleen_ct_segmentation` is there (else the demo bundle's config, which has
the same network), on a 160x160x128 CT at the config's 1.5x1.5x2.0 mm spacing.

For each mode: an experiment with `model_params.inference_mode`, its first request (the check, answered
by the exact run), then `--runs` requests through HTTP. Prints p50/p95, the check's Dice, and the Dice of
the served output vs the exact output; the last line is the ratio the issue judges: best mode's e2e p50 /
exact e2e p50 (goal <= 0.5, with Dice >= 0.99).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import nrrd
import numpy as np
from common import REPO, Client, percentile, single_image_dataset, summary
from serving_overhead import in_process  # the bundle's own evaluator, built once, fp32

from medcloud.client.outputs import parse_multipart
from medcloud.demo.bundles import make_segmentation_bundle
from medcloud.demo.synthetic import write_synthetic_ct
from medcloud.devserver import medcloud_serve
from medcloud.inference.accel.compare import dice_per_label

ZOO_SPLEEN = REPO.parent / "shared" / "reference" / "model-zoo" / "spleen_ct_segmentation"
MODES = ("exact", "bf16", "openvino", "fast")


def trained_spleen_bundle(work: Path, cache: Path) -> Path:
    """The full-size spleen UNet trained briefly (cached in `cache`), with the zoo's configs when available."""
    trained = cache / "spleen_unet_trained"
    if not (trained / "models" / "model.pt").exists():
        started = time.perf_counter()
        built = make_segmentation_bundle(
            work / "build",
            name="spleen_unet_trained",
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            roi_size=(96, 96, 96),
            num_res_units=2,
            train=True,
        )
        shutil.copytree(built, trained, dirs_exist_ok=True)
        print(f"trained the full-size UNet briefly in {time.perf_counter() - started:.0f} s")
    if not ZOO_SPLEEN.is_dir():
        print("model zoo configs not found: serving with the demo bundle's config (same network)")
        return trained
    bundle = work / "spleen_ct_segmentation"
    shutil.copytree(ZOO_SPLEEN, bundle, ignore=shutil.ignore_patterns("large_files.yml"))
    (bundle / "models").mkdir(exist_ok=True)
    shutil.copy(trained / "models" / "model.pt", bundle / "models" / "model.pt")
    print(f"serving with the model zoo's configs/inference.json from {ZOO_SPLEEN}")
    return bundle


def infer(client: Client, experiment_id: str, image_id: str) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    resp = client.http.post(
        f"/experiments/{experiment_id}/jobs", json={"action": "inference", "specs": {"image": image_id}}
    )
    elapsed = time.perf_counter() - started
    if resp.status_code != 201:
        raise RuntimeError(resp.text)
    (data,) = parse_multipart(resp.content, resp.headers["content-type"]).values()
    header = nrrd.read_header(io.BytesIO(data))  # raw NRRD: header, blank line, voxels
    voxels = np.frombuffer(data[data.index(b"\n\n") + 2 :], dtype=np.uint8)
    return elapsed, voxels.reshape(tuple(int(n) for n in reversed(header["sizes"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = trained_spleen_bundle(work, REPO / ".medcloud" / "bench-cache")
        image, _ = write_synthetic_ct(
            work / "ct.nii.gz",
            work / "label.nii.gz",
            seed=5,
            shape=(160, 160, 128),
            spacing=(1.5, 1.5, 2.0),
            rad_max=30,
            rad_min=18,
            num_objs=2,
        )
        local = in_process(bundle, image, args.runs, work / "in-process-out")
        print(summary("bundle in-process (fp32)", local))
        results: dict[str, tuple[list[float], float]] = {}
        with medcloud_serve(work / "server") as server:
            client = Client.login(server)
            image_id = single_image_dataset(work / "data", image)
            dataset_id = client.dataset(work / "data")
            client.cache(dataset_id, image_id)
            reference = None
            for mode in args.modes:
                experiment_id, _ = client.realtime_experiment(dataset_id, bundle, model_params={"inference_mode": mode})
                first, answer = infer(client, experiment_id, image_id)  # the check (exact answer) for faster modes
                check = client.http.get(f"/experiments/{experiment_id}").json().get("inference")
                times, outputs = zip(*(infer(client, experiment_id, image_id) for _ in range(args.runs)), strict=True)
                reference = answer if reference is None else reference
                dice = min(dice_per_label(reference, outputs[-1]).values(), default=1.0)
                served = (check or {}).get("mode", "exact")
                print(summary(f"HTTP e2e, mode {mode} (serves {served})", list(times)))
                if check:
                    print(
                        f"   check: {check['reason']}; min Dice {check['check'].get('min_dice')}; first request "
                        f"{first:.2f} s (exact {check['check'].get('exact_s')} s + {check['check'].get('fast_s')} s)"
                    )
                print(f"   served output vs exact: min Dice over labels {dice:.4f}")
                results[mode] = (list(times), dice)
                client.http.patch(f"/experiments/{experiment_id}", json={"realtime_infer": False})
    exact = percentile(results["exact"][0], 50) if "exact" in results else percentile(local, 50)
    print(f"exact e2e p50 / in-process p50: {exact / percentile(local, 50):.3f}")
    faster = {m: percentile(t, 50) for m, (t, d) in results.items() if m != "exact" and d >= 0.99}
    best = min(faster, key=faster.get) if faster else "exact"
    for mode, p50 in faster.items():
        print(f"{mode}: p50 {p50:.2f} s = {p50 / exact:.3f} x exact, {p50 / percentile(local, 50):.3f} x in-process")
    best_p50 = faster.get(best, exact)
    print(
        f"RATIO best mode ({best}) e2e p50 / exact e2e p50 (spleen UNet, 160x160x128, CPU): {best_p50 / exact:.3f} "
        f"(vs the bundle in-process: {best_p50 / percentile(local, 50):.3f}; goal <= 0.5 with Dice >= 0.99)"
    )


if __name__ == "__main__":
    main()
