"""Serving overhead: a warm bundle on a cached image through HTTP vs its evaluator called in-process.

Prints p50/p95 of both, the added latency and the ratio, for the small demo bundles and for a
full-size spleen-style UNet (channels 16-256) on a 96^3 volume. The last line is the ratio the
issue judges (full-size 3D segmentation, goal <= 1.10).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import Client, percentile, single_image_dataset, summary

from medcloud.demo.bundles import ensure_demo_bundles, make_segmentation_bundle
from medcloud.demo.synthetic import write_synthetic_ct, write_synthetic_rgb
from medcloud.devserver import medcloud_serve
from medcloud.inference import nrrd_writer
from medcloud.inference.predictors import BundlePredictor


def in_process(bundle: Path, image: Path, runs: int, out: Path) -> list[float]:
    """The bundle's evaluator built once and run again and again on the same image."""
    nrrd_writer.register()
    predictor = BundlePredictor(bundle)
    predictor.load()
    parser = predictor._parser([{"image": str(image)}], out)
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        evaluator.run()
        times.append(time.perf_counter() - started)
    return times


def through_http(client: Client, bundle: Path, image: Path, folder: Path, runs: int) -> list[float]:
    image_id = single_image_dataset(folder, image)
    dataset_id = client.dataset(folder)
    client.cache(dataset_id, image_id)
    experiment_id, _ = client.realtime_experiment(dataset_id, bundle)
    client.infer(experiment_id, image_id)  # warm
    times = [client.infer(experiment_id, image_id) for _ in range(runs)]
    client.http.patch(f"/experiments/{experiment_id}", json={"realtime_infer": False})
    return times


def compare(name: str, client: Client, bundle: Path, image: Path, work: Path, runs: int) -> float:
    local = in_process(bundle, image, runs, work / f"{name}-out")
    remote = through_http(client, bundle, image, work / f"{name}-data", runs)
    print(summary(f"{name}: in-process evaluator", local))
    print(summary(f"{name}: HTTP end to end", remote))
    added = (percentile(remote, 50) - percentile(local, 50)) * 1000
    ratio = percentile(remote, 50) / percentile(local, 50)
    print(f"{name}: added latency p50 = {added:.1f} ms, ratio p50 = {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = ensure_demo_bundles(Path(__file__).resolve().parents[1] / ".medcloud" / "test-cache")
        full = make_segmentation_bundle(
            work / "full",
            name="spleen_full",
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            roi_size=(96, 96, 96),
            num_res_units=2,
            train=False,
        )
        ct_small, _ = write_synthetic_ct(work / "small.nii.gz", work / "small_label.nii.gz", seed=1)
        ct_full, _ = write_synthetic_ct(work / "full.nii.gz", work / "full_label.nii.gz", seed=2, shape=(96, 96, 96))
        rgb = write_synthetic_rgb(work / "frame.png", label=0, seed=3)
        with medcloud_serve(work / "server") as server:
            client = Client.login(server)
            compare("small classification 2D", client, demo["classification"], rgb, work, args.runs)
            compare("small segmentation 3D", client, demo["segmentation"], ct_small, work, args.runs)
            ratio = compare("full UNet 16-256 at 96^3", client, full, ct_full, work, max(5, args.runs // 2))
    print(f"RATIO serving overhead (full-size 3D segmentation, HTTP p50 / in-process p50): {ratio:.3f}")


if __name__ == "__main__":
    main()
