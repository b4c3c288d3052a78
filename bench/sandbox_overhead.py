"""What the bubblewrap sandbox costs (issue 18): model-host start, warm request, job model-process start.

Each figure is measured with the sandbox (`MEDCLOUD_MODEL_SANDBOX=auto`: bubblewrap, namespaces, limits)
and without it (`unsafe`: a scrubbed environment only), alternating the two so that the machine's drift
hits both alike, on the small demo segmentation bundle and a synthetic CT (no HTTP in between: the
sandbox is the only difference).

    .venv/bin/python bench/sandbox_overhead.py [--starts 5] [--requests 20]

The last line is the ratio the issue is judged on: the worst of the three (sandbox / none), goal <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from medcloud.config import Settings  # noqa: E402
from medcloud.demo.bundles import ensure_demo_bundles  # noqa: E402
from medcloud.demo.synthetic import write_demo_dataset  # noqa: E402
from medcloud.inference.hosts import HostSpec, ModelHost  # noqa: E402
from medcloud.sandbox import Sandbox  # noqa: E402

MODES = ("auto", "unsafe")


def sandboxes(work: Path) -> dict[str, Sandbox]:
    boxes = {mode: Sandbox(Settings(data_dir=work / mode, model_sandbox=mode).resolved()) for mode in MODES}
    assert boxes["auto"].mode == "bwrap", boxes["auto"].describe()
    return boxes


def host_start(box: Sandbox, bundle: Path) -> tuple[float, ModelHost]:
    spec = HostSpec(experiment_id=str(uuid.uuid4()), kind="custom", bundle_dir=str(bundle))
    host = ModelHost(spec, box.data_dir / "hosts" / spec.experiment_id, box)
    started = time.perf_counter()
    host.start(600)
    return time.perf_counter() - started, host


def warm_requests(box: Sandbox, host: ModelHost, image: Path, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs + 1):
        request = uuid.uuid4().hex
        staged = box.stage(image, host.in_dir / request / image.name)
        started = time.perf_counter()
        reply = host.call(
            {"op": "infer", "image": str(staged), "params": {}, "out_dir": str(host.out_dir / request)}, 600
        )
        outputs = host.open_outputs(request, reply["files"])
        for _name, handle in outputs.files:
            handle.read()
        seconds.append(time.perf_counter() - started)
        outputs.close()
    return seconds[1:]  # the first request warms caches in both modes


def job_process_start(box: Sandbox, bundle: Path) -> float:
    """A job's model process: its folder made, started in the sandbox, the model side imported, ended."""
    experiment = str(uuid.uuid4())
    job = box.data_dir / "jobs" / experiment
    job.mkdir(parents=True)
    started = time.perf_counter()
    model = box.fresh_folder(job / "model", experiment_id=experiment)
    launch = box.launch(
        ["-c", "import medcloud.modelrun.main, medcloud.modelrun.train, monai.bundle"],
        experiment_id=experiment,
        readable=[bundle],
        writable=model,
    )
    subprocess.run(launch.argv, check=True, **launch.popen_kwargs())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    bundle = ensure_demo_bundles(REPO / ".medcloud" / "test-cache")["segmentation"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = sorted((write_demo_dataset(work / "dataset").parent / "imagesTr").glob("*.nii.gz"))[0]
        boxes = sandboxes(work)
        starts: dict[str, list[float]] = {m: [] for m in MODES}
        jobs: dict[str, list[float]] = {m: [] for m in MODES}
        warm: dict[str, list[float]] = {m: [] for m in MODES}
        for round_ in range(args.starts):
            for mode in MODES if round_ % 2 == 0 else reversed(MODES):
                seconds, host = host_start(boxes[mode], bundle)
                starts[mode].append(seconds)
                if round_ == 0:
                    warm[mode] = warm_requests(boxes[mode], host, image, args.requests)
                host.stop()
                jobs[mode].append(job_process_start(boxes[mode], bundle))
    print(f"{'':32} {'sandbox (bwrap)':>16} {'none (unsafe)':>16} {'ratio':>7}")
    ratios = {}
    for name, values in (
        ("model host start (p50)", starts),
        ("warm request (p50)", warm),
        ("job model process start (p50)", jobs),
    ):
        sandboxed, bare = statistics.median(values["auto"]), statistics.median(values["unsafe"])
        ratios[name] = sandboxed / bare
        print(f"{name:32} {sandboxed * 1000:13.1f} ms {bare * 1000:13.1f} ms {ratios[name]:7.3f}")
    worst = max(ratios, key=ratios.get)
    print(f"worst ratio (sandbox / none, goal <= 1.05): {ratios[worst]:.3f} ({worst})")


if __name__ == "__main__":
    main()
