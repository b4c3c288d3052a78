"""Deleting an experiment removes its jobs and folders; API keys can be listed and revoked; the data dir is private."""

from __future__ import annotations

import stat
import subprocess
import sys
import time

import jwt
from conftest import make_api
from fakes import tiny_bundle
from sqlalchemy import select, update

from medcloud.config import Settings
from medcloud.experiments.orm import Experiment
from medcloud.jobs import files
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job


def _experiment(api, tmp_path, name="e"):  # type: ignore[no-untyped-def]
    body = {"name": name, "network_arch": "monai_custom", "bundle_url": str(tiny_bundle(tmp_path / f"bundle-{name}"))}
    resp = api.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _job(api, exp_id, status):  # type: ignore[no-untyped-def]
    """A job row of the experiment in `status` (annotation: neither the runner nor a controller picks it up)
    and the folders a job leaves: its own and the model host's."""
    with api.ctx.db.session() as session:
        owner = session.get(Experiment, exp_id).user_id
        row = jobs.create(session, org="acme", user_id=owner, experiment_id=exp_id, action="annotation", specs={})
        session.execute(update(Job).where(Job.id == row.id).values(status=status))
        job_id = row.id
    folder = files.job_dir(api.ctx.settings.data_dir, job_id)
    (folder / files.RESULTS).mkdir(parents=True)
    (folder / files.LOG).write_text("log\n")
    host = api.ctx.settings.data_dir / "hosts" / exp_id
    host.mkdir(parents=True, exist_ok=True)
    (host / "host.log").write_text("host\n")
    return job_id


def _job_rows(api, exp_id):  # type: ignore[no-untyped-def]
    with api.ctx.db.session() as session:
        return list(session.scalars(select(Job.id).where(Job.experiment_id == exp_id)))


def test_deleting_an_experiment_removes_its_job_rows_and_every_folder(tmp_path):
    with make_api(tmp_path / "data", bundle_allow_local_paths=True) as api:
        data = api.ctx.settings.data_dir
        exp, other = _experiment(api, tmp_path, "gone"), _experiment(api, tmp_path, "kept")
        done = [_job(api, exp["id"], "Done"), _job(api, exp["id"], "Error")]
        kept = _job(api, other["id"], "Done")
        assert (data / "experiments" / exp["id"] / "bundle").is_dir()

        resp = api.delete(f"experiments/{exp['id']}")
        assert resp.status_code == 200, resp.text
        assert sorted(resp.json()["jobs"]) == sorted(done)
        assert _job_rows(api, exp["id"]) == []
        for folder in (
            data / "experiments" / exp["id"],
            data / "hosts" / exp["id"],
            *(data / "jobs" / j for j in done),
        ):
            assert not folder.exists(), folder
        # The other experiment keeps everything.
        assert _job_rows(api, other["id"]) == [kept]
        assert (data / "jobs" / kept).is_dir() and (data / "hosts" / other["id"]).is_dir()
        assert (data / "experiments" / other["id"]).is_dir()
        assert api.get(f"experiments/{exp['id']}").status_code == 404


def test_deleting_an_experiment_with_an_active_job_is_400_and_removes_nothing(tmp_path):
    with make_api(tmp_path / "data", bundle_allow_local_paths=True) as api:
        data = api.ctx.settings.data_dir
        exp = _experiment(api, tmp_path)
        finished, running = _job(api, exp["id"], "Done"), _job(api, exp["id"], "Running")
        resp = api.delete(f"experiments/{exp['id']}")
        assert resp.status_code == 400
        assert resp.json()["error_desc"] == "Experiment in use"
        assert sorted(_job_rows(api, exp["id"])) == sorted([finished, running])
        assert (data / "experiments" / exp["id"]).is_dir() and (data / "hosts" / exp["id"]).is_dir()
        assert (data / "jobs" / finished).is_dir() and (data / "jobs" / running).is_dir()


def _cli(data_dir, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "medcloud.cli", "keys", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_key_revoked_with_the_cli_no_longer_logs_in_and_its_tokens_stop_working(api):
    data = api.ctx.settings.data_dir
    listed = _cli(data, "list", "--user", "alice")
    assert listed.returncode == 0, listed.stderr
    assert api.keys["alice"] not in listed.stdout  # never the key itself
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "HINT", "USER", "ORG", "CREATED", "LAST", "LOGIN", "REVOKED"]
    assert len(lines) == 2
    key_id, hint, user, org = lines[1].split()[:4]
    assert (hint, user, org) == (api.keys["alice"][:8] + "...", "alice", "acme")
    assert lines[1].split()[-1] == "-"  # not revoked; its last login is shown
    others = _cli(data, "list", "--org", "other").stdout.strip().splitlines()[1:]
    assert [line.split()[2] for line in others] == ["eve"]

    assert api.get("datasets").status_code == 200
    revoked = _cli(data, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert f"Revoked API key {key_id}" in revoked.stdout

    login = api.client.post("/api/v1/login", json={"ngc_api_key": api.keys["alice"]})
    assert login.status_code == 401
    assert login.json()["error_desc"] == "Invalid API key."
    old_token = api.get("datasets")
    assert old_token.status_code == 401
    assert "revoked" in old_token.json()["error_desc"]
    assert api.get("datasets", user="bob").status_code == 200  # other keys are untouched

    assert "already revoked" in _cli(data, "revoke", key_id).stdout
    unknown = _cli(data, "revoke", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    assert _cli(data, "list", "--user", "alice").stdout.strip().splitlines()[1].split()[-1] != "-"


def test_a_token_without_a_key_id_is_401(api):
    user_id = api.client.post("/api/v1/login", json={"ngc_api_key": api.keys["alice"]}).json()["user_id"]
    now = int(time.time())
    legacy = jwt.encode({"sub": user_id, "iat": now, "exp": now + 60}, api.ctx.signing_key, algorithm="HS256")
    resp = api.client.get(api.url("datasets"), headers={"Authorization": f"Bearer {legacy}"})
    assert resp.status_code == 401


def test_the_data_dir_is_created_0700_and_an_open_one_is_closed(tmp_path):
    fresh = Settings(data_dir=tmp_path / "a" / "data").resolved().data_dir
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    existing = tmp_path / "open"
    existing.mkdir()
    existing.chmod(0o705)  # others may enter and list it
    assert stat.S_IMODE(Settings(data_dir=existing).resolved().data_dir.stat().st_mode) == 0o700
