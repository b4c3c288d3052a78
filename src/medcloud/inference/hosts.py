"""The API side of model hosts: start one warm process per real-time experiment, forward requests.

Blocking socket work runs in worker threads; each host serves one request at a time behind an
asyncio lock, so waiting requests cost the event loop nothing. A host that dies is reported to the
request in flight and started again on the next request.
"""

from __future__ import annotations

import asyncio
import functools
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
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from medcloud.config import Settings
from medcloud.confined import open_regular
from medcloud.errors import Conflict, Invalid, Unavailable

if TYPE_CHECKING:
    from medcloud.sandbox import Sandbox

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class HostSpec:
    """What a host process loads: JSON-serialisable, written next to the host's log."""

    experiment_id: str
    kind: str  # the model family's name: "custom", "vista3d", "deepedit" (families/registry.py)
    bundle_dir: str
    overrides: dict[str, Any] = field(default_factory=dict)
    image_key: str = "image"
    labels: dict[str, str] = field(default_factory=dict)
    allow_expression_overrides: bool = False  # the operator's setting (bundles/overrides.py)
    replicas: int = 1  # model_params.replicas: the Ray backend runs this many (the local one runs one)
    inference_mode: str = "exact"  # inference/accel/modes.py; a faster mode is checked before it serves
    check_min_dice: float = 0.99
    prepare_wait_s: float = 120.0  # how long the host's start waits for the faster network


class HostDied(Unavailable):
    """The host process exited while we waited for it."""


