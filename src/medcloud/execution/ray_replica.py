"""The model replica of the Ray backend: a trusted shim around the same sandboxed model host as the local one.

One Ray Serve replica holds one experiment's warm model. The replica itself is medcloud's code and runs
no model code: it starts `inference/host.py` in the sandbox (`sandbox.py`: bubblewrap, no network, the
bundle read-only, one writable folder) on its own node, exactly as the local backend does, and forwards
requests to it as JSON frames. What it answers the API is bytes only (`wire.pack_files`: a JSON header
and the output files' bytes), never a Python object, so nothing model code chose is unpickled in the API.

The bundle and hot-swapped weights come from the cluster's shared folder (`MEDCLOUD_RAY_SHARED_DIR`);
the replica copies weights into its host's read-only input folder. `execution/ray_hosts.py` deploys this
class; Serve calls `reconfigure` with the deployment's `user_config` when a replica starts and whenever
it changes (hot swap), and `check_health` periodically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from medcloud import wire
from medcloud.config import Settings
from medcloud.errors import MedcloudError
from medcloud.inference.hosts import HostSpec, ModelHost

log = logging.getLogger("medcloud.replica")

DEPLOYMENT = "ModelReplica"  # the deployment's name inside each experiment's Serve application
# A request still running this long past its deadline makes the health check fail: Serve replaces the replica
# (the local backend ends a host whose request timed out).
HUNG_GRACE_S = 30.0
LOAD_TIMEOUT_S = 1800.0


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is the one-line reason the client gets."""


def _relative(name: str) -> Path:
    """A file name sent by the API, as a path that stays inside the request's folder."""
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise ValueError(f"bad input file name {name!r}")
    return Path(*path.parts)


def replica_uid_base(settings: dict[str, Any], experiment_id: str) -> int:
    """A uid for the experiment's model code on any node, from its id (replicas keep no shared table)."""
    base = int(settings.get("sandbox_uid_base", 2_100_000_000))
    return base + 10_000_000 + int(hashlib.sha256(experiment_id.encode()).hexdigest(), 16) % 10_000_000


