"""Alembic migrations on SQLite and a real PostgreSQL: the newest revision is the models' schema, a database
made before migrations is upgraded with its rows, a new one takes the fast path, concurrent first starts
are serialized, and `medcloud db upgrade|current` work."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from medcloud import cli, migrations
from medcloud.db import Database
from medcloud.jobs.orm import Job

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'medcloud.db'}"
    else:
        yield request.getfixturevalue("pg_database")


def schema_differences(engine: Engine) -> list:
    with engine.connect() as connection:
        return migrations.differences(connection)


def test_revisions_form_one_line_from_0001_to_the_head():
    script = migrations._script()
    chain = [rev.revision for rev in script.walk_revisions()]
    assert chain[-1] == migrations.INITIAL and chain[-2] == "0002_job_backend_handle"
    assert chain[-3] == "0003_experiment_inference"
    assert len(script.get_heads()) == 1 and migrations.head() == chain[0]


def test_replaying_every_migration_gives_the_models_schema(url):
    """The guard of every future model change: without a matching revision this fails."""
    engine = create_engine(url)
    assert migrations.upgrade(engine, fast_new=False) == migrations.head()
    assert schema_differences(engine) == []
    engine.dispose()


def test_a_new_database_takes_the_fast_path_to_the_same_schema_at_the_newest_revision(url):
    db = Database(url)
    assert migrations.current(db.engine) == migrations.head()
    assert schema_differences(db.engine) == []
    assert "alembic_version" in inspect(db.engine).get_table_names()
    db.dispose()


def test_the_models_differing_from_the_database_are_reported(url):
    """The parity check can fail: a database one revision behind differs from the models by that revision."""
    engine = create_engine(url)
    migrations.upgrade(engine, migrations.INITIAL)
    kinds = sorted(
        (d[0], d[3].name if d[0] in ("add_column", "remove_column") else "") for d in schema_differences(engine)
    )
    assert kinds == [("add_column", "backend_handle"), ("add_column", "inference"), ("remove_column", "pid")]
    engine.dispose()


def _pre_migration_database(url: str) -> None:
    """What `create_all` made before migrations: the 0001 tables, no alembic_version, a job with a pid, and
    (as in databases older still) no api_key_states table."""
    engine = create_engine(url)
    migrations.upgrade(engine, migrations.INITIAL)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text("DROP TABLE api_key_states"))
        for job_id, pid in (("job-with-pid", 4242), ("job-without", None)):
            connection.execute(
                text(
                    "INSERT INTO jobs (id, org, user_id, name, description, created_on, last_modified, action,"
                    " status, specs, result, pid) VALUES (:id, 'acme', 'u1', 'train job', '',"
                    " '2026-01-02 03:04:05', '2026-01-02 03:04:05', 'train', 'Running',"
                    " '{\"epochs\": 3}', '{\"epoch\": 2}', :pid)"
                ),
                {"id": job_id, "pid": pid},
            )
    engine.dispose()


def test_a_database_from_before_migrations_is_upgraded_keeping_its_rows(url):
    _pre_migration_database(url)
    db = Database(url)  # what every start does
    assert migrations.current(db.engine) == migrations.head()
    assert schema_differences(db.engine) == []
    with db.session() as session:
        with_pid, without = session.get(Job, "job-with-pid"), session.get(Job, "job-without")
        assert with_pid is not None and without is not None
        assert with_pid.backend_handle == {"backend": "local", "pid": 4242}  # a running worker stays adoptable
        assert without.backend_handle is None
        assert (with_pid.status, with_pid.specs, with_pid.result) == ("Running", {"epochs": 3}, {"epoch": 2})
        assert with_pid.created_on.year == 2026
    db.dispose()


def test_downgrade_to_0001_gives_the_pid_back_and_upgrade_again_keeps_it(url):
    _pre_migration_database(url)
    db = Database(url)
    db.dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        migrations.command.downgrade(migrations.alembic_config(connection), migrations.INITIAL)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT pid FROM jobs WHERE id = 'job-with-pid'")).scalar() == 4242
    assert migrations.upgrade(engine) == migrations.head()
    with engine.connect() as connection:
        handle = connection.execute(text("SELECT backend_handle FROM jobs WHERE id = 'job-with-pid'")).scalar()
    assert handle in ({"backend": "local", "pid": 4242}, '{"backend": "local", "pid": 4242}')
    engine.dispose()


def test_processes_opening_a_new_database_at_once_create_it_once(url):
    """Several API processes (here threads, each with its own engine) starting together on one new database."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_it() -> None:
        try:
            barrier.wait()
            Database(url).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    engine = create_engine(url)
    assert migrations.current(engine) == migrations.head()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def test_cli_db_current_and_upgrade(url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDCLOUD_DATABASE_URL", url)
    data_dir = str(tmp_path / "data")
    _pre_migration_database(url)
    assert cli.main(["db", "current", "--data-dir", data_dir]) == 1
    assert capsys.readouterr().out.splitlines() == ["current: none", f"newest:  {migrations.head()}"]
    assert cli.main(["db", "upgrade", "--data-dir", data_dir]) == 0
    assert capsys.readouterr().out.strip() == f"Migrated the database from no revision to {migrations.head()}."
    assert cli.main(["db", "upgrade", "--data-dir", data_dir]) == 0
    assert "newest revision already" in capsys.readouterr().out
    assert cli.main(["db", "current", "--data-dir", data_dir]) == 0
