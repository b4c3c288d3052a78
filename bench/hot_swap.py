"""Hot swap: real-time inference latency while the model's weights are swapped vs steady state.

Drives a model host directly (the same `HostManager` the server uses): a stream of inference requests
on a 3D bundle, first alone, then while new weights are swapped in every few requests (what continual
learning does after a better round). The last line is the p99 ratio (goal <= 1.5) and no request fails.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch
from common import percentile, summary

from medcloud.demo.bundles import ensure_demo_bundles
from medcloud.demo.synthetic import write_synthetic_ct
from medcloud.inference.hosts import HostManager, HostSpec


async def stream(
    hosts: HostManager, spec: HostSpec, image: Path, count: int, swap_every: int | None, weights: list[Path]
) -> tuple[list[float], int]:
    times, swaps = [], 0
    for index in range(count):
        started = time.perf_counter()
        files = await hosts.infer(spec, image=str(image), params={}, timeout=120)
        times.append(time.perf_counter() - started)
        assert files, "a request failed"
        if swap_every and index % swap_every == 0:
            await hosts.swap(spec.experiment_id, weights[swaps % len(weights)])
            swaps += 1
    return times, swaps


async def run(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = ensure_demo_bundles(Path(__file__).resolve().parents[1] / ".medcloud" / "test-cache")["segmentation"]
        image, _ = write_synthetic_ct(work / "ct.nii.gz", work / "label.nii.gz", seed=5, shape=(96, 96, 96))
        state = torch.load(bundle / "models" / "model.pt", weights_only=True)
        weights = []
        for i in range(2):  # two slightly different checkpoints, as two training rounds would give
            perturbed = {k: v + 1e-4 * (i + 1) if v.is_floating_point() else v for k, v in state.items()}
            torch.save(perturbed, work / f"round{i}.pt")
            weights.append(work / f"round{i}.pt")
        hosts = HostManager(work / "hosts")
        spec = HostSpec(experiment_id="bench", kind="bundle", bundle_dir=str(bundle))
        await hosts.start(spec, timeout=300)
        await stream(hosts, spec, image, 3, None, weights)  # warm
        steady, _ = await stream(hosts, spec, image, count, None, weights)
        swapping, swaps = await stream(hosts, spec, image, count, 3, weights)
        await hosts.stop_all()
    print(summary("steady state", steady))
    print(summary(f"with {swaps} swaps (one every 3 requests)", swapping))
    print(f"RATIO hot swap (p99 during swaps / p99 steady): {percentile(swapping, 99) / percentile(steady, 99):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30)
    asyncio.run(run(parser.parse_args().requests))


if __name__ == "__main__":
    main()
