"""Model hosts on a Ray cluster: one Ray Serve application per real-time experiment (the `ray` extra).

medcloud's own FastAPI app stays the front door: Serve runs with its HTTP proxy off, and requests reach
the replicas through deployment handles. What crosses the seam is data: a request sends the image's
bytes and gets the output files' bytes back; the bundle and hot-swapped weights are copied into the
folder every node sees (`MEDCLOUD_RAY_SHARED_DIR`). The replica itself is `execution/ray_replica.py`.

Serve applications belong to the cluster, not to this process: an API that stops leaves them running and
the next one reattaches (`reconcile`, or the first request), so a restart reloads no model.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus, ApplicationStatusOverview

from medcloud import __version__, wire
from medcloud.config import Settings
from medcloud.confined import copy_regular, regular_files
from medcloud.errors import Conflict, Invalid, Unavailable
from medcloud.execution.ray_replica import DEPLOYMENT, ModelLoadError, ModelReplica
from medcloud.execution.shared import publish
from medcloud.inference.hosts import HostSpec, Outputs

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.1  # how often a wait for Serve asks for the application's status
ROUTER_RETRY = {"initial_backoff_s": 0.005, "backoff_multiplier": 2, "max_backoff_s": 0.02}


class RayHosts:
    """Warm models as Ray Serve applications named `<ray_namespace>-<experiment id>`, one deployment each.

    Replicas: `model_params.replicas` of the experiment (at most `MEDCLOUD_RAY_MAX_REPLICAS`; more is refused
    with a 400). When `MEDCLOUD_RAY_MAX_REPLICAS` is larger, Serve autoscales the experiment between
    `replicas` and that maximum (one request in flight per replica is the target); otherwise it runs exactly
    `replicas`. Each replica reserves `MEDCLOUD_RAY_GPUS_PER_REPLICA` GPUs (0.5: two replicas share one GPU)
    and `MEDCLOUD_RAY_CPUS_PER_REPLICA` CPUs (its torch and OpenMP threads), and answers one request at a
    time; Serve queues the rest and routes each to a free replica.

    Hot swap: the weights are copied into the shared folder and the application is redeployed with
    `user_config={"weights": path}` under an unchanged deployment version, so Serve calls
    `reconfigure` on every running replica without restarting it, and gives the same `user_config`
    to every replica it starts later (a scale-up, a replacement).

    Failures: a replica that dies fails its request in flight with `Unavailable` (503); Serve starts a new
    one, and the next request waits for a running replica (up to the host start timeout). A request that
    outlives its timeout is 503 too, and a replica whose request is still running well past its deadline
    fails its health check and is replaced. A model that cannot load is `Invalid` (400).

    Security: a replica is a trusted shim; the model runs in the same bubblewrap sandbox as on the local
    backend (`sandbox.py`), on the replica's node, with the API's `MEDCLOUD_SANDBOX_*` limits, and answers
    JSON and bytes only (`wire.py`). The runtime environment given here carries thread counts only, never
    a MEDCLOUD_* setting or any secret of the API.
    """

    def __init__(self, settings: Settings, executor: Executor | None = None) -> None:
        if settings.ray_shared_dir is None:
            raise ValueError(
                "MEDCLOUD_RAY_SHARED_DIR is not set: the Ray backend (MEDCLOUD_RAY_ADDRESS) needs a folder "
                "that the API and every Ray node see at the same path, for bundles and weights."
            )
        self.settings = settings
        self.executor = executor  # the "model" pool (pools.py); None: the default thread pool
        self.shared = settings.ray_shared_dir
        self.prefix = f"{settings.ray_namespace}-"
        self.threads = max(1, int(settings.ray_cpus_per_replica))
        self._handles: dict[str, DeploymentHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired: set[str] = set()  # deleted or turned off: waiting requests must not start them again
        self._stale: set[str] = set()  # a replica failed: look at the application again before the next request
        self._connect_lock = threading.Lock()
        self._serve_started = False

    # -- the HostBackend interface ----------------------------------------------------------------

    async def start(self, spec: HostSpec, timeout: float) -> None:
        """Deploy (or redeploy) the experiment's application and return once its replicas answer."""
        async with self._lock(spec.experiment_id):
            self._retired.discard(spec.experiment_id)
            self._handles.pop(spec.experiment_id, None)
            self._handles[spec.experiment_id] = await self._run(self._deploy, spec, timeout)
            self._stale.discard(spec.experiment_id)

    async def infer(
        self,
        spec: HostSpec,
        *,
        image: str,
        params: dict[str, Any],
        timeout: float,
        start_timeout: float | None = None,
    ) -> Outputs:
        """Run one request on a replica (deploying or waiting for one first); its output files, in memory."""
        eid = spec.experiment_id
        handle = await self._ready_handle(spec, timeout if start_timeout is None else start_timeout)
        name, files = await self._run(_read_input, Path(image))
        response = handle.infer.remote(name, files, params, timeout)
        try:
            reply, outputs = await asyncio.wait_for(_result(response), timeout)
        except TimeoutError:
            response.cancel()
            self._stale.add(eid)  # look at the application again: a replica may be hung, or it was deleted
            raise self._retired_error(eid) or Unavailable(
                f"Error: the model replica did not answer within {timeout:.0f} s."
            ) from None
        except (RayError, RayServeException) as exc:
            self._stale.add(eid)
            raise self._retired_error(eid) or Unavailable(_replica_failure(exc)) from None
        except asyncio.CancelledError:  # the client went away: free the replica's queue too
            response.cancel()
            raise
        if reply.get("ok") is not True:
            error = f"Error: {str(reply.get('error'))[:2000]}"
            raise Invalid(error) if reply.get("kind") == "model" else Unavailable(error)
        inference = reply.get("inference")
        return Outputs(
            files=[(rel, io.BytesIO(data)) for rel, data in outputs],
            folder=None,
            inference=inference if isinstance(inference, dict) else None,
        )

    async def swap(self, experiment_id: str, weights: Path, timeout: float = 120) -> None:
        """Load new weights into every replica, and into every replica Serve starts later."""
        async with self._lock(experiment_id):
            await self._run(self._swap, experiment_id, weights, timeout)

    async def stop(self, experiment_id: str, *, retire: bool = False) -> None:
        """Delete the experiment's application; `retire`: and refuse requests already waiting for it."""
        if retire:
            self._retired.add(experiment_id)
        async with self._lock(experiment_id):
            self._handles.pop(experiment_id, None)
            self._stale.discard(experiment_id)
            await self._run(self._delete, experiment_id)

    def retired(self, experiment_id: str) -> bool:
        return experiment_id in self._retired

    def revive(self, experiment_id: str) -> None:
        """The delete did not happen after all: the experiment's next request may deploy it again."""
        self._retired.discard(experiment_id)

    async def reconcile(self, wanted: dict[str, HostSpec]) -> None:
        """At start-up: delete this server's applications no experiment wants; reattach to the running ones
        (no redeploy, no reload). Wanted experiments without an application deploy on their next request."""
        apps = await self._run(self._our_apps)
        for eid, status in apps.items():
            if eid not in wanted:
                log.info("Deleting the Serve application of experiment %s: no longer wanted", eid)
                await self.stop(eid)
            elif status == ApplicationStatus.RUNNING:
                async with self._lock(eid):
                    self._handles[eid] = await self._run(self._attach, self._app(eid))

    async def stop_all(self) -> None:
        """API shutdown: the cluster owns the replicas; forget the handles and leave the applications running."""
        self._handles.clear()

    # -- blocking work (the model pool) -----------------------------------------------------------

    def _connect(self) -> None:
        """Connect this process to the cluster once (and start Serve there, proxy off, if nobody has)."""
        with self._connect_lock:
            if ray.is_initialized() and self._serve_started:
                return
            try:
                if not ray.is_initialized():
                    ray.init(
                        address=self.settings.ray_address,
                        namespace=self.settings.ray_namespace,
                        logging_level=logging.WARNING,
                        log_to_driver=False,
                    )
                # Ignored when Serve already runs on the cluster; the proxy stays off either way from here.
                serve.start(proxy_location="Disabled")
            except Exception as exc:  # noqa: BLE001  (any failure to reach the cluster is the same answer)
                raise Unavailable(
                    f"Error: the Ray cluster at {self.settings.ray_address} cannot be reached: {exc}"
                ) from None
            self._serve_started = True

    def _deploy(self, spec: HostSpec, timeout: float) -> DeploymentHandle:
        """Deploy the experiment's current bundle and wait until every replica has loaded it."""
        self._connect()
        replicas_allowed(spec.replicas, self.settings.ray_max_replicas)
        name = self._app(spec.experiment_id)
        replica_spec = {**asdict(spec), "bundle_dir": str(self._share_bundle(spec))}
        config: dict[str, Any] = {}
        current = self._status(name)
        if current is not None and _running_replicas(current):
            # A redeploy keeps hot-swapped weights: they are applied on top of the bundle in every replica.
            config = replica_info(self._attach(name), timeout)["config"]
        self._run_app(name, replica_spec, config)
        try:
            self._wait_running(name, timeout, every_replica=True)
        except BaseException:
            serve.delete(name)
            raise
        return self._attach(name)

    def _attach_or_deploy(self, spec: HostSpec, timeout: float, handle: DeploymentHandle | None) -> DeploymentHandle:
        """A handle to the experiment's application once a replica runs: the application already there
        (after an API restart, or a replica's death: `handle`, whose router knows which replica died),
        else a new deployment."""
        self._connect()
        name = self._app(spec.experiment_id)
        app = self._status(name)
        if app is not None and app.status == ApplicationStatus.DELETING:
            self._wait_gone(name, timeout)
            app = None
        if app is None or app.status == ApplicationStatus.DEPLOY_FAILED:
            return self._deploy(spec, timeout)
        self._wait_running(name, timeout, every_replica=False)
        return handle or self._attach(name)

    def _attach(self, name: str) -> DeploymentHandle:
        handle = serve.get_app_handle(name)
        handle.options()  # builds the handle's router here, in a worker thread, not on the event loop
        return handle

    def _run_app(self, name: str, replica_spec: dict[str, Any], config: dict[str, Any]) -> None:
        """Submit the application; Serve restarts replicas only when the version (bundle, resources) changes."""
        actor_options = {
            "num_cpus": self.settings.ray_cpus_per_replica,
            "num_gpus": self.settings.ray_gpus_per_replica,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}},
        }
        # Serve gives every imperative deploy a new random version (a rolling restart); an explicit version
        # derived from what replicas load makes a change of `user_config` or of the replica count an in-place
        # update. The replica count is left out of it on purpose.
        loaded = {k: v for k, v in replica_spec.items() if k != "replicas"}
        version = hashlib.sha256(
            json.dumps([loaded, actor_options, self.threads, __version__], sort_keys=True).encode()
        ).hexdigest()[:16]
        deployment = serve.deployment(
            ModelReplica,
            name=DEPLOYMENT,
            max_ongoing_requests=1,
            # A request waiting for a busy replica is assigned on its next retry: with Serve's backoff (up to
            # 0.5 s) a replica sat idle ~100 ms between two clicks; a short one keeps it busy.
            request_router_config=ROUTER_RETRY,
            max_constructor_retry_count=1,  # a model that cannot load fails the deploy at once (400)
            ray_actor_options=actor_options,
            user_config=config,
            **self._scaling(int(replica_spec["replicas"])),
        ).options(version=version, _internal=True)
        bound = deployment.bind(replica_spec, self.threads, sandbox_settings(self.settings))
        target = serve.RunTarget(target=bound, name=name, route_prefix=None)
        serve.run_many([target], wait_for_applications_running=False)

    def _scaling(self, replicas: int) -> dict[str, Any]:
        """Exactly `low` replicas, or autoscaling from `low` to the maximum; `low` is the experiment's count,
        raised to the site's floor (`MEDCLOUD_RAY_MIN_REPLICAS`, capped by the maximum)."""
        top = self.settings.ray_max_replicas
        low = max(replicas, min(self.settings.ray_min_replicas, top))
        if top > low:
            return {
                "autoscaling_config": {
                    "min_replicas": low,
                    "initial_replicas": low,
                    "max_replicas": top,
                    "target_ongoing_requests": 1,
                }
            }
        return {"num_replicas": low}

    def _wait_running(self, name: str, timeout: float, *, every_replica: bool) -> None:
        """Until the application runs (`every_replica`) or has a running replica; 400 if it failed to load."""
        deadline = time.monotonic() + timeout
        while True:
            app = self._status(name)
            if app is None:
                raise Unavailable(f"Error: the model's Serve application {name} was deleted meanwhile.")
            if app.status == ApplicationStatus.DEPLOY_FAILED:
                raise Invalid(f"Error: the model could not be loaded: {_failure_reason(app)}")
            if app.status == ApplicationStatus.RUNNING or (not every_replica and _running_replicas(app)):
                return
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"Error: the model did not load within {timeout:.0f} s (the server's "
                    "MEDCLOUD_HOST_START_TIMEOUT_S); is there room on the cluster for its replicas?"
                )
            time.sleep(POLL_S)

    def _wait_gone(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._status(name) is not None:
            if time.monotonic() > deadline:
                raise Unavailable(f"Error: the model's Serve application {name} is still being deleted.")
            time.sleep(POLL_S)

    def _swap(self, experiment_id: str, weights: Path, timeout: float) -> None:
        self._connect()
        name = self._app(experiment_id)
        app = self._status(name)
        if app is None or not _running_replicas(app):
            return  # nothing runs: the next deploy loads the bundle, whose weights the caller updated
        handle = self._attach(name)
        info = replica_info(handle, timeout)
        staged = self._stage_weights(experiment_id, weights)
        self._run_app(name, info["spec"], {**info["config"], "weights": str(staged)})
        self._wait_running(name, timeout, every_replica=True)
        failed = replica_info(handle, timeout)["swap_error"]
        if failed and failed["weights"] == str(staged):
            self._run_app(name, info["spec"], info["config"])  # keep every replica, and later ones, on the old
            self._wait_running(name, timeout, every_replica=True)
            raise Unavailable(f"Error: swapping weights failed: {failed['error']}")
        for old in (self.shared / "weights" / experiment_id).iterdir():
            if old != staged:
                old.unlink(missing_ok=True)

    def _delete(self, experiment_id: str) -> None:
        try:
            self._connect()
        except Unavailable as exc:  # the next start-up's reconcile deletes what no experiment wants
            log.warning("Could not delete the Serve application of experiment %s: %s", experiment_id, exc.message)
            return
        serve.delete(self._app(experiment_id))
        for kind in ("bundles", "weights"):
            shutil.rmtree(self.shared / kind / experiment_id, ignore_errors=True)

    def _our_apps(self) -> dict[str, ApplicationStatus]:
        """This server's applications (its namespace's prefix, then an experiment id) and their status."""
        self._connect()
        found = {}
        for name, app in serve.status().applications.items():
            eid = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
            if _is_uuid(eid):
                found[eid] = app.status
        return found

    def _status(self, name: str) -> ApplicationStatusOverview | None:
        return serve.status().applications.get(name)

    def _share_bundle(self, spec: HostSpec) -> Path:
        """The bundle published to `<shared>/bundles/<experiment>/<content digest>/` (`execution/shared.py`)."""
        source = Path(spec.bundle_dir)
        root = self.shared / "bundles" / spec.experiment_id
        if source.resolve().is_relative_to(root.resolve()):
            return source  # already the shared copy (a redeploy of what runs)
        return publish(source, root)

    def _stage_weights(self, experiment_id: str, weights: Path) -> Path:
        """The weights copied to `<shared>/weights/<experiment>/<uuid>.pt` (a regular file, never a link)."""
        folder = self.shared / "weights" / experiment_id
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{uuid.uuid4().hex}.pt"
        copy_regular(weights, weights.parent, target)
        return target

    # -- helpers ------------------------------------------------------------------------------------

    def _app(self, experiment_id: str) -> str:
        return f"{self.prefix}{experiment_id}"

    def _lock(self, experiment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(experiment_id, asyncio.Lock())

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work (Ray's client calls, copies) in the model pool, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    async def _ready_handle(self, spec: HostSpec, start_timeout: float) -> DeploymentHandle:
        eid = spec.experiment_id
        async with self._lock(eid):
            refused = self._retired_error(eid)
            if refused is not None:
                raise refused
            handle = self._handles.get(eid)
            if handle is None or eid in self._stale:
                handle = await self._run(self._attach_or_deploy, spec, start_timeout, handle)
                self._handles[eid] = handle
                self._stale.discard(eid)
            return handle

    def _retired_error(self, experiment_id: str) -> Conflict | None:
        if experiment_id not in self._retired:
            return None
        return Conflict(
            f"Error: experiment {experiment_id} was deleted, or its real-time inference turned off, "
            "while this request waited."
        )


def replicas_allowed(replicas: int, most: int) -> None:
    if replicas > most:
        raise Invalid(
            f"Error: model_params.replicas is {replicas}; this server runs at most {most} replicas per "
            "experiment (MEDCLOUD_RAY_MAX_REPLICAS)."
        )


def sandbox_settings(settings: Settings) -> dict[str, Any]:
    """The settings a replica applies to its sandboxed host on its node (`sandbox.py`)."""
    names = [name for name in Settings.model_fields if name.startswith("sandbox_")]
    return {"model_sandbox": settings.model_sandbox, **{name: getattr(settings, name) for name in names}}


def replica_info(handle: DeploymentHandle, timeout: float) -> dict[str, Any]:
    """A replica's `info()`: JSON bytes, decoded here (nothing but bytes comes back from a replica)."""
    raw = handle.info.remote().result(timeout_s=timeout)
    try:
        return wire.decode(raw)
    except (TypeError, wire.WireError) as exc:
        raise Unavailable(f"Error: the model replica answered something unexpected: {exc}") from None


async def _result(response: Any) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """A replica's answer: `wire.pack_files` bytes (never a Python object of the replica's choosing)."""
    raw = await response
    try:
        return wire.unpack_files(raw, max_header_bytes=1 << 20)
    except wire.WireError as exc:
        return {"ok": False, "kind": "output", "error": f"the replica's answer is malformed ({exc})"}, []


def _read_input(image: Path) -> tuple[str, list[tuple[str, bytes]]]:
    """The model's input as data: its name and its files (a folder: every regular file in it, by relative name)."""
    if image.is_dir():
        return image.name, [
            (f"{image.name}/{p.relative_to(image).as_posix()}", p.read_bytes()) for p in regular_files(image)
        ]
    return image.name, [(image.name, image.read_bytes())]


def _running_replicas(app: ApplicationStatusOverview) -> int:
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def _failure_reason(app: ApplicationStatusOverview) -> str:
    """The model's own error (the replica raises `ModelLoadError` with it), else the end of Serve's message."""
    messages = [d.message for d in app.deployments.values() if d.message] + [app.message or ""]
    for message in messages:
        marker = f"{ModelLoadError.__name__}: "
        if marker in message:
            return message[message.rindex(marker) + len(marker) :].strip()[:1000]
    lines = [line.strip() for line in "\n".join(messages).splitlines() if line.strip()]
    return lines[-1][:500] if lines else "the deployment failed"


def _replica_failure(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (
        f"Error: the model replica failed while answering ({type(exc).__name__}: {first}); Ray Serve starts "
        "a new one and the next request waits for it."
    )


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
