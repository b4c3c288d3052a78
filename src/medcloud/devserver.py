"""Start a real `medcloud serve` process on a free port (used by end-to-end tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

# Test and benchmark servers fetch bundles, images and storage from this machine and keep datasets in
# temporary folders: loopback, local bundle paths and local datasets anywhere are allowed explicitly (the
# server's defaults refuse them all); `env` overrides these.
LOOPBACK_ENV = {
    "MEDCLOUD_EGRESS_ALLOWED_NETWORKS": '["127.0.0.0/8", "::1/128"]',
    "MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS": "true",
    "MEDCLOUD_BUNDLE_ALLOWED_HOSTS": '["127.0.0.1", "localhost"]',
    "MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS": "true",
    "MEDCLOUD_DATASET_LOCAL_ROOTS": '{"*": ["/"]}',
}


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_key(data_dir: Path, org: str, user: str) -> str:
    """`medcloud keys create`, returning the key from its last line of output."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcloud.cli",
            "keys",
            "create",
            "--org",
            org,
            "--user",
            user,
            "--data-dir",
            str(data_dir),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _ready(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"medcloud serve exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/api/v1/health/readiness", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def medcloud_serve(
    data_dir: Path, env: dict[str, str] | None = None, timeout_s: float = 120, *, demo: bool = False
) -> Iterator[Server]:
    """Run `medcloud serve --no-demo` (`demo`: with the demo set-up) until the block ends; its model hosts stop with it."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "serve.log"
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medcloud.cli",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *([] if demo else ["--no-demo"]),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**LOOPBACK_ENV, **os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(url, proc):
            if time.monotonic() > deadline:
                raise TimeoutError(f"medcloud serve did not answer within {timeout_s} s; see {log}")
            time.sleep(0.1)
        yield Server(url=url, data_dir=data_dir, proc=proc, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
