"""SQLite vs PostgreSQL: two real API processes on one database under 50 concurrent clients.

For each backend, two `medcloud serve` processes share one data folder and one database (SQLite: the
file in the data folder; PostgreSQL: a real server started in a temporary folder, as the tests do).
50 clients, half on each process, send `GET /datasets` back to back; every 10th request is a write
instead (a new dataset, or a `notify` on one). Prints per backend the errors (goal: none) and the
latency of `GET /datasets`; the last line is the p99 ratio PostgreSQL / SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import ORG, percentile, summary

from medcloud.demo.synthetic import write_demo_dataset
from medcloud.devserver import Server, create_key, medcloud_serve


@dataclass
class Tally:
    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def database(backend: str, work: Path) -> Iterator[dict[str, str]]:
    """The environment that points `medcloud serve` at the backend's database."""
    if backend == "sqlite":
        yield {}  # the default: medcloud.db in the shared data folder
        return
    from postgres import start_postgres  # tests/postgres.py (bench/common.py puts tests/ on sys.path)

    with start_postgres() as server:
        yield {"MEDCLOUD_DATABASE_URL": server.create_database("medcloud_bench")}


def key_for(data_dir: Path, env: dict[str, str]) -> str:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return create_key(data_dir, ORG, "bench")
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def client(index: int, servers: list[Server], token: str, folder: Path, requests: int, tally: Tally) -> None:
    server = servers[index % len(servers)]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{server.url}/api/v1/orgs/{ORG}", headers=headers, timeout=120) as http:
        dataset_id: str | None = None
        for n in range(requests):
            write = n % 10 == 9
            started = time.perf_counter()
            try:
                if not write:
                    resp = await http.get("/datasets")
                elif dataset_id is None:
                    resp = await http.post("/datasets", json={"name": f"c{index}", "client_url": str(folder)})
                    if resp.status_code == 201:
                        dataset_id = resp.json()["id"]
                else:
                    notify = {"added": [{"image": f"img-{index}-{n}", "label": f"lab-{index}-{n}"}]}
                    resp = await http.post(f"/datasets/{dataset_id}/jobs", json={"action": "notify", "specs": notify})
                elapsed = time.perf_counter() - started
                if resp.status_code >= 400:
                    tally.errors.append(f"{resp.status_code} {resp.text[:120]}")
                else:
                    (tally.writes if write else tally.reads).append(elapsed)
            except httpx.HTTPError as exc:
                tally.errors.append(f"{type(exc).__name__}: {exc}")


async def load(servers: list[Server], token: str, folder: Path, clients: int, requests: int) -> tuple[Tally, float]:
    tally = Tally()
    started = time.perf_counter()
    await asyncio.gather(*(client(i, servers, token, folder, requests, tally) for i in range(clients)))
    return tally, time.perf_counter() - started


def run(backend: str, work: Path, clients: int, requests: int) -> Tally:
    data_dir = work / backend / "server"
    folder = write_demo_dataset(work / backend / "dataset").parent
    with (
        database(backend, work) as env,
        medcloud_serve(data_dir, env=env) as first,
        medcloud_serve(data_dir, env=env) as second,
    ):
        key = key_for(data_dir, env)
        token = httpx.post(f"{first.url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        for i in range(20):  # something to list: 20 datasets, whichever process created them
            server = (first, second)[i % 2]
            httpx.post(
                f"{server.url}/api/v1/orgs/{ORG}/datasets",
                json={"name": f"seed-{i}", "client_url": str(folder)},
                headers=headers,
                timeout=60,
            ).raise_for_status()
        tally, seconds = asyncio.run(load([first, second], token, folder, clients, requests))
    done = len(tally.reads) + len(tally.writes)
    print(f"{backend}: {done} requests in {seconds:.1f} s ({done / seconds:.0f}/s), errors: {len(tally.errors)}")
    for error in sorted(set(tally.errors))[:5]:
        print(f"  error: {error}")
    print(summary(f"{backend} GET /datasets", tally.reads))
    print(summary(f"{backend} writes (create, notify)", tally.writes))
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="per client")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("sqlite", "postgres"):
            results[backend] = run(backend, Path(tmp), args.clients, args.requests)
    p99 = {backend: percentile([s * 1000 for s in t.reads], 99) for backend, t in results.items()}
    errors = {backend: len(t.errors) for backend, t in results.items()}
    print(
        f"RATIO p99 GET /datasets postgres/sqlite = {p99['postgres'] / p99['sqlite']:.2f} "
        f"(sqlite {p99['sqlite']:.1f} ms, postgres {p99['postgres']:.1f} ms; errors sqlite {errors['sqlite']}, "
        f"postgres {errors['postgres']}; goal: no errors), two API processes, {args.clients} clients"
    )


if __name__ == "__main__":
    main()
