"""The API side of model hosts: start one warm, sandboxed process per real-time experiment, forward requests.

The host runs model code (`sandbox.py`): it gets its spec and requests as JSON frames (`wire.py`) and
answers the same way; its outputs are opened through `confined.py`. Blocking socket work runs in worker threads; each host serves one request at a time behind an
asyncio lock, so waiting requests cost the event loop nothing. A host that dies is reported to the
request in flight and started again on the next request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from medcloud import wire
from medcloud.config import Settings
from medcloud.confined import open_beneath, open_dir, parts_of, walk_dirs
from medcloud.errors import Conflict, Invalid, Unavailable

if TYPE_CHECKING:
    from medcloud.sandbox import Sandbox

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class HostSpec:
    """What a host process loads: JSON-serialisable, sent to the host as its first frame (`wire.py`)."""

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


MAX_REPLY_BYTES = 1 << 20  # a host's reply: a few output names, an error line, a small report
MAX_ERROR_CHARS = 2000
HOST_LOG = "host.log"


class ModelHost:
    """One sandboxed model-host process and the socket to it (blocking methods: call from a thread).

    Its folder `hosts/<experiment>/` is the server's: `host.log` (the host's output, opened here and handed
    over as its stdout), `in/` (each request's input, staged here, read-only for the host) and `out/` (the
    one folder the host may write, made afresh at every start and read back through `confined.py`).
    """

    def __init__(self, spec: HostSpec, work_dir: Path, sandbox: Sandbox) -> None:
        self.spec = spec
        self.work_dir = work_dir
        self.in_dir = work_dir / "in"
        self.out_dir = work_dir / "out"
        self.sandbox = sandbox
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._out_fd: int | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _prepare_folders(self) -> None:
        """`in/` the server's, `out/` made afresh for the host's identity; anything else left there goes."""
        if self.work_dir.is_symlink():
            self.work_dir.unlink()
        if self.work_dir.exists() and self.work_dir.lstat().st_uid != os.geteuid():
            shutil.rmtree(self.work_dir)  # a folder of an older, uid-owned layout
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.work_dir, 0o700, follow_symlinks=False)
        shutil.rmtree(self.in_dir, ignore_errors=True)
        self.in_dir.mkdir(mode=0o755)
        os.chmod(self.in_dir, 0o755)
        self.sandbox.fresh_folder(self.out_dir, experiment_id=self.spec.experiment_id)
        self._out_fd = open_dir(self.out_dir)

    def start(self, timeout: float) -> None:
        """Spawn the sandboxed process, hand it its spec and wait until its model is loaded."""
        self._prepare_folders()
        ours, theirs = socket.socketpair()
        launch = self.sandbox.launch(
            ["-m", "medcloud.inference.host", "--fd", str(theirs.fileno())],
            experiment_id=self.spec.experiment_id,
            readable=[Path(self.spec.bundle_dir), self.in_dir],
            writable=self.out_dir,
            keep_fds=[theirs.fileno()],
        )
        log_fd = os.open(
            self.work_dir / HOST_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            self._proc = subprocess.Popen(
                launch.argv, stdout=log_fd, stderr=subprocess.STDOUT, start_new_session=True, **launch.popen_kwargs()
            )
        finally:
            os.close(log_fd)
            theirs.close()
        self._sock = ours
        try:
            wire.send(ours, {"op": "load", "spec": asdict(self.spec)})
            reply = self._receive(timeout, waiting_for="load the model")
        except Exception:
            self.stop()
            raise
        if not reply.get("ok"):
            self.stop()
            raise Invalid(f"Error: the model could not be loaded: {reply.get('error')}")

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply; a timeout ends the host (its reply would be stale)."""
        if not self.alive or self._sock is None:
            raise HostDied("Error: the model host is not running.")
        try:
            wire.send(self._sock, msg)
            return self._receive(timeout, waiting_for="answer")
        except (HostDied, TimeoutError):
            self.stop()
            raise
        except OSError as exc:
            self.stop()
            raise HostDied(f"Error: lost the connection to the model host: {exc}") from None

    def _receive(self, timeout: float, *, waiting_for: str) -> dict[str, Any]:
        """The host's next frame, checked (`checked_reply`); a host that sends garbage is stopped."""
        deadline = time.monotonic() + timeout
        assert self._sock is not None
        while not select.select([self._sock], [], [], 0.05)[0]:
            if not self.alive:
                code = self._proc.returncode if self._proc else None
                raise HostDied(
                    f"Error: the model host exited (code {code}) before it could {waiting_for}; see {HOST_LOG} in "
                    "its host folder. It is started again on the next request."
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"Error: the model host did not {waiting_for} within {timeout:.0f} s.")
        self._sock.settimeout(max(deadline - time.monotonic(), 1.0))
        try:
            return checked_reply(wire.receive(self._sock, max_bytes=MAX_REPLY_BYTES))
        except (EOFError, OSError):
            raise HostDied(
                "Error: the model host closed the connection; it is started again on the next request."
            ) from None
        except wire.WireError as exc:
            raise HostDied(f"Error: the model host sent a malformed reply ({exc}); it is started again.") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(None)

    def open_outputs(self, request: str, names: list[str]) -> Outputs:
        """The request's output files, opened below `out/` one name at a time (never through a link)."""
        assert self._out_fd is not None
        outputs = Outputs(files=[], folder=None, cleanup=functools.partial(self.forget, request))
        try:
            request_fd = walk_dirs(self._out_fd, [request])
        except OSError:
            outputs.close()
            raise Unavailable("Error: the model host's output folder is missing or was replaced.") from None
        try:
            for name in names:
                try:
                    outputs.files.append((name, open_beneath(request_fd, name)))
                except OSError as exc:
                    raise Unavailable(f"Error: the model's output {name!r} cannot be read: {exc}") from None
        except BaseException:
            outputs.close()
            raise
        finally:
            os.close(request_fd)
        return outputs

    def forget(self, request: str) -> None:
        """Remove a request's input (ours) and output (the host's: removed through an fd, links not followed)."""
        shutil.rmtree(self.in_dir / request, ignore_errors=True)
        if self._out_fd is not None:
            try:
                shutil.rmtree(request, dir_fd=self._out_fd)
            except OSError:
                pass

    def stop(self, grace_s: float = 5.0) -> None:
        """Ask politely, then kill the whole process group; frees the device."""
        if self._sock is not None and self.alive:
            try:
                wire.send(self._sock, {"op": "stop"})
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
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        if self._out_fd is not None:
            os.close(self._out_fd)
            self._out_fd = None


