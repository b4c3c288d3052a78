"""PostgreSQL going away under a running server: a clear 503 (never a 500), and service again once it is back."""

from __future__ import annotations

import subprocess

import pytest
from conftest import make_api
from helpers import wait_for
from postgres import _as_postgres, postgres_bin_dir, start_postgres

from medcloud.api.errors import DATABASE_UNAVAILABLE

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL is not installed (setup.sh --test)")


def test_database_outage_answers_503_and_recovers(tmp_path, local_dataset):
    with start_postgres() as server:
        url = server.create_database()
        ctl = str(server.bin_dir / "pg_ctl")
        with make_api(tmp_path / "data", database_url=url) as api:
            body = {"name": "d", "type": "semantic_segmentation", "format": "monai", "client_url": str(local_dataset)}
            created = api.post("datasets", json=body)
            assert created.status_code == 201, created.text
            subprocess.run(_as_postgres([ctl, "-D", str(server.data_dir), "-m", "fast", "stop"]), check=True)
            down = api.get("datasets")
            assert down.status_code == 503, down.text
            assert down.json() == {"error_desc": DATABASE_UNAVAILABLE, "error_code": 503}
            assert down.headers["Retry-After"] == "5"
            assert str(server.socket_dir) not in down.text  # the driver's message (paths, hosts) stays in the log
            options = f"-k {server.socket_dir} -p {server.port} -c listen_addresses='' -c fsync=off"
            subprocess.run(
                _as_postgres([ctl, "-D", str(server.data_dir), "-l", str(server.data_dir.parent / "again.log"),
                              "-w", "-o", options, "start"]),
                check=True, capture_output=True,
            )  # fmt: skip
            back = wait_for(lambda: (r := api.get("datasets")).status_code == 200 and r, what="the API to recover")
            assert [d["id"] for d in back.json()["datasets"]] == [created.json()["id"]]  # nothing lost
