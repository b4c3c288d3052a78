"""The API side of model hosts: start one warm process per real-time experiment, forward requests.

Blocking socket work runs in worker threads; each host serves one request at a time behind an
asyncio lock, so waiting requests cost the event loop nothing. A host that dies is reported to the
request in flight and started again on the next request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from medcloud.errors import Invalid, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostSpec:
    """What a host process loads: JSON-serialisable, written next to the host's log."""

    experiment_id: str
    kind: str  # "bundle" or "vista3d"
    bundle_dir: str
    overrides: dict[str, Any] = field(default_factory=dict)
    image_key: str = "image"
    labels: dict[str, str] = field(default_factory=dict)


class HostDied(Unavailable):
    """The host process exited while we waited for it."""


class ModelHost:
    """One model-host process and the socket to it (blocking methods: call from a thread)."""

    def __init__(self, spec: HostSpec, work_dir: Path, python: str) -> None:
        self.spec = spec
        self.work_dir = work_dir
        self.python = python
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float) -> None:
        """Spawn the process and wait until its model is loaded; raise Invalid with its error."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.work_dir / "host-spec.json"
        spec_path.write_text(json.dumps(asdict(self.spec)))
        ours, theirs = socket.socketpair()
        with open(self.work_dir / "host.log", "ab") as log_file:
            self._proc = subprocess.Popen(
                [self.python, "-m", "medcloud.inference.host", "--fd", str(theirs.fileno()), "--spec", str(spec_path)],
                pass_fds=[theirs.fileno()],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        theirs.close()
        self._conn = Connection(ours.detach())
        try:
            reply = self._receive(timeout, waiting_for="load the model")
        except Exception:
            self.stop()
            raise
        if not reply.get("ok"):
            self.stop()
            raise Invalid(f"Error: the model could not be loaded: {reply.get('error')}")

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply; a timeout ends the host (its reply would be stale)."""
        if not self.alive or self._conn is None:
            raise HostDied("Error: the model host is not running.")
        try:
            self._conn.send(msg)
            return self._receive(timeout, waiting_for="answer")
        except (HostDied, TimeoutError):
            self.stop()
            raise
        except OSError as exc:
            self.stop()
            raise HostDied(f"Error: lost the connection to the model host: {exc}") from None

    def _receive(self, timeout: float, *, waiting_for: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self._conn is not None
        while not self._conn.poll(0.05):
            if not self.alive:
                code = self._proc.returncode if self._proc else None
                raise HostDied(
                    f"Error: the model host exited (code {code}) before it could {waiting_for}; "
                    f"see {self.work_dir / 'host.log'}. It is started again on the next request."
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"Error: the model host did not {waiting_for} within {timeout:.0f} s.")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise HostDied(
                "Error: the model host closed the connection; it is started again on the next request."
            ) from None

    def stop(self, grace_s: float = 5.0) -> None:
        """Ask politely, then kill the whole process group; frees the device."""
        if self._conn is not None and self.alive:
            try:
                self._conn.send({"op": "stop"})
            except OSError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._conn = None


class HostManager:
    """All model hosts of this server, by experiment id."""

    def __init__(self, root: Path, python: str | None = None) -> None:
        self.root = root
        self.python = python or sys.executable
        self._hosts: dict[str, ModelHost] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, experiment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(experiment_id, asyncio.Lock())

    def host(self, experiment_id: str) -> ModelHost | None:
        return self._hosts.get(experiment_id)

    async def start(self, spec: HostSpec, timeout: float) -> None:
        """Start (or restart) the experiment's host and wait until it is warm."""
        async with self._lock(spec.experiment_id):
            await self._start_locked(spec, timeout)

    async def _start_locked(self, spec: HostSpec, timeout: float) -> ModelHost:
        old = self._hosts.pop(spec.experiment_id, None)
        if old is not None:
            await asyncio.to_thread(old.stop)
        host = ModelHost(spec, self.root / spec.experiment_id, self.python)
        await asyncio.to_thread(host.start, timeout)
        self._hosts[spec.experiment_id] = host
        return host

    async def infer(
        self, spec: HostSpec, *, image: str, params: dict[str, Any], timeout: float
    ) -> list[tuple[str, bytes]]:
        """Run one request on the warm host (starting it first if it is not running)."""
        async with self._lock(spec.experiment_id):
            host = self._hosts.get(spec.experiment_id)
            if host is None or not host.alive:
                host = await self._start_locked(spec, timeout)
            out_dir = host.work_dir / "requests" / uuid.uuid4().hex
            try:
                reply = await asyncio.to_thread(
                    host.call, {"op": "infer", "image": image, "params": params, "out_dir": str(out_dir)}, timeout
                )
                if not reply.get("ok"):
                    raise Invalid(f"Error: {reply.get('error')}")
                return await asyncio.to_thread(_read_outputs, out_dir, reply["files"])
            except TimeoutError as exc:
                raise Unavailable(str(exc)) from None
            finally:
                await asyncio.to_thread(shutil.rmtree, out_dir, True)

    async def swap(self, experiment_id: str, weights: Path, timeout: float = 120) -> None:
        """Load new weights into the running host between two requests."""
        async with self._lock(experiment_id):
            host = self._hosts.get(experiment_id)
            if host is None or not host.alive:
                return  # the next start loads the bundle's (updated) weights
            reply = await asyncio.to_thread(host.call, {"op": "swap", "weights": str(weights)}, timeout)
            if not reply.get("ok"):
                raise Unavailable(f"Error: swapping weights failed: {reply.get('error')}")

    async def stop(self, experiment_id: str) -> None:
        async with self._lock(experiment_id):
            host = self._hosts.pop(experiment_id, None)
            if host is not None:
                await asyncio.to_thread(host.stop)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(eid) for eid in list(self._hosts)))


def _read_outputs(out_dir: Path, files: list[str]) -> list[tuple[str, bytes]]:
    """`(name relative to out_dir, bytes)` of each output file."""
    return [(Path(f).relative_to(out_dir).as_posix(), Path(f).read_bytes()) for f in files]
