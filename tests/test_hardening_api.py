"""No server path in what clients read (server_paths.py), and deleting a job removes its folders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Api, make_api
from fakes import tiny_bundle, tiny_dataset
from sqlalchemy import update

from medcloud.errors import Invalid
from medcloud.experiments.orm import Experiment
from medcloud.jobs import files
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.server_paths import ServerPaths, server_paths


def _experiment(api: Api, tmp_path: Path, **extra: Any) -> str:
    body = {"name": "e", "network_arch": "monai_custom", "bundle_url": str(tiny_bundle(tmp_path / "bundle")), **extra}
    resp = api.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _job(api: Api, exp_id: str, status: str, result: dict | None = None) -> str:
    """A job row in `status` (annotation: no runner or controller picks it up) and the folder a job leaves."""
    with api.ctx.db.session() as session:
        owner = session.get(Experiment, exp_id).user_id
        row = jobs.create(session, org="acme", user_id=owner, experiment_id=exp_id, action="annotation", specs={})
        values: dict[str, Any] = {"status": status}
        if result is not None:
            values["result"] = result
        session.execute(update(Job).where(Job.id == row.id).values(**values))
        job_id = row.id
    folder = files.job_dir(api.ctx.settings.data_dir, job_id)
    (folder / files.RESULTS / "deep").mkdir(parents=True)
    (folder / files.RESULTS / "deep" / "seg.nii.gz").write_bytes(b"seg")
    (folder / files.LOG).write_text("log\n")
    return job_id


def _no_server_path(api: Api, text: str) -> None:
    data = api.ctx.settings.data_dir
    for path in {str(data), str(data.resolve()), str(data.parent), sys.prefix, str(Path.home())}:
        assert path not in text, (path, text)


# The scrubber ------------------------------------------------------------------------------------------------


def test_roots_are_replaced_as_whole_names_longest_first() -> None:
    paths = ServerPaths({"/srv/med/data": "[data]", "/srv/med": "[home]", "/opt/py": "[python]"})
    text = "open '/srv/med/data/cache/x.nii' failed; /srv/med/data2/y and /srv/medical stay; see /srv/med/z"
    assert paths.scrub(text) == ("open '[data]/cache/x.nii' failed; [home]/data2/y and /srv/medical stay; see [home]/z")
    assert paths.scrub('File "/opt/py/lib/site.py", line 3') == 'File "[python]/lib/site.py", line 3'
    assert paths.scrub_json({"m": ["/srv/med/data", 3, {"k": "/opt/py"}]}) == {"m": ["[data]", 3, {"k": "[python]"}]}
    assert ServerPaths({}).scrub("/srv/med") == "/srv/med"


def test_the_settings_roots(tmp_path: Path) -> None:
    from medcloud.config import Settings

    settings = Settings(
        data_dir=tmp_path / "data",
        vista3d_bundle=str(tmp_path / "ops" / "vista.zip"),
        bundle_mirror="https://mirror.example/bundles",
    ).resolved()
    paths = server_paths(settings)
    assert paths.scrub(f"{settings.data_dir}/jobs/1") == "[data]/jobs/1"
    assert paths.scrub(f"{tmp_path}/ops/vista.zip does not exist") == "[MEDCLOUD_VISTA3D_BUNDLE] does not exist"
    assert paths.scrub(f"{sys.prefix}/lib/x.py") == "[python]/lib/x.py"
    assert paths.scrub("https://mirror.example/bundles/x.zip") == "https://mirror.example/bundles/x.zip"  # a URL
    assert paths.scrub(f"{tmp_path}/dataset/manifest.json") == f"{tmp_path}/dataset/manifest.json"  # a client's


# Through the API ---------------------------------------------------------------------------------------------


def test_a_configured_bundle_path_is_not_in_the_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with make_api(data, vista3d_bundle=str(data / "operator" / "vista3d.zip")) as api:
        base = next(
            e["id"] for e in api.get("experiments:base").json()["experiments"] if "vista3d" in e["network_arch"]
        )
        resp = api.post("experiments", json={"name": "v", "network_arch": "monai_vista3d", "base_experiment": [base]})
        assert resp.status_code == 400, resp.text
        message = resp.json()["error_desc"]
        assert message == (
            "MEDCLOUD_VISTA3D_BUNDLE ([MEDCLOUD_VISTA3D_BUNDLE]) could not be used: "
            "[MEDCLOUD_VISTA3D_BUNDLE] does not exist."
        )
        _no_server_path(api, resp.text)


def test_a_model_error_naming_server_files_reaches_the_client_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_api(tmp_path / "data") as api:
        data = api.ctx.settings.data_dir
        exp_ids: list[str] = []

        async def started(*_args: Any, **_kw: Any) -> None:
            return None

        async def failing_infer(*_args: Any, **_kw: Any) -> None:  # what a model host answers when loading fails
            raise Invalid(
                "Error: the model could not be loaded: Traceback: File "
                f'"{sys.prefix}/lib/python3.11/site-packages/torch/serialization.py", line 1: FileNotFoundError: '
                f"[Errno 2] No such file or directory: '{data}/experiments/{exp_ids[0]}/bundle/models/m.pt'"
            )

        monkeypatch.setattr(api.ctx.hosts, "start", started)
        monkeypatch.setattr(api.ctx.hosts, "infer", failing_infer)
        dataset = api.post(
            "datasets", json={"name": "d", "client_url": str(tiny_dataset(tmp_path / "ds", {"a": b"x"}))}
        )
        exp_id = _experiment(api, tmp_path, realtime_infer=True, train_datasets=[dataset.json()["id"]])
        exp_ids.append(exp_id)
        resp = api.post(f"experiments/{exp_id}/jobs", json={"action": "inference", "specs": {"image": "a"}})
        assert resp.status_code == 400, resp.text
        message = resp.json()["error_desc"]
        assert f"'[data]/experiments/{exp_id}/bundle/models/m.pt'" in message
        assert '"[python]/lib/python3.11/site-packages/torch/serialization.py"' in message
        _no_server_path(api, resp.text)


def test_job_messages_are_read_without_server_paths(tmp_path: Path) -> None:
    with make_api(tmp_path / "data") as api:
        data = api.ctx.settings.data_dir
        exp_id = _experiment(api, tmp_path)
        message = f"Training failed: FileNotFoundError: '{data}/jobs/x/results/model.pt' (home {Path.home()}/.cache)"
        job_id = _job(api, exp_id, "Error", {"detailed_status": {"message": message}, "history": [{"note": str(data)}]})
        for resp in (api.get(f"experiments/{exp_id}/jobs/{job_id}"), api.get(f"experiments/{exp_id}/jobs")):
            assert resp.status_code == 200, resp.text
            _no_server_path(api, resp.text)
        got = api.get(f"experiments/{exp_id}/jobs/{job_id}").json()["result"]
        assert got["detailed_status"]["message"] == (
            "Training failed: FileNotFoundError: '[data]/jobs/x/results/model.pt' (home [home]/.cache)"
        )
        assert got["history"] == [{"note": "[data]"}]
        deleted = api.delete(f"experiments/{exp_id}/jobs/{job_id}")
        assert deleted.status_code == 200 and deleted.json()["result"]["history"] == [{"note": "[data]"}]
        _no_server_path(api, deleted.text)


# DELETE of a job ---------------------------------------------------------------------------------------------


def test_deleting_a_job_removes_its_folder_without_following_links(tmp_path: Path) -> None:
    with make_api(tmp_path / "data") as api:
        data = api.ctx.settings.data_dir
        exp_id = _experiment(api, tmp_path)
        gone, kept = _job(api, exp_id, "Done"), _job(api, exp_id, "Error")
        outside = tmp_path / "outside"
        (outside / "keep").mkdir(parents=True)
        (outside / "keep" / "precious.txt").write_text("not the job's")
        (data / "jobs" / gone / files.RESULTS / "link").symlink_to(outside)  # planted by model code
        (data / "jobs" / gone / "file-link").symlink_to(outside / "keep" / "precious.txt")

        resp = api.delete(f"experiments/{exp_id}/jobs/{gone}")
        assert resp.status_code == 200, resp.text
        assert resp.json()["id"] == gone and resp.json()["status"] == "Done"
        assert not (data / "jobs" / gone).exists() and not (data / "jobs" / gone).is_symlink()
        assert (outside / "keep" / "precious.txt").read_text() == "not the job's"  # links removed, not followed
        assert (data / "jobs" / kept / files.LOG).is_file()  # the other job keeps its folder
        assert api.get(f"experiments/{exp_id}/jobs/{gone}").status_code == 404
        assert api.delete(f"experiments/{exp_id}/jobs/{gone}").status_code == 404


def test_an_active_job_is_not_deleted_and_keeps_its_folder(tmp_path: Path) -> None:
    with make_api(tmp_path / "data") as api:
        data = api.ctx.settings.data_dir
        exp_id = _experiment(api, tmp_path)
        running = _job(api, exp_id, "Running")
        resp = api.delete(f"experiments/{exp_id}/jobs/{running}")
        assert resp.status_code == 400
        assert resp.json()["error_desc"] == f"Job {running} is Running; cancel it before deleting it."
        assert (data / "jobs" / running / files.LOG).is_file()


def test_deleting_a_job_removes_its_backend_folder_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_api(tmp_path / "data") as api:
        shared = tmp_path / "shared" / "jobs"  # a Ray cluster's shared folder: the backend's job folder
        monkeypatch.setattr(api.ctx.jobs, "job_dir", lambda job_id: shared / job_id)
        exp_id = _experiment(api, tmp_path)
        job_id = _job(api, exp_id, "Canceled")
        (shared / job_id / files.RESULTS).mkdir(parents=True)
        (shared / job_id / files.LOG).write_text("cluster log\n")
        assert api.delete(f"experiments/{exp_id}/jobs/{job_id}").status_code == 200
        assert not (shared / job_id).exists()
        assert not files.job_dir(api.ctx.settings.data_dir, job_id).exists()