class ModelHost:
    """One model-host process and the socket to it (blocking methods: call from a thread)."""

    def __init__(self, spec: HostSpec, work_dir: Path, python: str, sandbox: Sandbox | None = None) -> None:
        self.spec = spec
        self.work_dir = work_dir
        self.python = python
        self.sandbox = sandbox
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
        # Model code: a scrubbed environment, and its experiment's own user when the sandbox is active.
        process = (
            self.sandbox.popen_kwargs(experiment_id=self.spec.experiment_id, home=self.work_dir)
            if self.sandbox is not None
            else {"env": {**os.environ, "PYTHONUNBUFFERED": "1"}}
        )
        with open(self.work_dir / "host.log", "ab") as log_file:
            self._proc = subprocess.Popen(
                [self.python, "-m", "medcloud.inference.host", "--fd", str(theirs.fileno()), "--spec", str(spec_path)],
                pass_fds=[theirs.fileno()],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **process,
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

    def __init__(self, settings: Settings, executor: Executor | None = None) -> None:
        self.settings = settings
        self.executor = executor  # the "model" pool (pools.py); None: the default thread pool
        self.root = settings.data_dir / "hosts"
        self.python = settings.host_python or sys.executable
        self._hosts: dict[str, ModelHost] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Experiments deleted or turned off: a request that read the row before and waited behind the stop
        # must not start a new host for them.
        self._retired: set[str] = set()

    def _lock(self, experiment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(experiment_id, asyncio.Lock())

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work in the model pool: never queued behind other kinds of work, nor they behind it."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    def host(self, experiment_id: str) -> ModelHost | None:
        return self._hosts.get(experiment_id)

    async def start(self, spec: HostSpec, timeout: float) -> None:
        """Start (or restart) the experiment's host and wait until it is warm (`timeout`: for loading)."""
        async with self._lock(spec.experiment_id):
            self._retired.discard(spec.experiment_id)
            await self._start_locked(spec, timeout)

    async def _start_locked(self, spec: HostSpec, timeout: float) -> ModelHost:
        old = self._hosts.pop(spec.experiment_id, None)
        if old is not None:
            await self._run(old.stop)
        host = ModelHost(spec, self.root / spec.experiment_id, self.python, await self._run(self._sandbox))
        try:
            await self._run(host.start, timeout)
        except TimeoutError as exc:
            raise Unavailable(f"{exc} (the server's MEDCLOUD_HOST_START_TIMEOUT_S)") from None
        self._hosts[spec.experiment_id] = host
        return host

    async def infer(
        self,
        spec: HostSpec,
        *,
        image: str,
        params: dict[str, Any],
        timeout: float,
        start_timeout: float | None = None,
    ) -> Outputs:
        """Run one request on the warm host (starting it first if it is not running); its output files, open.

        `timeout` bounds the request; `start_timeout` (default: `timeout`) bounds loading the model when
        the host has to start first (after a restart, or after the host died), which may take far longer.
        """
        async with self._lock(spec.experiment_id):
            if spec.experiment_id in self._retired:
                raise Conflict(
                    f"Error: experiment {spec.experiment_id} was deleted, or its real-time inference turned off, "
                    "while this request waited."
                )
            host = self._hosts.get(spec.experiment_id)
            if host is None or not host.alive:
                host = await self._start_locked(spec, timeout if start_timeout is None else start_timeout)
            request_dir = host.work_dir / "requests" / uuid.uuid4().hex
            out_dir = request_dir / "out"
            try:
                staged = await self._run(self._stage_request, spec.experiment_id, Path(image), request_dir)
                reply = await self._run(
                    host.call, {"op": "infer", "image": str(staged), "params": params, "out_dir": str(out_dir)}, timeout
                )
                if not reply.get("ok"):
                    raise Invalid(f"Error: {reply.get('error')}")
                # The caller streams them and then calls `close()`, which removes the request's folder.
                outputs = await self._run(_open_outputs, request_dir, out_dir, reply["files"])
                outputs.inference = reply.get("inference")
                return outputs
            except BaseException as exc:
                await self._run(shutil.rmtree, request_dir, True)
                if isinstance(exc, TimeoutError):
                    raise Unavailable(str(exc)) from None
                raise

    def _sandbox(self) -> Sandbox:
        from medcloud.sandbox import sandbox_for

        return sandbox_for(self.settings)

    def _stage_weights(self, experiment_id: str, weights: Path, work_dir: Path) -> Path:
        sandbox = self._sandbox()
        staged = sandbox.stage(
            weights, work_dir / "weights" / uuid.uuid4().hex / "model.pt", experiment_id=experiment_id
        )
        sandbox.prepare(work_dir / "weights", experiment_id=experiment_id)
        return staged

    def _stage_request(self, experiment_id: str, image: Path, request_dir: Path) -> Path:
        """The request's folder, owned by the host's identity: the input linked in, an empty output folder."""
        sandbox = self._sandbox()
        staged = sandbox.stage(image, request_dir / "in" / image.name, experiment_id=experiment_id)
        (request_dir / "out").mkdir(parents=True)
        sandbox.prepare(request_dir, experiment_id=experiment_id)
        return staged

    async def swap(self, experiment_id: str, weights: Path, timeout: float = 120) -> None:
        """Load new weights into the running host between two requests."""
        async with self._lock(experiment_id):
            host = self._hosts.get(experiment_id)
            if host is None or not host.alive:
                return  # the next start loads the bundle's (updated) weights
            staged = await self._run(self._stage_weights, experiment_id, weights, host.work_dir)
            reply = await self._run(host.call, {"op": "swap", "weights": str(staged)}, timeout)
            if not reply.get("ok"):
                raise Unavailable(f"Error: swapping weights failed: {reply.get('error')}")

    async def stop(self, experiment_id: str, *, retire: bool = False) -> None:
        """Stop the experiment's host; `retire`: and start none for requests already waiting (delete, turn off).

        Retiring comes first: requests queued for the host, even ahead of this stop, are refused; the one
        in flight is answered.
        """
        if retire:
            self._retired.add(experiment_id)
        async with self._lock(experiment_id):
            host = self._hosts.pop(experiment_id, None)
            if host is not None:
                await self._run(host.stop)

    def retired(self, experiment_id: str) -> bool:
        return experiment_id in self._retired

    def revive(self, experiment_id: str) -> None:
        """The delete did not happen after all: the experiment's next request may start its host again."""
        self._retired.discard(experiment_id)

    async def reconcile(self, wanted: dict[str, HostSpec]) -> None:
        """Local hosts die with the API process: nothing to reattach; each wanted one starts on its next request."""

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(eid) for eid in list(self._hosts)))


@dataclass
class Outputs:
    """The output files of one request, open for reading; `close()` (blocking) closes them and removes their folder."""

    files: list[tuple[str, BinaryIO]]  # (name relative to the output folder, open file)
    folder: Path | None  # None: the files are in memory (a backend whose models run elsewhere)
    inference: dict[str, Any] | None = None  # the host's inference mode and check (inference/accel/checked.py)

    def close(self) -> None:
        for _name, handle in self.files:
            handle.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _open_outputs(request_dir: Path, out_dir: Path, files: list[str]) -> Outputs:
    """Open each output file: regular files inside `out_dir` only (the host is model code: it may name
    any path, or leave a link to one). Opened, not read: the reply streams them."""
    outputs = Outputs(files=[], folder=request_dir)
    try:
        for name in files:
            path = Path(name)
            if not path.is_absolute() or not path.is_relative_to(out_dir):
                raise Unavailable("Error: the model host named an output outside its output folder.")
            try:
                outputs.files.append((path.relative_to(out_dir).as_posix(), open_regular(path, out_dir)))
            except OSError as exc:
                raise Unavailable(f"Error: the model's output {path.name} cannot be read: {exc}") from None
    except BaseException:
        for _name, handle in outputs.files:
            handle.close()
        raise
    return outputs
