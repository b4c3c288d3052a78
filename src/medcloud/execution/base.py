"""The two execution interfaces every backend implements, and the data that crosses them.

Model hosts: `HostBackend` starts one warm model per real-time experiment, runs requests on it (an
image file in, output files out), swaps weights, stops it, and at start-up reconciles what runs with
what the database wants. Jobs: `JobBackend` submits a `JobTicket` (everything the job needs, as data),
reports on it (`JobReport`), cancels it, and adopts it again after an API restart. The scheduler
(`jobs/runner.py`) is backend-neutral and the only writer of job status; backends never open the
database.

Every method of `JobBackend` blocks (call it from a thread); `HostBackend` is async.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from medcloud.inference.hosts import HostSpec, Outputs
    from medcloud.jobs.ticket import JobTicket


class HostBackend(Protocol):
    """Warm model hosts, one per real-time experiment (local processes, or a Ray Serve application)."""

    async def start(self, spec: HostSpec, timeout: float) -> None:
        """Start (or restart) the experiment's model and return once it answers; `Invalid` if it cannot load."""

    async def infer(
        self, spec: HostSpec, *, image: str, params: dict[str, Any], timeout: float, start_timeout: float | None = None
    ) -> Outputs:
        """Run one request (starting the model first when it is not running); the output files, open.

        `image` is a file on the API machine (the image cache); a backend whose models run elsewhere sends
        its bytes. The caller streams the outputs and then calls `Outputs.close()`.
        """

    async def swap(self, experiment_id: str, weights: Path, timeout: float = 120) -> None:
        """Load new weights into every running replica (and into replicas started later)."""

    async def stop(self, experiment_id: str, *, retire: bool = False) -> None:
        """Stop the experiment's model; `retire`: refuse requests already waiting for it (delete, turn off)."""

    def retired(self, experiment_id: str) -> bool: ...

    def revive(self, experiment_id: str) -> None:
        """A delete did not happen after all: the experiment's next request may start its model again."""

    async def reconcile(self, wanted: dict[str, HostSpec]) -> None:
        """At start-up: `wanted` are the real-time experiments in the database; reattach to their running
        models where the backend keeps them across API restarts, and stop the ones no longer wanted."""

    async def stop_all(self) -> None:
        """At API shutdown: stop what dies with the API (local processes); leave cluster-owned models running."""


JobState = Literal["running", "ended", "gone"]


@dataclass
class JobReport:
    """What a backend knows of one job: `running`; `ended` (its outcome, if it left one); `gone` (no trace).

    `gone` for a job with no handle means it was never started: the scheduler queues it again.
    """

    state: JobState
    progress: dict[str, Any] | None = None  # the latest progress the job reported (merged into `result`)
    outcome: dict[str, Any] | None = None  # {"status": "Done"|"Error", "message", "result"} once ended
    detail: str = ""  # how it ended when it left no outcome (an exit code, the cluster's message)


@dataclass
class Handle:
    """A backend's handle of one submitted job, kept as JSON in the jobs table (`backend_handle`)."""

    backend: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, **self.data}

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Handle | None:
        if not value or "backend" not in value:
            return None
        data = dict(value)
        return cls(backend=str(data.pop("backend")), data=data)


class JobBackend(Protocol):
    """Runs train and batch jobs (local processes, or Ray Jobs). Blocking methods: call from a thread."""

    name: str
    on_exit: Callable[[], None] | None  # set by the scheduler: call it (any thread) when a job ends, if you can tell

    def submit(self, ticket: JobTicket) -> Handle:
        """Start the job; idempotent per job id (a second submit of the same job returns the same handle)."""

    def report(self, job_id: str, handle: Handle | None) -> JobReport:
        """The job's state now; `handle` None: it was submitted by an API that died before recording it."""

    def cancel(self, job_id: str, handle: Handle | None, timeout: float = 30) -> None:
        """Stop the job and wait (up to `timeout`) until nothing of it runs."""

    def adopt(self, job_id: str, handle: Handle | None) -> Handle | None:
        """After an API restart: the handle of the job if it still runs, else None."""

    def logs(self, job_id: str, handle: Handle | None) -> Path | None:
        """The job's log as a file on the API machine (copied from the cluster when needed), or None."""

    def job_dir(self, job_id: str) -> Path:
        """The job's folder as the API machine sees it (`results/`, `outcome.json`)."""
