"""Which API process runs the job scheduler and the annotation controllers, and how the others reach it.

Several `medcloud serve` processes may share one database; every one serves every route, but only one,
the leader, runs `ctx.runner` (starting, watching, cancelling job processes) and `ctx.hub` (the annotation
controllers); a follower has neither. Routes of every process, the leader's included, publish events
(`events.py`, over `wakeups.py`) that the leader's subscriptions turn into calls of its runner and hub.

Election (`Leadership`):
- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) held by a connection of its own.
  When the leader dies its connection closes and PostgreSQL releases the lock; a follower retries every
  `retry_s` seconds and takes over. A leader checks its connection as often: if it broke (the server
  restarted, the connection was killed), the lock may be someone else's, so it stops its duties at once.
- SQLite: `flock` on `<database file>.leader` beside the database, so two processes on one SQLite file
  still elect one leader (released by the kernel when the holder dies). An in-memory database: always
  the leader. Wake-ups do not cross processes on SQLite: run one process there (docs/deployment.md).

During a takeover there may be up to `retry_s` seconds when the old leader has not yet noticed it lost
its connection while the new one starts; every status write is conditional (`jobs.service.transition`),
so the two never start the same job twice or overwrite each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from medcloud import events
from medcloud.context import Context
from medcloud.db import Database
from medcloud.wakeups import dedicated_connection

log = logging.getLogger(__name__)
# pg_try_advisory_lock key ("medcloud" in hex); advisory locks are per database.
LEADER_LOCK_KEY = 0x6D6564636C6F7564
RETRY_S = 2.0


class Leadership:
    """One process's claim to leadership over a database. Blocking methods: call them from a thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._connection: Any = None  # PostgreSQL: the session holding the advisory lock
        self._lock_fd: int | None = None  # SQLite: the flock'ed file
        self._always = False  # an in-memory SQLite database has no other process
        if not db.is_postgres:
            database = make_url(str(db.engine.url)).database
            self._always = not database or database == ":memory:"
            self._lock_path = Path(f"{database}.leader") if not self._always else None

    @property
    def is_leader(self) -> bool:
        return self._always or self._connection is not None or self._lock_fd is not None

    def try_acquire(self) -> bool:
        """Become the leader if no one is; whether this process is the leader now."""
        if self.is_leader:
            return True
        if self.db.is_postgres:
            connection = dedicated_connection(self.db.engine)
            try:
                won = connection.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone()[0]
            except Exception:
                connection.close()
                raise
            if won:
                self._connection = connection
            else:
                connection.close()
            return bool(won)
        assert self._lock_path is not None
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def still_held(self) -> bool:
        """Whether the leadership is still ours (PostgreSQL: the lock's connection answers)."""
        if self._connection is None:
            return self.is_leader
        try:
            self._connection.execute("SELECT 1").fetchone()
            return True
        except Exception as exc:
            log.warning("Leadership: the lock's connection broke (%s); stepping down", exc)
            self.release()
            return False

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()  # the session ends: PostgreSQL releases the lock
            self._connection = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


Duty = Callable[[], Awaitable[None]]


class Role:
    """This process's part: the leader's duties (started by `start`, stopped by `stop`) or a follower's proxies.

    `begin()` (in the app lifespan) tries once: a leader's duties are up when it returns, as before there
    were followers. A follower has no runner and no hub, and campaigns every `retry_s` seconds.
    """

    def __init__(self, ctx: Context, *, start: Duty, stop: Duty, retry_s: float = RETRY_S) -> None:
        self.ctx = ctx
        self.leadership = Leadership(ctx.db)
        self._start, self._stop = start, stop
        self.retry_s = retry_s
        self._task: asyncio.Task | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._leading = False
        self._queue_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # set once the duties are up
        self._queued: list[Callable[[], Any]] = []

    @property
    def leading(self) -> bool:
        return self._leading

    async def begin(self) -> None:
        if await asyncio.to_thread(self.leadership.try_acquire):
            await self._lead()
        else:
            self._follow()
        self._task = asyncio.create_task(self._campaign())

    async def end(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._leading:
            await self._step_down()
        await asyncio.to_thread(self.leadership.release)

    async def _campaign(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                if self._leading:
                    if not await asyncio.to_thread(self.leadership.still_held):
                        await self._step_down()
                elif await asyncio.to_thread(self.leadership.try_acquire):
                    log.info("Leadership: this process is the leader now")
                    await self._lead()
            except Exception:
                log.exception("Leadership: campaign step failed")

    async def _lead(self) -> None:
        # Subscribed before the duties start: what is published meanwhile is queued, then run once the
        # runner and the hub are up (the hub's start also resumes every active annotation job it finds).
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._subscribe)
        try:
            await self._start()
        except BaseException:  # duties that failed to start must not keep others from leading
            self._unsubscribe_all()
            with contextlib.suppress(Exception):
                await self._stop()  # whatever part did start
            await asyncio.to_thread(self.leadership.release)
            self._follow()
            raise
        self._leading = True
        with self._queue_lock:
            self._loop, queued = loop, self._queued
            self._queued = []
        for call in queued:
            loop.call_soon(call)

    async def _step_down(self) -> None:
        self._leading = False
        self._unsubscribe_all()
        try:
            await self._stop()
        finally:
            self._follow()

    def _unsubscribe_all(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        with self._queue_lock:
            self._loop, self._queued = None, []

    def _soon(self, call: Callable[[], Any]) -> None:
        """Run `call` on the event loop once the duties are up (from a wake-up's thread)."""
        with self._queue_lock:
            if self._loop is None:
                self._queued.append(call)
                return
            loop = self._loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(call)

    def _follow(self) -> None:
        self.ctx.runner = None
        self.ctx.hub = None

    def _subscribe(self) -> None:
        """Turn every process's events (`events.py`) into calls of this leader's runner and hub (on the loop)."""
        ctx, soon = self.ctx, self._soon

        def runner_wake(_payload: str | None) -> None:
            soon(lambda: ctx.runner.wake() if ctx.runner is not None else None)

        def runner_cancel(job_id: str | None) -> None:
            if job_id is None:
                return runner_wake(None)
            soon(lambda: _spawn_logged(ctx.runner.cancel(job_id), f"cancel of job {job_id}") if ctx.runner else None)

        def hub_launch(job_id: str | None) -> None:
            soon(lambda: (ctx.hub.wake_all() if job_id is None else ctx.hub.launch(job_id)) if ctx.hub else None)

        def hub_wake(_payload: str | None) -> None:
            soon(lambda: ctx.hub.wake_all() if ctx.hub is not None else None)

        def hub_dataset(dataset_id: str | None) -> None:
            if dataset_id is None:
                return hub_wake(None)
            soon(lambda: ctx.hub.dataset_changed(dataset_id) if ctx.hub is not None else None)

        wakeups = ctx.db.wakeups
        for topic, callback in (
            (events.JOB_CREATED, runner_wake),
            (events.JOB_CANCEL, runner_cancel),
            (events.ANNOTATION_CREATED, hub_launch),
            (events.CONTROLLERS_WAKE, hub_wake),
            (events.DATASET_NOTIFIED, hub_dataset),
        ):
            self._unsubscribe.append(wakeups.subscribe(topic, callback))


def _spawn_logged(coroutine: Awaitable[None], what: str) -> None:
    """Run `coroutine` as a task of the running loop; a failure is logged, not lost."""

    def done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("Leadership: %s failed", what, exc_info=task.exception())

    asyncio.ensure_future(coroutine).add_done_callback(done)
