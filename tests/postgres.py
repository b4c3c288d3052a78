"""A real PostgreSQL server for tests, started in a temporary folder (session fixtures).

`postgres_server` runs `initdb` and `pg_ctl start` once per test session (as root through the `postgres`
user, as set-up installs it), on a Unix socket only, with fsync off; `postgres_url` is one database on it
for the session and `pg_database` a fresh database per test. Both skip when the binaries are absent.

`MEDCLOUD_TEST_DATABASE=postgres` runs any test on PostgreSQL: each test gets a fresh database through
`MEDCLOUD_DATABASE_URL`, which `Settings` reads (and job workers inherit). Not in CI (time); for a run by hand.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from services import free_port

PG_USER = "postgres"  # the server's OS user when the tests run as root, and its superuser role
_names = itertools.count(1)


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class PostgresServer:
    """A running server reachable on a Unix socket in `socket_dir`."""

    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@/{database}?host={self.socket_dir}&port={self.port}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute(sql)

    def create_database(self, prefix: str = "medcloud_test") -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[-1].split("?")[0]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres(args: list[str]) -> list[str]:
    """Run as the `postgres` user when we are root (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", PG_USER, "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def start_postgres(*, timeout_s: int = 60) -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a new temporary folder; stopped (immediate) and removed on exit."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL's initdb/pg_ctl were not found: run scripts/setup.sh --test")
    root = Path(tempfile.mkdtemp(prefix="medcloud-pg-"))  # short: a socket path must fit in 107 bytes
    data_dir, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam(PG_USER)
        for path in (root, socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()  # also names the socket file (.s.PGSQL.<port>); no TCP listener
    run = {"check": True, "capture_output": True, "text": True, "timeout": timeout_s}
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", PG_USER, "-E", "UTF8"]),
        **run,
    )
    options = (
        f"-k {socket_dir} -p {port} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off"
    )
    ctl = str(bin_dir / "pg_ctl")
    subprocess.run(
        _as_postgres([ctl, "-D", str(data_dir), "-l", str(root / "server.log"), "-w", "-o", options, "start"]), **run
    )
    try:
        yield PostgresServer(bin_dir=bin_dir, data_dir=data_dir, socket_dir=socket_dir, port=port)
    finally:
        subprocess.run(_as_postgres([ctl, "-D", str(data_dir), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if postgres_bin_dir() is None:
        if os.environ.get("MEDCLOUD_TEST_DATABASE") == "postgres":
            raise RuntimeError("MEDCLOUD_TEST_DATABASE=postgres but PostgreSQL is not installed")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed: scripts/setup.sh --test installs it")
    with start_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """One database for the session (`postgresql+psycopg://` over the Unix socket)."""
    return postgres_server.create_database("medcloud_session")


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh empty database for one test; dropped afterwards."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(autouse=True)
def database_per_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With MEDCLOUD_TEST_DATABASE=postgres: every test's servers use a fresh PostgreSQL database."""
    if os.environ.get("MEDCLOUD_TEST_DATABASE") != "postgres":
        yield
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database("medcloud_suite")
    monkeypatch.setenv("MEDCLOUD_DATABASE_URL", url)
    yield
    server.drop_database(url)