class ModelReplica:
    """One warm model: a sandboxed host process, one request at a time (`max_ongoing_requests=1`).

    Args:
        spec: the host spec (`inference.hosts.HostSpec` as a dict) whose `bundle_dir` is in the shared folder.
        threads: the model's intra-op threads, matching the CPUs Ray reserved for the replica.
        sandbox: the API's `model_sandbox` and `sandbox_*` settings (limits), applied on this node.
    """

    def __init__(self, spec: dict[str, Any], threads: int = 1, sandbox: dict[str, Any] | None = None) -> None:
        from medcloud.sandbox import Sandbox

        self.spec = spec
        self.threads = threads
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        self._folder = Path(tempfile.mkdtemp(prefix="medcloud-replica-"))
        settings = Settings(data_dir=self._folder, **(sandbox or {}))
        self._sandbox = Sandbox(settings, fixed_uid=replica_uid_base(sandbox or {}, spec["experiment_id"]))
        self._sandbox.make_readable(Path(spec["bundle_dir"]))  # the published copy, read-only in the sandbox
        self._lock = threading.Lock()  # a request and a weight swap never overlap
        self._host = ModelHost(HostSpec(**spec), self._folder / "host", self._sandbox)
        try:
            self._host.start(LOAD_TIMEOUT_S)
        except MedcloudError as exc:  # Serve reports the traceback's last lines: make them the model's own error
            raise ModelLoadError(exc.message.removeprefix("Error: the model could not be loaded: ")) from None
        self._config: dict[str, Any] = {}
        self._weights: str | None = None  # the weights file swapped in last (None: the bundle's own)
        self._swap_error: dict[str, str] | None = None
        self._deadline: float | None = None  # monotonic time by which the request in progress should end
        log.info("Model replica ready for experiment %s", spec.get("experiment_id"))

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        """Serve's hook for `user_config` (at start and on every change): `{"weights": path}` hot-swaps them.

        Never raises: a replica that cannot load new weights keeps its current ones and says so in `info()`
        (raising here would fail the replica's start, and Serve would give up on the whole deployment).
        """
        self._config = dict(config or {})
        weights = self._config.get("weights")
        if not weights or weights == self._weights:
            return
        try:
            with self._lock:
                staged = self._sandbox.stage(
                    Path(weights), self._host.in_dir / "weights" / uuid.uuid4().hex / "model.pt"
                )
                reply = self._host.call({"op": "swap", "weights": str(staged)}, LOAD_TIMEOUT_S)
            if not reply.get("ok"):
                raise RuntimeError(reply.get("error") or "the swap failed")
        except Exception as exc:  # noqa: BLE001  (reported through info(), see above)
            message = exc.message if isinstance(exc, MedcloudError) else f"{type(exc).__name__}: {exc}"
            self._swap_error = {"weights": weights, "error": message}
            return
        self._weights, self._swap_error = weights, None
        log.info("Swapped in weights %s", weights)

    def infer(
        self, image: str, files: list[tuple[str, bytes]], params: dict[str, Any], timeout: float | None = None
    ) -> bytes:
        """Run one request: `files` (name relative to the input folder, bytes) are written into the host's
        read-only input folder, `image` names the model's input among them. Answers `wire.pack_files` bytes:
        `{"ok": True, "inference"}` with the output files, or `{"ok": False, "error", "kind"}`."""
        with self._lock:
            self._deadline = time.monotonic() + timeout if timeout else None
            request = uuid.uuid4().hex
            try:
                in_dir = self._host.in_dir / request
                for name, data in files:
                    target = in_dir / _relative(name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    os.chmod(target, 0o644)
                for folder in [in_dir, *in_dir.rglob("*")]:
                    if folder.is_dir():
                        os.chmod(folder, 0o755)
                message = {
                    "op": "infer",
                    "image": str(in_dir / _relative(image)),
                    "params": params,
                    "out_dir": str(self._host.out_dir / request),
                }
                try:
                    reply = self._host.call(message, timeout or LOAD_TIMEOUT_S)
                except MedcloudError as exc:
                    self._restart()
                    return wire.pack_files({"ok": False, "kind": "host", "error": exc.message}, [])
                if not reply.get("ok"):
                    return wire.pack_files({"ok": False, "kind": "model", "error": reply.get("error")}, [])
                try:
                    outputs = self._host.open_outputs(request, reply["files"])
                except MedcloudError as exc:
                    return wire.pack_files({"ok": False, "kind": "output", "error": exc.message}, [])
                try:
                    read = [(name, handle.read()) for name, handle in outputs.files]
                finally:
                    outputs.close()  # and the request's folders go
                return wire.pack_files({"ok": True, "inference": reply.get("inference")}, read)
            finally:
                self._host.forget(request)
                self._deadline = None

    def _restart(self) -> None:
        """A host that died or timed out is started again, with the weights swapped in last."""
        try:
            self._host.stop()
            self._host.start(LOAD_TIMEOUT_S)
            if self._weights:
                weights, self._weights = self._weights, None
                self.reconfigure({**self._config, "weights": weights})
        except Exception as exc:  # noqa: BLE001  (the health check then fails and Serve replaces the replica)
            log.error("Restarting the model host failed: %s", exc)

    def check_health(self) -> None:
        """Serve's periodic health check: fails when the host is gone or a request ran far past its deadline."""
        deadline = self._deadline
        if deadline is not None and time.monotonic() > deadline + HUNG_GRACE_S:
            raise RuntimeError("a request has run far past its deadline; the replica is replaced")
        if self._deadline is None and not self._host.alive:
            raise RuntimeError("the model host is gone; the replica is replaced")

    def info(self) -> bytes:
        """Who and where this replica is, what it serves, and which MEDCLOUD_* variables it sees (none), as JSON."""
        import ray
        from ray import serve

        context = ray.get_runtime_context()
        return json.dumps(
            {
                "pid": os.getpid(),
                "host_pid": self._host.pid,
                "host_folder": str(self._host.work_dir),
                "node_id": context.get_node_id(),
                "actor_id": context.get_actor_id(),
                "replica_id": serve.get_replica_context().replica_id.unique_id,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "spec": self.spec,
                "threads": self.threads,
                "config": self._config,
                "weights": self._weights,
                "swap_error": self._swap_error,
                "sandbox": self._sandbox.describe(),
                "medcloud_env": sorted(k for k in os.environ if k.startswith("MEDCLOUD")),
            }
        ).encode()

    def __del__(self) -> None:
        try:
            self._host.stop()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
