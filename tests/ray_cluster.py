"""One real local Ray cluster per test run (`ray start --head`), stopped by its own process group.

Never `ray stop`: it kills every Ray process on the machine. The cluster declares 2 logical GPUs so that
fractional placement is tested on a machine without any. Skips when Ray (the `ray` extra) is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


@dataclass(frozen=True)
class RayCluster:
    address: str  # GCS address, what `ray.init(address=...)` and MEDCLOUD_RAY_ADDRESS take
    dashboard_url: str  # the Jobs API
    shared_dir: Path  # a folder every "node" sees (MEDCLOUD_RAY_SHARED_DIR)
    temp_dir: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrubbed_env() -> dict[str, str]:
    """The cluster's processes get no MEDCLOUD_* setting of the tests (as on a separate node)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCLOUD_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
    return env


def start_cluster(num_cpus: int = 2, num_gpus: int = 2, timeout_s: float = 120) -> tuple[RayCluster, subprocess.Popen]:
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="mcray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    shared = temp_dir / "shared"
    shared.mkdir()
    os.chmod(temp_dir, 0o755)
    # The dashboard agent's default port (52365) would collide with a second cluster on this machine (another
    # test run), whose Jobs API then answers "No available agent to submit job".
    port, dashboard, agent = free_port(), free_port(), free_port()
    log = open(temp_dir / "ray-start.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(ray_bin), "start", "--head", "--block", "--disable-usage-stats",
            f"--port={port}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
            f"--dashboard-agent-listen-port={agent}",
            f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--temp-dir={temp_dir / 't'}",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_scrubbed_env(),
    )  # fmt: skip
    cluster = RayCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", shared, temp_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"ray start exited ({proc.returncode}): {(temp_dir / 'ray-start.log').read_text()[-3000:]}"
            )
        try:
            if requests.get(f"{cluster.dashboard_url}/api/version", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop_cluster(cluster, proc)
            raise RuntimeError("the Ray cluster did not come up in time")
        time.sleep(0.2)
    return cluster, proc


def stop_cluster(cluster: RayCluster, proc: subprocess.Popen) -> None:
    """SIGTERM to the cluster's own process group (head, raylet, workers started by it), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Workers are in the group too, but give stragglers a moment before removing their folder.
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    pytest.importorskip("ray", reason="Ray is the optional `ray` extra (pip install medcloud[ray])")
    cluster, proc = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster, proc)
