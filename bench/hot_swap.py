"""Hot swap: real-time inference latency while the model's weights are swapped vs steady state.

Drives a model host directly (the same `HostManager` the server uses): a stream of inference requests
on a 3D bundle, first alone, then while a concurrent task swaps new weights in every 0.25 s (what
continual learning does after a better round, much more often). The last line is the p99 ratio (goal <= 1.5) and no request fails.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch
from common import percentile, summary

from medcloud.config import Settings
from medcloud.demo.bundles import ensure_demo_bundles
from medcloud.demo.synthetic import write_synthetic_ct
from medcloud.inference.hosts import HostManager, HostSpec


async def stream(hosts: HostManager, spec: HostSpec, image: Path, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        files = await hosts.infer(spec, image=str(image), params={}, timeout=120)
        times.append(time.perf_counter() - started)
        assert files, "a request failed"
    return times


async def swapper(hosts: HostManager, spec: HostSpec, weights: list[Path], every_s: float, stop: asyncio.Event) -> int:
    """Swap weights on its own schedule, as the annotation controller does, racing the request stream."""
    swaps = 0
    while not stop.is_set():
        await asyncio.sleep(every_s)
        await hosts.swap(spec.experiment_id, weights[swaps % len(weights)])
        swaps += 1
    return swaps


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
        hosts = HostManager(Settings(data_dir=work, model_sandbox="off").resolved())
        spec = HostSpec(experiment_id="bench", kind="custom", bundle_dir=str(bundle))
        await hosts.start(spec, timeout=300)
        await stream(hosts, spec, image, 3)  # warm
        steady = await stream(hosts, spec, image, count)
        stop = asyncio.Event()
        swaps_task = asyncio.create_task(swapper(hosts, spec, weights, 0.25, stop))
        swapping = await stream(hosts, spec, image, count)
        stop.set()
        swaps = await swaps_task
        await hosts.stop_all()
    print(summary("steady state", steady))
    print(summary(f"while {swaps} swaps ran (one every 0.25 s)", swapping))
    print(f"RATIO hot swap (p99 during swaps / p99 steady): {percentile(swapping, 99) / percentile(steady, 99):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30)
    asyncio.run(run(parser.parse_args().requests))


if __name__ == "__main__":
    main()
