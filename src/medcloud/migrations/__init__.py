"""The metadata database's schema history (Alembic), driven from code: no alembic.ini is needed.

`upgrade(engine)` brings any database to the newest revision:

- a database already under Alembic (an `alembic_version` table) is upgraded from its revision;
- a database made by `create_all` before migrations existed (tables, no `alembic_version`) is taken as
  revision 0001_initial, whose tables it has (0001 creates only those missing), and upgraded from there,
  rows kept;
- a brand-new empty database gets the tables of the models at once and is stamped with the newest
  revision (`fast_new`): a replay of every migration costs more, for the same result, and tests build
  many databases. tests/test_migrations.py checks that both ways give the models' schema.

Concurrent starters are serialized (PostgreSQL: a transaction-level advisory lock; SQLite: `flock` on
`<database>.migrate-lock` beside it), so two processes starting on one new
database do not both create it. For a new revision: change the models, then
`.venv/bin/python -m medcloud.migrations revision -m "what changed"` writes a draft to check by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before alembic is imported: its plugins announce themselves at INFO, at every start of every process.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Connection, Engine, inspect, make_url, text  # noqa: E402

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"
INITIAL = "0001_initial"
# pg_advisory_xact_lock key of a migration run ("medcloud" "mi" in hex); per database, like every advisory lock.
MIGRATE_LOCK_KEY = 0x6D6564636C6F6D69


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built here; env.py migrates `connection` (else the `sqlalchemy.url` option)."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision."""
    revision = _script().get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The database's revision; None when it has none (empty, or made before migrations)."""
    with engine.connect() as connection:
        return _revision(connection)


def _revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def differences(connection: Connection) -> list[Any]:
    """What differs between the database's schema and the models (alembic's `compare_metadata`); [] when equal."""
    from medcloud.db import Base, import_models

    import_models()
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [d for d in compare_metadata(context, Base.metadata) if not _is_version_table(d)]


def _is_version_table(diff: Any) -> bool:
    return isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == VERSION_TABLE


def upgrade(engine: Engine, revision: str = "head", *, fast_new: bool = True) -> str | None:
    """Bring the database to `revision` (see the module's docstring); returns the revision it is at."""
    with _serialized(engine) as connection:
        at = _revision(connection)
        if at is not None and revision == "head" and at == head():
            return at  # the common case (every start but the first): one query, no migration machinery
        tables = set(inspect(connection).get_table_names())
        if not tables - {VERSION_TABLE} and fast_new and revision == "head":
            from medcloud.db import Base, import_models

            import_models()
            Base.metadata.create_all(connection)
            MigrationContext.configure(connection).stamp(_script(), "head")
            return head()
        # Pre-migration databases have no alembic_version: 0001_initial creates only the tables they lack.
        command.upgrade(alembic_config(connection), revision)
        return _revision(connection)


@contextlib.contextmanager
def _serialized(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other migration run on this database overlaps."""
    lock_fd = None
    if engine.dialect.name == "sqlite":
        database = make_url(str(engine.url)).database
        if database and database != ":memory:":
            # A file of its own: closing any descriptor of the database file would drop this process's
            # SQLite locks on it (POSIX locks belong to the process), and its connections are in use.
            lock_fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK_KEY})
            yield connection
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the flock
