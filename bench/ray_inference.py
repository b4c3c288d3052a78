"""Model hosts on Ray Serve vs the local backend: per-request overhead, throughput, and a simulated scale-out.

Drives both backends directly (`HostManager`, `RayHosts`: what the API calls per request, reading every
output file as the API's reply does), on a local Ray cluster this script starts and stops itself:

- `overhead`: the full-size UNet (16-256) at 96^3, one replica on Ray vs the local host; requests
  alternate between the two so that load on the machine hits both alike. p50/p99 and the p50 ratio
  (goal <= 1.05) on the last line of the part: `ratio ...`.
- `throughput`: the small 3D demo bundle, each Ray replica limited to one CPU and one thread, with 1 and
  2 replicas, vs the local host (one process, default threads); requests/s of concurrent clients and the
  2-replica / 1-replica ratio (the honest ceiling on 2 cores is 2x).
- `scale` (SIMULATED): a predictor that sleeps 200 ms per request (a bundle whose evaluator only sleeps)
  on a cluster declaring 8 logical GPUs, 0.5 GPU per replica, 1 -> 8 replicas: where replicas land, and
  the most concurrent clicks (closed-loop clients) served with p99 under 1 s.

Run: `.venv/bin/python bench/ray_inference.py [--part overhead|throughput|scale ...]` (default: all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import percentile, summary

from medcloud.config import Settings
from medcloud.demo.bundles import ensure_demo_bundles, make_segmentation_bundle
from medcloud.demo.synthetic import write_synthetic_ct
from medcloud.inference.hosts import HostManager, HostSpec

REPO = Path(__file__).resolve().parents[1]
SLEEP_S = 0.2  # the simulated model's time per click
CLICK_P99_S = 1.0


@contextlib.contextmanager
def cluster(num_cpus: int, num_gpus: int) -> Iterator[Any]:
    """A local Ray cluster of its own (stopped by its process group, never `ray stop`)."""
    import ray
    from ray_cluster import start_cluster, stop_cluster

    running, proc = start_cluster(num_cpus=num_cpus, num_gpus=num_gpus)
    try:
        yield running
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_cluster(running, proc)


@contextlib.contextmanager
def thread_limit(threads: str | None) -> Iterator[None]:
    """OMP_NUM_THREADS for processes started inside the block (None: left as it is)."""
    before = os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = threads
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def ray_hosts(settings: Settings, running: Any, **extra: Any) -> Any:
    from medcloud.execution.ray_hosts import RayHosts

    return RayHosts(
        settings.model_copy(update={"ray_address": running.address, "ray_shared_dir": running.shared_dir, **extra})
    )


def spec_for(bundle: Path, replicas: int = 1) -> HostSpec:
    return HostSpec(experiment_id=str(uuid.uuid4()), kind="custom", bundle_dir=str(bundle), replicas=replicas)


async def request(hosts: Any, spec: HostSpec, image: Path, timeout: float = 300) -> float:
    """One request as the API makes it, its outputs read in full; seconds."""
    started = time.perf_counter()
    outputs = await hosts.infer(spec, image=str(image), params={}, timeout=timeout)
    try:
        size = sum(len(handle.read()) for _name, handle in outputs.files)
    finally:
        outputs.close()
    assert size > 0, "a request produced no output"
    return time.perf_counter() - started


async def closed_loop(
    hosts: Any, spec: HostSpec, image: Path, clients: int, per_client: int
) -> tuple[list[float], float]:
    """`clients` concurrent clients, each sending `per_client` requests back to back: latencies, wall time."""

    async def client() -> list[float]:
        return [await request(hosts, spec, image) for _ in range(per_client)]

    started = time.perf_counter()
    results = await asyncio.gather(*(client() for _ in range(clients)))
    return [t for times in results for t in times], time.perf_counter() - started


# -- (a) per-request overhead ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def replica_pid(spec: HostSpec) -> int:
    from ray import serve

    return (await serve.get_app_handle(f"{Settings().ray_namespace}-{spec.experiment_id}").info.remote())["pid"]


async def overhead(work: Path, settings: Settings, runs: int) -> float:
    bundle = make_segmentation_bundle(
        work / "full",
        name="spleen_full",
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        roi_size=(96, 96, 96),
        num_res_units=2,
        train=False,
    )
    image, _ = write_synthetic_ct(work / "full.nii.gz", work / "full_label.nii.gz", seed=2, shape=(96, 96, 96))
    local = HostManager(settings)
    local_spec = spec_for(bundle)
    with cluster(num_cpus=2, num_gpus=0) as running:
        ray = ray_hosts(settings, running, ray_cpus_per_replica=2, ray_gpus_per_replica=0)
        ray_spec = spec_for(bundle)
        await local.start(local_spec, 600)
        await ray.start(ray_spec, 600)
        for _ in range(2):  # warm both paths (first requests build caches, routers, connections)
            await request(local, local_spec, image)
            await request(ray, ray_spec, image)
        pids = {"local": local.host(local_spec.experiment_id).pid, "ray": await replica_pid(ray_spec)}
        times: dict[str, list[float]] = {"local": [], "ray": []}
        cpu: dict[str, list[float]] = {"local": [], "ray": []}
        load = os.getloadavg()[0]
        for _ in range(runs):
            for name, hosts, spec in (("local", local, local_spec), ("ray", ray, ray_spec)):
                before = cpu_seconds(pids[name])
                times[name].append(await request(hosts, spec, image))
                cpu[name].append(cpu_seconds(pids[name]) - before)
        await local.stop_all()
        await ray.stop(ray_spec.experiment_id)
        path = await null_model(work, local, ray, runs)
    local_times, ray_times = times["local"], times["ray"]
    print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(summary("local host, UNet 96^3", local_times))
    print(summary("Ray Serve, 1 replica, UNet 96^3", ray_times))
    print(
        "CPU seconds of the model's process per request (p50): "
        f"local host {percentile(cpu['local'], 50):.2f}, Ray replica {percentile(cpu['ray'], 50):.2f}"
    )
    print(
        f"the path alone (a model that does nothing, 1 KB in and out), p50: local {path['local'] * 1000:.1f} ms, "
        f"Ray {path['ray'] * 1000:.1f} ms"
    )
    p50, p99 = (percentile(ray_times, q) / percentile(local_times, q) for q in (50, 99))
    added = (percentile(ray_times, 50) - percentile(local_times, 50)) * 1000
    print(
        f"ratio (Ray p50 / local p50, full UNet 16-256 at 96^3): {p50:.3f} (p99 ratio {p99:.3f}, +{added:.1f} ms p50)"
    )
    return p50


async def null_model(work: Path, local: HostManager, ray: Any, runs: int) -> dict[str, float]:
    """p50 of each backend's own cost: a bundle whose evaluator does nothing but write one small file."""
    bundle = sleeping_bundle(work / "null", 0.0)
    image = work / "null.bin"
    image.write_bytes(b"\0" * 1024)
    p50 = {}
    for name, hosts in (("local", local), ("ray", ray)):
        spec = spec_for(bundle)
        await hosts.start(spec, 600)
        for _ in range(3):
            await request(hosts, spec, image)
        p50[name] = percentile([await request(hosts, spec, image) for _ in range(max(runs, 30))], 50)
        await hosts.stop(spec.experiment_id)
    return p50