def checked_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A host's reply reduced to what the server uses, each of the type it must have (WireError if not)."""
    ok = reply.get("ok")
    if not isinstance(ok, bool):
        raise wire.WireError("`ok` is not a boolean")
    checked: dict[str, Any] = {"ok": ok}
    if not ok:
        error = reply.get("error")
        checked["error"] = (error if isinstance(error, str) else "the model failed")[:MAX_ERROR_CHARS]
        return checked
    files = reply.get("files", [])
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise wire.WireError("`files` is not a list of names")
    for name in files:
        try:
            parts_of(name)
        except OSError:
            raise wire.WireError(f"the output name {name[:100]!r} is not a plain relative path") from None
    checked["files"] = files
    inference = reply.get("inference")
    checked["inference"] = inference if isinstance(inference, dict) else None
    return checked


class HostManager:
    """All model hosts of this server, by experiment id."""

    def __init__(self, settings: Settings, executor: Executor | None = None) -> None:
        self.settings = settings
        self.executor = executor  # the "model" pool (pools.py); None: the default thread pool
        self.root = settings.data_dir / "hosts"
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
        host = ModelHost(spec, self.root / spec.experiment_id, await self._run(self._sandbox))
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
            request = uuid.uuid4().hex
            try:
                staged = await self._run(self._sandbox().stage, Path(image), host.in_dir / request / Path(image).name)
                reply = await self._run(
                    host.call,
                    {"op": "infer", "image": str(staged), "params": params, "out_dir": str(host.out_dir / request)},
                    timeout,
                )
                if not reply.get("ok"):
                    raise Invalid(f"Error: {reply.get('error')}")
                # The caller streams them and then calls `close()`, which removes the request's folders.
                outputs = await self._run(host.open_outputs, request, reply["files"])
                outputs.inference = reply.get("inference")
                return outputs
            except BaseException as exc:
                await self._run(host.forget, request)
                if isinstance(exc, TimeoutError):
                    raise Unavailable(str(exc)) from None
                raise

    def _sandbox(self) -> Sandbox:
        from medcloud.sandbox import sandbox_for

        return sandbox_for(self.settings)

    def _stage_weights(self, host: ModelHost, weights: Path) -> Path:
        return self._sandbox().stage(weights, host.in_dir / "weights" / uuid.uuid4().hex / "model.pt")

    async def swap(self, experiment_id: str, weights: Path, timeout: float = 120) -> None:
        """Load new weights into the running host between two requests."""
        async with self._lock(experiment_id):
            host = self._hosts.get(experiment_id)
            if host is None or not host.alive:
                return  # the next start loads the bundle's (updated) weights
            staged = await self._run(self._stage_weights, host, weights)
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
    folder: Path | None = None  # a folder of the server's to remove afterwards (None: nothing, or `cleanup`)
    inference: dict[str, Any] | None = None  # the host's inference mode and check (inference/accel/checked.py)
    cleanup: Callable[[], None] | None = None  # removes the request's folders (a model host's)

    def close(self) -> None:
        for _name, handle in self.files:
            handle.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.cleanup is not None:
            self.cleanup()
