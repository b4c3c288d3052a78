"""Wake-ups among the API processes that share one database: `publish(topic, payload)`, `subscribe(topic, cb)`.

A wake-up says "look again" (a job was created or cancelled, a dataset was notified); what changed is in
the database, so a wake-up carries no state beyond a short payload (an id) and losing one delays but
never loses work: a subscriber that may have missed some is called with `None` (look at everything).

- SQLite (`LocalWakeups`): one process; a publish calls this process's subscribers at once.
- PostgreSQL (`PostgresWakeups`): the same, plus `NOTIFY` on one channel, delivered by a listening
  thread (`LISTEN`, its own connection) in every other process within milliseconds of the commit.
  Publishing never blocks the caller (a sender thread with its own connection does the `NOTIFY`), so
  the event loop may publish. A process ignores its own notifications (its subscribers were called
  already). When the listening connection breaks it reconnects and calls every subscriber with `None`.

Callbacks run on the publisher's thread (local) or the listener's thread (remote): keep them short and
thread-safe (`loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine

log = logging.getLogger(__name__)
CHANNEL = "medcloud_wakeups"
Callback = Callable[[str | None], None]  # the payload, or None: some wake-ups may have been missed
RECONNECT_S = 0.5


class Wakeups(Protocol):
    def publish(self, topic: str, payload: str = "") -> None:
        """Wake every subscriber of `topic`, in this process and (PostgreSQL) in the others. Never blocks."""

    def subscribe(self, topic: str, callback: Callback) -> Callable[[], None]:
        """Call `callback(payload)` on each wake-up of `topic` from now on; returns the unsubscribe function.

        Blocking (PostgreSQL: until the listener is listening, so nothing published afterwards is missed).
        """

    def close(self) -> None: ...


class LocalWakeups:
    """Subscribers of this process, called on the publisher's thread."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, list[Callback]] = defaultdict(list)
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: str = "") -> None:
        self._deliver(topic, payload)

    def subscribe(self, topic: str, callback: Callback) -> Callable[[], None]:
        with self._lock:
            self._subscribers[topic].append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers[topic]:
                    self._subscribers[topic].remove(callback)

        return unsubscribe

    def _deliver(self, topic: str, payload: str | None) -> None:
        with self._lock:
            callbacks = list(self._subscribers[topic])
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:
                log.exception("Wake-up subscriber of %r failed", topic)

    def _deliver_all(self) -> None:
        with self._lock:
            topics = list(self._subscribers)
        for topic in topics:
            self._deliver(topic, None)

    def close(self) -> None:
        pass


class PostgresWakeups(LocalWakeups):
    """`LocalWakeups` plus `NOTIFY`/`LISTEN` on one channel of the shared PostgreSQL database."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.origin = uuid.uuid4().hex  # this object's mark on its own notifications
        self._closed = threading.Event()
        self._outbox: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        self._start_lock = threading.Lock()

    def publish(self, topic: str, payload: str = "") -> None:
        self._deliver(topic, payload)
        with self._start_lock:
            if self._sender is None and not self._closed.is_set():
                self._sender = threading.Thread(target=self._send_loop, name="medcloud-wakeups-send", daemon=True)
                self._sender.start()
        self._outbox.put((topic, payload))

    def subscribe(self, topic: str, callback: Callback) -> Callable[[], None]:
        unsubscribe = super().subscribe(topic, callback)
        with self._start_lock:
            if self._listener is None and not self._closed.is_set():
                self._listener = threading.Thread(target=self._listen_loop, name="medcloud-wakeups-listen", daemon=True)
                self._listener.start()
        if not self._listening.wait(timeout=10):
            log.warning("Wake-ups: not listening on PostgreSQL yet; wake-ups from other processes may be late")
        return unsubscribe

    def close(self) -> None:
        self._closed.set()
        self._outbox.put(None)

    def _connect(self) -> Any:
        return dedicated_connection(self.engine)

    def _send_loop(self) -> None:
        connection = None
        while True:
            item = self._outbox.get()
            if item is None:
                break
            message = json.dumps([self.origin, item[0], item[1]])
            for attempt in range(2):  # a broken connection is replaced once, then the wake-up is dropped
                try:
                    if connection is None:
                        connection = self._connect()
                    connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, message))
                    break
                except Exception:
                    if connection is not None:
                        connection.close()
                    connection = None
                    if attempt:
                        log.exception("Wake-ups: NOTIFY %s failed", item[0])
        if connection is not None:
            connection.close()

    def _listen_loop(self) -> None:
        missed = False
        while not self._closed.is_set():
            connection = None
            try:
                connection = self._connect()
                connection.execute(f"LISTEN {CHANNEL}")
                self._listening.set()
                if missed:
                    self._deliver_all()  # the connection broke: whatever was sent meanwhile is lost
                while not self._closed.is_set():
                    for notify in connection.notifies(timeout=RECONNECT_S):
                        self._received(notify.payload)
            except Exception as exc:
                if not self._closed.is_set():
                    log.warning("Wake-ups: the listening connection broke (%s); reconnecting", exc)
                missed = True
                self._closed.wait(RECONNECT_S)
            finally:
                if connection is not None:
                    connection.close()

    def _received(self, message: str) -> None:
        try:
            origin, topic, payload = json.loads(message)
        except ValueError:
            log.warning("Wake-ups: ignoring a malformed notification %r", message[:200])
            return
        if origin != self.origin:
            self._deliver(topic, payload)


def dedicated_connection(engine: Engine) -> Any:
    """A psycopg connection made by the engine (its URL and options), out of its pool, in autocommit mode.

    For a session that outlives any request: a `LISTEN`, an advisory lock. Close it with `.close()`.
    """
    raw = engine.raw_connection()
    connection = raw.driver_connection
    assert connection is not None
    raw.detach()  # ours for good: the pool neither reuses nor resets it
    connection.autocommit = True
    return connection


def for_engine(engine: Engine) -> Wakeups:
    """PostgreSQL: wake-ups across processes; any other database: within this process."""
    return PostgresWakeups(engine) if engine.dialect.name == "postgresql" else LocalWakeups()
