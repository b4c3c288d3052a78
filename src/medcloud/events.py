"""What routes and controllers tell the job scheduler and the annotation controllers: one path, any process.

Every event is published as a wake-up (`wakeups.py`: in-process on SQLite, `NOTIFY` across processes on
PostgreSQL); the leader (`leader.py`) subscribes and calls its scheduler (`ctx.runner`) and its annotation
hub (`ctx.hub`). A route never needs to know whether this process leads: the leader's own events take the
same path as a follower's, and what changed is already committed in the database (an event only says
"look again", so a lost one delays work but loses none).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medcloud.db import Database

log = logging.getLogger(__name__)

# Topics; the leader's subscriptions act on them (`leader.Role._subscribe`).
JOB_CREATED = "runner.wake"  # a train or batch job was created (payload unused)
JOB_CANCEL = "runner.cancel"  # payload: a job whose process must be killed (its status is Canceling already)
ANNOTATION_CREATED = "hub.launch"  # payload: an annotation job just created
CONTROLLERS_WAKE = "hub.wake"  # every annotation controller looks again (payload unused)
DATASET_NOTIFIED = "hub.dataset"  # payload: a dataset whose labels changed (notify, a saved label)

CANCEL_WAIT_S = 30.0


class Events:
    """The events of one API process; `ctx.events`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def job_created(self) -> None:
        self.db.wakeups.publish(JOB_CREATED)

    def annotation_created(self, job_id: str) -> None:
        self.db.wakeups.publish(ANNOTATION_CREATED, job_id)

    def dataset_notified(self, dataset_id: str) -> None:
        self.db.wakeups.publish(DATASET_NOTIFIED, dataset_id)

    def controllers_wake(self) -> None:
        self.db.wakeups.publish(CONTROLLERS_WAKE)

    async def job_cancel(self, job_id: str) -> bool:
        """Ask the leader to kill the job's process; return once the job ended (False: not within 30 s).

        The cancel is already committed (Canceling): if no leader answers in time, the next leader's
        scheduler kills the process when it finds the job Canceling.
        """
        self.db.wakeups.publish(JOB_CANCEL, job_id)
        return await asyncio.to_thread(wait_ended, self.db, job_id, CANCEL_WAIT_S)


def wait_ended(db: Database, job_id: str, timeout_s: float) -> bool:
    """Poll the job's row until its status is terminal (or it is gone); False after `timeout_s`."""
    from medcloud.jobs.orm import Job
    from medcloud.jobs.states import TERMINAL, JobStatus

    deadline = time.monotonic() + timeout_s
    while True:
        with db.session() as session:
            row = session.get(Job, job_id)
            if row is None or JobStatus(row.status) in TERMINAL:
                return True
        if time.monotonic() > deadline:
            log.warning("Job %s: no leader settled its cancel within %.0f s", job_id, timeout_s)
            return False
        time.sleep(0.05)
