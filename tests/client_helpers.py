"""What tests/test_client.py and the CLI tests (tests/test_cli.py, tests/test_cli_tour.py) share: one real
`medcloud serve` (the fixture `served`), a new user's environment (`home`), `medcloud` run as a user runs it,
and a fault-injecting proxy."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from medcloud.devserver import create_key, medcloud_serve

ORG = "iasixjqzw1hj"  # the hosted service's default org: the client's default too


@dataclass
class Faults:
    """What the proxy does: answer `status` to the next `count` requests whose path ends with `suffix`."""

    suffix: str = ""
    status: int = 503
    count: int = 0
    retry_after: str | None = "0"
    seen: list[str] = field(default_factory=list)  # "METHOD path" of every request, faulted or not


@contextmanager
def fault_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """A real HTTP server in front of `upstream` that answers faults as configured and forwards the rest."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?")[0]
            with lock:
                faults.seen.append(f"{self.command} {path}")
                fault = faults.count > 0 and path.endswith(faults.suffix)
                if fault:
                    faults.count -= 1
            if fault:
                payload = b'{"error_desc": "injected by the test proxy", "error_code": %d}' % faults.status
                self.send_response(faults.status)
                self.send_header("Content-Type", "application/json")
                if faults.retry_after is not None:
                    self.send_header("Retry-After", faults.retry_after)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            resp = httpx.request(self.command, upstream + self.path, headers=headers, content=body, timeout=300)
            self.send_response(resp.status_code)
            for key, value in resp.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(resp.content)))
            self.end_headers()
            self.wfile.write(resp.content)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module", name="served")
def served_fixture(tmp_path_factory):
    """One real `medcloud serve` for the module, and a key of its org: (server, key)."""
    data_dir = tmp_path_factory.mktemp("cli-server")
    key = create_key(data_dir, ORG, "cli-user")
    with medcloud_serve(data_dir) as server:
        yield server, key


@pytest.fixture(name="home")
def home_fixture(tmp_path):
    """An environment with its own config folder and no key: what a new user's shell has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDCLOUD_", "MONAI_"))}
    env["MEDCLOUD_CONFIG_DIR"] = str(tmp_path / "config")
    return env


def medcloud(env: dict[str, str], *args: str, stdin: str | None = None, cwd: Path | None = None):
    """Run `medcloud ARGS` and return the finished process (exit code, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "medcloud.cli", *args],
        input=stdin if stdin is not None else "",
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc
