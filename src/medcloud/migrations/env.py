"""Alembic's environment: migrate the connection `medcloud.migrations` hands over (online mode only)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from medcloud.db import Base, import_models

import_models()


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:  # the `alembic` command line with `-x`-less config: sqlalchemy.url set by hand
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as own:
        run(own)
    engine.dispose()
