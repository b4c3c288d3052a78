"""Leadership among processes sharing a database (SQLite flock, PostgreSQL advisory lock): one leader, a
takeover when it dies or loses its connection, and every process's events (`events.py`) reaching the leader's
duties: a follower's across processes, the leader's own in its process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from helpers import wait_for

from medcloud.db import Database
from medcloud.events import Events
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.jobs.states import JobStatus
from medcloud.leader import Leadership, Role

HOLD_LEADERSHIP = """
import sys, time
from medcloud.db import Database
from medcloud.leader import Leadership
leadership = Leadership(Database(sys.argv[1]))
assert leadership.try_acquire()
print("leader", flush=True)
time.sleep(600)
"""


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'medcloud.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return pg_database


def test_one_leader_among_two_claims_and_the_other_takes_over_on_release(url):
    first, second = Leadership(Database(url)), Leadership(Database(url))
    assert first.try_acquire() and first.is_leader
    assert not second.try_acquire() and not second.is_leader
    assert first.try_acquire()  # asking again keeps it
    first.release()
    assert second.try_acquire() and second.still_held()
    assert not first.try_acquire()
    second.release()


def test_a_killed_leader_process_is_replaced(url):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LEADERSHIP, url], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leader"
        follower = Leadership(Database(url))
        assert not follower.try_acquire()
        os.killpg(proc.pid, signal.SIGKILL)  # no clean-up: the kernel (flock) or PostgreSQL (session) releases it
        proc.wait(timeout=30)
        wait_for(follower.try_acquire, timeout=10, what="the follower to take over")
        follower.release()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ----------------------------------------------------------------- Role: duties, follower proxies, takeover


class LoopThread:
    """An event loop in a thread of its own: one per simulated API process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Duties:
    """Stands in for the leader's runner and hub: records each call with when it came."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls: list[tuple[str, str | None, float]] = []

    def _record(self, name: str, arg: str | None = None) -> None:
        self.calls.append((name, arg, time.perf_counter()))

    def named(self, name: str) -> list[tuple[str | None, float]]:
        return [(arg, at) for call, arg, at in self.calls if call == name]

    def wake(self) -> None:
        self._record("runner.wake")

    async def cancel(self, job_id: str) -> None:
        def settle() -> None:
            with self.db.session() as session:
                row = session.get(Job, job_id)
                assert row is not None
                jobs.transition(session, row, JobStatus.CANCELED, "Canceled by the user.")

        await asyncio.to_thread(settle)
        self._record("runner.cancel", job_id)

    def launch(self, job_id: str) -> None:
        self._record("hub.launch", job_id)

    def wake_all(self) -> None:
        self._record("hub.wake_all")

    def dataset_changed(self, dataset_id: str) -> None:
        self._record("hub.dataset_changed", dataset_id)


class Process:
    """A simulated API process: its own Database, event loop and Role with recording duties."""

    def __init__(self, url: str, retry_s: float = 0.1) -> None:
        self.loop = LoopThread()
        self.ctx = SimpleNamespace(db=Database(url), runner=None, hub=None)
        self.events = Events(self.ctx.db)
        self.duties = Duties(self.ctx.db)
        self.starts = 0
        self.stops = 0

        async def start() -> None:
            self.starts += 1
            self.ctx.runner = self.ctx.hub = self.duties

        async def stop() -> None:
            self.stops += 1

        self.role = Role(self.ctx, start=start, stop=stop, retry_s=retry_s)  # type: ignore[arg-type]
        self.loop.run(self.role.begin())

    def close(self) -> None:
        self.loop.run(self.role.end())
        self.loop.close()
        self.ctx.db.dispose()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    made: list[Process] = []
    yield made
    for process in made:
        process.close()


def test_the_first_process_leads_and_the_second_follows_with_no_duties(url, processes):
    processes += [Process(url), Process(url)]
    leader, follower = processes
    assert leader.role.leading and leader.ctx.runner is leader.duties and leader.starts == 1
    assert not follower.role.leading and follower.starts == 0
    assert follower.ctx.runner is None and follower.ctx.hub is None  # no proxies: it publishes events


def test_a_leaders_own_events_reach_its_duties_on_sqlite_too(tmp_path, processes):
    processes.append(Process(f"sqlite:///{tmp_path / 'one.db'}"))
    [leader] = processes
    leader.events.job_created()
    leader.events.annotation_created("job-1")
    leader.events.dataset_notified("dataset-1")
    leader.events.controllers_wake()
    for name in ("runner.wake", "hub.launch", "hub.dataset_changed", "hub.wake_all"):
        wait_for(lambda n=name: leader.duties.named(n), timeout=5, what=f"{name} on the leader")
    assert leader.duties.named("hub.launch")[0][0] == "job-1"
    assert leader.duties.named("hub.dataset_changed")[0][0] == "dataset-1"


def test_followers_wakeups_reach_the_leaders_runner_and_hub_within_100_ms(pg_url, processes):
    processes += [Process(pg_url), Process(pg_url)]
    leader, follower = processes
    sent: dict[str, float] = {}
    for name, call in (
        ("runner.wake", lambda: follower.events.job_created()),
        ("hub.launch", lambda: follower.events.annotation_created("job-1")),
        ("hub.wake_all", lambda: follower.events.controllers_wake()),
        ("hub.dataset_changed", lambda: follower.events.dataset_notified("dataset-1")),
    ):
        sent[name] = time.perf_counter()
        call()
        wait_for(lambda n=name: leader.duties.named(n), timeout=5, what=f"{name} on the leader")
    assert leader.duties.named("hub.launch")[0][0] == "job-1"
    assert leader.duties.named("hub.dataset_changed")[0][0] == "dataset-1"
    latencies = {name: leader.duties.named(name)[0][1] - at for name, at in sent.items()}
    assert max(latencies.values()) < 0.1, latencies
    assert follower.duties.calls == []  # nothing runs in the follower


def test_a_followers_cancel_returns_once_the_leader_ended_the_job(pg_url, processes):
    processes += [Process(pg_url), Process(pg_url)]
    leader, follower = processes
    with follower.ctx.db.session() as session:
        row = jobs.create(session, org="o", user_id="u", experiment_id=str(uuid.uuid4()), action="train", specs={})
        assert jobs.transition(session, row, JobStatus.RUNNING)
        assert jobs.transition(session, row, JobStatus.CANCELING, "Canceling.")
        job_id = row.id
    assert follower.loop.run(follower.events.job_cancel(job_id))
    with follower.ctx.db.session() as session:
        assert session.get(Job, job_id).status == "Canceled"  # as after the runner's own cancel
    assert [arg for arg, _ in leader.duties.named("runner.cancel")] == [job_id]


def test_wakeups_published_while_the_new_leader_starts_its_duties_are_not_lost(pg_url, processes):
    """A follower that publishes during the takeover: queued by the new leader, run once its duties are up."""
    leader = Process(pg_url)
    publisher = Database(pg_url)
    started = threading.Event()
    release = threading.Event()
    candidate = SimpleNamespace(db=Database(pg_url), runner=None, hub=None)
    duties = Duties(candidate.db)

    async def slow_start() -> None:
        started.set()
        await asyncio.to_thread(release.wait, 30)
        candidate.runner = candidate.hub = duties

    async def stop() -> None:
        pass

    loop = LoopThread()
    role = Role(candidate, start=slow_start, stop=stop, retry_s=0.05)  # type: ignore[arg-type]
    loop.run(role.begin())
    try:
        leader.close()
        assert started.wait(10)  # the candidate took over and is starting its duties
        publisher.wakeups.publish("hub.launch", "job-during-start")
        wait_for(lambda: role._queued, timeout=5, what="the wake-up queued while the duties start")
        assert duties.calls == []
        release.set()
        wait_for(lambda: duties.named("hub.launch"), timeout=5, what="the queued launch")
        assert duties.named("hub.launch")[0][0] == "job-during-start"
    finally:
        release.set()
        loop.run(role.end())
        loop.close()
        candidate.db.dispose()
        publisher.dispose()


def test_a_leader_that_loses_its_connection_steps_down_and_a_follower_takes_over(pg_url, postgres_server, processes):
    processes += [Process(pg_url), Process(pg_url)]
    leader, follower = processes
    backend_pid = leader.role.leadership._connection.info.backend_pid
    with psycopg.connect(
        host=str(postgres_server.socket_dir), port=postgres_server.port, user="postgres", dbname="postgres"
    ) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,)).fetchone()[0]
    wait_for(lambda: follower.role.leading, timeout=10, what="the follower to take over")
    wait_for(lambda: not leader.role.leading and leader.stops == 1, timeout=10, what="the old leader to step down")
    assert follower.starts == 1 and follower.ctx.runner is follower.duties
    assert leader.ctx.runner is None  # the old leader is a follower now
    leader.events.job_created()  # ...whose events reach the new leader
    wait_for(lambda: follower.duties.named("runner.wake"), timeout=5, what="the wake-up on the new leader")


def test_a_cleanly_stopped_leader_is_replaced_within_the_retry_interval(url, processes):
    processes += [Process(url, retry_s=0.1), Process(url, retry_s=0.1)]
    leader, follower = processes
    processes.remove(leader)
    leader.close()
    assert leader.stops == 1
    wait_for(lambda: follower.role.leading, timeout=5, what="the follower to take over")
    assert follower.starts == 1


def test_duties_that_fail_to_start_release_the_leadership(url):
    db = Database(url)
    ctx = SimpleNamespace(db=db, runner=None, hub=None)
    stops: list[int] = []

    async def broken_start() -> None:
        raise RuntimeError("the scheduler cannot start")

    async def stop() -> None:
        stops.append(1)

    role = Role(ctx, start=broken_start, stop=stop)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="cannot start"):
        asyncio.run(role.begin())
    assert stops == [1] and not role.leading and ctx.runner is None
    other = Leadership(Database(url))
    assert other.try_acquire()  # not held by the process whose duties failed
    other.release()
    db.dispose()