# -- (b) throughput -------------------------------------------------------------------------------


async def throughput(work: Path, settings: Settings, clients: int, per_client: int) -> float:
    bundle = ensure_demo_bundles(REPO / ".medcloud" / "test-cache")["segmentation"]
    image, _ = write_synthetic_ct(work / "small.nii.gz", work / "small_label.nii.gz", seed=1)
    rates: dict[Any, float] = {}
    for label, threads in (("local", None), ("local-1", "1")):
        local = HostManager(settings)
        spec = spec_for(bundle)
        with thread_limit(threads):  # read by the host process at start
            await local.start(spec, 600)
        await request(local, spec, image)
        times, wall = await closed_loop(local, spec, image, clients, per_client)
        await local.stop_all()
        rates[label] = len(times) / wall
        print(summary(f"local host ({threads or 'default'} threads)", times) + f"  {rates[label]:.2f} req/s")
    with cluster(num_cpus=2, num_gpus=0) as running:
        for replicas in (1, 2):
            hosts = ray_hosts(
                settings, running, ray_cpus_per_replica=1, ray_gpus_per_replica=0, ray_max_replicas=replicas
            )
            ray_spec = spec_for(bundle, replicas)
            await hosts.start(ray_spec, 600)
            await closed_loop(hosts, ray_spec, image, replicas, 2)  # warm every replica
            times, wall = await closed_loop(hosts, ray_spec, image, clients, per_client)
            rates[replicas] = len(times) / wall
            print(summary(f"Ray, {replicas} replica(s) x 1 thread", times) + f"  {rates[replicas]:.2f} req/s")
            await hosts.stop(ray_spec.experiment_id)
    scaling = rates[2] / rates[1]
    print(
        f"throughput ({clients} clients): local {rates['local']:.2f} req/s ({rates['local-1']:.2f} at 1 thread), "
        f"Ray 1 replica {rates[1]:.2f}, "
        f"2 replicas {rates[2]:.2f}; scaling 2/1 = {scaling:.2f}x (ceiling 2x on 2 cores)"
    )
    return scaling


