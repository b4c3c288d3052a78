"""Run a user guide's code cells as written: extract them from the seed text and exec them in order."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from services import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
CELL_MARK = "In [None]:"


def guide_cells(name_prefix: str) -> list[str]:
    """The code cells of `shared/seeds/<prefix>_*.txt`, in order.

    A cell starts after an `In [None]:` line and is the longest run of following lines that
    compiles as Python (the prose after it does not).
    """
    path = next(SEEDS.glob(f"{name_prefix}_*.txt"))
    chunks = path.read_text().split(CELL_MARK)[1:]
    cells = []
    for chunk in chunks:
        lines = chunk.strip("\n").splitlines()
        best = ""
        for end in range(1, len(lines) + 1):
            candidate = "\n".join(lines[:end])
            try:
                compile(candidate, "cell", "exec")
            except SyntaxError:
                continue
            best = candidate
        cells.append(best)
    return cells


def substitute(cell: str, replacements: dict[str, str]) -> str:
    """Replace whole assignment lines `name = ...` with our values (host, storage, bundle)."""
    out = []
    for line in cell.splitlines():
        name = line.split("=", 1)[0].strip() if "=" in line and not line.startswith((" ", "\t")) else None
        out.append(f"{name} = {replacements[name]!r}" if name in replacements else line)
    return "\n".join(out)


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path


def create_key(data_dir: Path, org: str, user: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "medcloud.cli", "keys", "create", "--org", org, "--user", user, "--data-dir", str(data_dir)],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def medcloud_serve(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A real `medcloud serve` process on a free port, stopped (with its model hosts) afterwards."""
    port = free_port()
    log = data_dir / "serve.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medcloud.cli", "serve", "--port", str(port), "--data-dir", str(data_dir), "--no-demo"],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url, proc), timeout_s=120, what="medcloud serve")
        yield Server(url=url, data_dir=data_dir, proc=proc, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ready(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"medcloud serve exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/api/v1/health/readiness", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
