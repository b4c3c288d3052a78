"""The job states, which are terminal, and the one table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    DONE = "Done"
    ERROR = "Error"
    CANCELING = "Canceling"
    CANCELED = "Canceled"


TERMINAL = frozenset({JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELED})
ACTIVE = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELING})

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELING, JobStatus.CANCELED, JobStatus.ERROR}),
    # Running → Pending: only at start-up, for a job whose process was never started (the server died
    # between committing Running and starting it), so it is queued again rather than lost.
    JobStatus.RUNNING: frozenset(
        {JobStatus.PENDING, JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELING, JobStatus.CANCELED}
    ),
    JobStatus.CANCELING: frozenset({JobStatus.CANCELED, JobStatus.ERROR}),
    JobStatus.DONE: frozenset(),
    JobStatus.ERROR: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def allowed(current: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED[current]
