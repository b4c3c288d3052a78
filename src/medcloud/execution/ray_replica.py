"""The model replica of the Ray backend: one Ray Serve replica holding one experiment's warm model.

It runs on a Ray worker, on any node of the cluster, so it imports what a model needs (the predictor of
`inference/host.py`) and nothing of the API server: no settings, database or secrets. What crosses the
seam is data: a request brings the input files' bytes and answers the output files' bytes; the bundle
and hot-swapped weights are read from the cluster's shared folder (`MEDCLOUD_RAY_SHARED_DIR`).

`execution/ray_hosts.py` deploys this class; Serve calls `reconfigure` with the deployment's
`user_config` when a replica starts and whenever it changes (hot swap), and `check_health` periodically.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from medcloud.confined import read_regular
from medcloud.inference.host import build_predictor, describe, inference_report

log = logging.getLogger("medcloud.replica")

DEPLOYMENT = "ModelReplica"  # the deployment's name inside each experiment's Serve application
# A request still running this long past its deadline makes the health check fail: Serve replaces the replica
# (the local backend ends a host whose request timed out; model code in a thread cannot be interrupted).
HUNG_GRACE_S = 30.0


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is the one-line reason the client gets."""


def _relative(name: str) -> Path:
    """A file name sent by the API, as a path that stays inside the request's folder."""
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise ValueError(f"bad input file name {name!r}")
    return Path(*path.parts)


class ModelReplica:
    """One warm model: loads the bundle once, answers one request at a time (`max_ongoing_requests=1`).

    Args:
        spec: the host spec (`inference.hosts.HostSpec` as a dict) whose `bundle_dir` is in the shared folder.
        threads: torch's intra-op threads, matching the CPUs Ray reserved for the replica.
    """

    def __init__(self, spec: dict[str, Any], threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.spec = spec
        self.threads = threads
        self._lock = threading.Lock()  # a request and a weight swap never overlap
        try:
            self._predictor = build_predictor(spec)
            self._predictor.load()
        except Exception as exc:  # Serve reports the traceback's last lines: make them the model's own error
            raise ModelLoadError(describe(exc)) from None
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
                self._predictor.swap_weights(Path(weights))
        except Exception as exc:  # noqa: BLE001  (reported through info(), see above)
            self._swap_error = {"weights": weights, "error": describe(exc)}
            return
        self._weights, self._swap_error = weights, None
        log.info("Swapped in weights %s", weights)

    def infer(
        self, image: str, files: list[tuple[str, bytes]], params: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Run one request: `files` (name relative to the input folder, bytes) are written into a private
        folder, `image` names the model's input among them. Answers `{"ok": True, "files": [(name, bytes)]}`
        (regular files inside the output folder only) or `{"ok": False, "error", "kind"}`."""
        with self._lock, tempfile.TemporaryDirectory(prefix="medcloud-request-") as tmp:
            self._deadline = time.monotonic() + timeout if timeout else None
            try:
                in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
                out_dir.mkdir()
                for name, data in files:
                    target = in_dir / _relative(name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                try:
                    written = self._predictor.predict(str(in_dir / _relative(image)), params, out_dir)
                except Exception as exc:  # noqa: BLE001  (the model's error goes back to the client)
                    return {"ok": False, "kind": "model", "error": describe(exc)}
                return {**self._outputs(written, out_dir), "inference": inference_report(self._predictor)}
            finally:
                self._deadline = None

    @staticmethod
    def _outputs(written: list[Path], out_dir: Path) -> dict[str, Any]:
        outputs = []
        for path in written:
            path = Path(path)
            if not path.is_absolute() or not path.is_relative_to(out_dir):
                return {"ok": False, "kind": "output", "error": "the model named an output outside its output folder"}
            try:
                outputs.append((path.relative_to(out_dir).as_posix(), read_regular(path, out_dir)))
            except OSError as exc:
                return {"ok": False, "kind": "output", "error": f"the model's output {path.name} cannot be read: {exc}"}
        return {"ok": True, "files": outputs}

    def check_health(self) -> None:
        """Serve's periodic health check: fails once a request has run far past its deadline (hung model)."""
        deadline = self._deadline
        if deadline is not None and time.monotonic() > deadline + HUNG_GRACE_S:
            raise RuntimeError("a request has run far past its deadline; the replica is replaced")

    def info(self) -> dict[str, Any]:
        """Who and where this replica is, what it serves, and which MEDCLOUD_* variables it sees (none)."""
        import ray
        from ray import serve

        context = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node_id": context.get_node_id(),
            "actor_id": context.get_actor_id(),
            "replica_id": serve.get_replica_context().replica_id.unique_id,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "spec": self.spec,
            "threads": self.threads,
            "config": self._config,
            "weights": self._weights,
            "swap_error": self._swap_error,
            "medcloud_env": sorted(k for k in os.environ if k.startswith("MEDCLOUD")),
        }