# -- (c) SIMULATED scale-out ----------------------------------------------------------------------


def sleeping_bundle(dest: Path, seconds: float) -> Path:
    """A bundle whose evaluator sleeps `seconds` and writes one small file: a stand-in for a GPU model."""
    folder = dest / "sleeping_predictor"
    (folder / "configs").mkdir(parents=True)
    # Two items: MONAI parses an expression that mentions "import" as Python, where `@refs` are no syntax.
    evaluator = (
        "$(lambda out, sleep: type('SleepingEvaluator', (), {'run': lambda self: "
        f"(sleep({seconds}), open(out + '/click.txt', 'w').write('ok'))}})())(@output_dir, @sleep)"
    )
    config = {
        "network": "$torch.nn.Identity()",
        "dataset": {"data": []},
        "sleep": "$__import__('time').sleep",
        "evaluator": evaluator,
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    return folder


async def placement(name: str, replicas: int) -> str:
    """Which logical GPU each replica holds, asked of the replicas (concurrent calls reach every one)."""
    from ray import serve

    handle = serve.get_app_handle(name)
    seen: dict[int, str] = {}
    for _ in range(50):
        for info in await asyncio.gather(*(handle.info.remote() for _ in range(2 * replicas))):
            seen[info["pid"]] = ",".join(info["gpu_ids"])
        if len(seen) >= replicas:
            break
    per_gpu = Counter(seen.values())
    return ", ".join(f"GPU {gpu}: {count}" for gpu, count in sorted(per_gpu.items()))


async def max_clicks(hosts: Any, spec: HostSpec, image: Path, replicas: int, per_client: int) -> tuple[int, float]:
    """The most concurrent clients whose p99 stays under 1 s (binary search; p99 grows with clients)."""
    cache: dict[int, float] = {}

    async def p99(clients: int) -> float:
        if clients not in cache:  # at least 50 requests, so that p99 is not just the slowest of a few
            times, _ = await closed_loop(hosts, spec, image, clients, max(per_client, -(-50 // clients)))
            cache[clients] = percentile(times, 99)
        return cache[clients]

    low, high = 0, 8 * replicas  # at 200 ms a click, ~5 clients per replica already wait a full second
    while await p99(high) < CLICK_P99_S:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if await p99(middle) < CLICK_P99_S:
            low = middle
        else:
            high = middle
    return low, cache.get(low, 0.0)


async def scale(work: Path, settings: Settings, per_client: int) -> None:
    bundle = sleeping_bundle(work, SLEEP_S)
    image = work / "click.bin"
    image.write_bytes(b"\0" * 1024)
    print(f"SIMULATED: a predictor sleeping {SLEEP_S * 1000:.0f} ms per click, 0.5 logical GPU per replica")
    with cluster(num_cpus=2, num_gpus=8) as running:
        spec = spec_for(bundle)
        name = f"{settings.ray_namespace}-{spec.experiment_id}"
        for replicas in (1, 2, 4, 8):
            hosts = ray_hosts(
                settings, running, ray_cpus_per_replica=0.1, ray_gpus_per_replica=0.5, ray_max_replicas=replicas
            )
            spec = dataclasses.replace(spec, replicas=replicas)
            started = time.perf_counter()
            await hosts.start(spec, 900)  # the same application, scaled up in place
            ready = time.perf_counter() - started
            where = await placement(name, replicas)
            clicks, at = await max_clicks(hosts, spec, image, replicas, per_client)
            print(
                f"SIMULATED {replicas} replica(s) [{where}] (scaled in {ready:.1f} s): "
                f"{clicks} concurrent clicks with p99 < 1 s (p99 {at * 1000:.0f} ms)"
            )
        await hosts.stop(spec.experiment_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=["overhead", "throughput", "scale"])
    parser.add_argument("--runs", type=int, default=20, help="overhead: requests per backend")
    parser.add_argument("--clients", type=int, default=4, help="throughput: concurrent clients")
    parser.add_argument("--per-client", type=int, default=8, help="throughput and scale: requests per client")
    args = parser.parse_args()
    parts = args.part or ["overhead", "throughput", "scale"]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        # No sandbox for the local host either: Ray replicas run as the Ray worker's user.
        settings = Settings(
            data_dir=work / "data", demo=False, model_sandbox="off", host_start_timeout_s=900
        ).resolved()
        if "throughput" in parts:
            asyncio.run(throughput(work, settings, args.clients, args.per_client))
        if "scale" in parts:
            asyncio.run(scale(work, settings, args.per_client))
        if "overhead" in parts:
            asyncio.run(overhead(work, settings, args.runs))


if __name__ == "__main__":
    main()
