"""Engine and session factory for the metadata database (SQLite by default, PostgreSQL by URL).

The schema is Alembic's (`medcloud/migrations/`): `Database` brings the database to the newest revision
when it opens it, so `medcloud serve` and the CLI never run on an old schema.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import JSON, DateTime, Engine, String, create_engine, event, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from medcloud.errors import NotFound

if TYPE_CHECKING:
    from medcloud.wakeups import Wakeups


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {dict: JSON, list: JSON}


class Timestamped:
    """Mixin: `created_on` and `last_modified`, kept by the ORM."""

    created_on: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Owned(Timestamped):
    """Mixin of a user's resource inside an org: every query filters on both."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org: Mapped[str] = mapped_column(String(128), index=True)
    user_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str] = mapped_column(String(4096), default="")


OwnedRow = TypeVar("OwnedRow", bound=Owned)


def get_owned(session: Session, model: type[OwnedRow], row_id: str, *, org: str, user_id: str, kind: str) -> OwnedRow:
    """The caller's row, or NotFound: another org's or user's row is as unknown as a missing one."""
    row = session.get(model, row_id)
    if row is None or row.org != org or row.user_id != user_id:
        raise NotFound(f"{kind} {row_id} not found.")
    return row


# PostgreSQL: connections per API process (pool_size + max_overflow = 20). Each process also holds two
# connections of its own (leader.py's lock, wakeups.py's LISTEN and NOTIFY: up to three), so four API
# processes stay under PostgreSQL's default max_connections=100 (job workers never open the database).
# A request finding all 20 busy waits for one (pool_timeout), it does not fail: the `db` pool of pools.py
# (16 threads) is the main user, the `auth` pool the next. More processes: raise max_connections or put
# PgBouncer (session mode: the advisory lock and LISTEN need a session) in front.
PG_POOL_SIZE = 8
PG_MAX_OVERFLOW = 12
PG_POOL_TIMEOUT_S = 30


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL and a busy timeout so threads share it safely."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        _private_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # every thread pool of pools.py may hold a connection at once: never make a request wait for one
            pool_size=32,
            max_overflow=32,
        )
    else:
        engine = create_engine(
            url,
            pool_pre_ping=True,  # a server restart or an idle timeout leaves dead connections in the pool
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_MAX_OVERFLOW,
            pool_timeout=PG_POOL_TIMEOUT_S,
            pool_recycle=3600,
            connect_args={"application_name": "medcloud"} if url.startswith("postgresql") else {},
        )
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def _private_sqlite_file(url: str) -> None:
    """The database file (and so its -wal/-shm, which SQLite creates alike) readable by the server alone."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    # Never open and close a database file another engine of this process may be using: closing any
    # descriptor of a file drops every POSIX lock the process holds on it, SQLite's included.
    if not os.path.exists(database):
        with contextlib.suppress(FileExistsError):  # another process created it meanwhile
            os.close(os.open(database, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(database, 0o600)
    for extra in (f"{database}-wal", f"{database}-shm"):
        if os.path.exists(extra):
            os.chmod(extra, 0o600)


def import_models() -> None:
    """Import every orm module, so that `Base.metadata` holds every table."""
    from medcloud.auth import orm as _auth  # noqa: F401
    from medcloud.datasets import orm as _datasets  # noqa: F401
    from medcloud.experiments import orm as _experiments  # noqa: F401
    from medcloud.jobs import orm as _jobs  # noqa: F401
    from medcloud.workspaces import orm as _workspaces  # noqa: F401


def create_schema(engine: Engine) -> None:
    """Bring the database to the newest schema (`migrations.upgrade`: Alembic, or a fast path when empty)."""
    from medcloud import migrations

    migrations.upgrade(engine)


class Database:
    """Owns the engine and hands out sessions; the caller owns the transaction.

    Opening a database migrates it to the newest revision (`migrate=False` leaves it as it is, for tools
    that only look). A brand-new empty database takes a fast path (tables created from the models, then
    stamped with the newest revision: a few milliseconds, not a replay of every migration), which
    tests/test_migrations.py keeps equal to the migrations' result.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.engine = make_engine(url)
        if migrate:
            create_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._wakeups: Wakeups | None = None
        self._wakeups_lock = threading.Lock()

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def wakeups(self) -> Wakeups:
        """Wake-ups among the processes that share this database (`wakeups.py`), made on first use."""
        with self._wakeups_lock:
            if self._wakeups is None:
                from medcloud.wakeups import for_engine

                self._wakeups = for_engine(self.engine)
            return self._wakeups

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        if self._wakeups is not None:
            self._wakeups.close()
        self.engine.dispose()
