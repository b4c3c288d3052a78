"""Train and batch jobs as Ray Jobs, on a real local Ray cluster (`ray_cluster`).

First the backend alone (`RayJobs`, fed `JobTicket`s directly: what the scheduler does), then through
the API: an app whose settings name the cluster trains the demo segmentation bundle on Ray, cancels,
and survives its own restart while a job runs.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import job, seg_experiment, start, wait_status
from conftest import Api, make_api
from helpers import wait_for
from ray_cluster import RayCluster

pytest.importorskip("ray", reason="Ray is the optional `ray` extra (pip install medcloud[ray])")

from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402

from medcloud.config import Settings  # noqa: E402
from medcloud.errors import MedcloudError  # noqa: E402
from medcloud.execution.base import Handle  # noqa: E402
from medcloud.execution.ray_jobs import RayJobs, submission_id  # noqa: E402
from medcloud.jobs import files  # noqa: E402
from medcloud.jobs.ticket import DatasetInput, JobTicket  # noqa: E402


def ray_settings(cluster: RayCluster, **extra: object) -> Settings:
    return Settings(
        ray_address=cluster.address,
        ray_dashboard_url=cluster.dashboard_url,
        ray_shared_dir=cluster.shared_dir,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def cluster(ray_cluster: RayCluster) -> RayCluster:  # the session's cluster (conftest)
    return ray_cluster


@pytest.fixture(scope="module")
def backend(cluster: RayCluster) -> RayJobs:
    return RayJobs(ray_settings(cluster))


@pytest.fixture(scope="module")
def jobs_api(cluster: RayCluster) -> JobSubmissionClient:
    """The cluster's Jobs API, to check what the backend did there."""
    return JobSubmissionClient(cluster.dashboard_url)


def ray_jobs_of(client: JobSubmissionClient, job_id: str) -> list:
    return [info for info in client.list_jobs() if (info.metadata or {}).get("medcloud_job") == job_id]


def reserved(dashboard_url: str, handle: Handle) -> dict[str, float]:
    """What Ray reserved for a job's entrypoint: the resources of its supervisor actor."""
    from ray.util.state import list_actors

    name = f"_ray_internal_job_actor_{handle.data['submission_id']}"
    [actor] = list_actors(address=dashboard_url, filters=[("name", "=", name)], detail=True)
    return actor.required_resources


def processes_in(folder: Path) -> list[int]:
    """Live processes whose command line names `folder` (the worker, `--ticket`; the model, `--job-dir`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(folder).encode() in cmdline:
                found.append(int(entry.name))
    return found


def argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def failing_ticket() -> JobTicket:
    """A train job whose dataset and bundle are not there: the worker fails fast and says so in its outcome."""
    return JobTicket(
        job_id=str(uuid.uuid4()),
        action="train",
        experiment_id=str(uuid.uuid4()),
        network_arch="monai_segmentation",
        bundle_dir="/nonexistent/bundle",
        train=DatasetInput(dataset_id=str(uuid.uuid4()), client_url="/nonexistent/dataset"),
        settings={"dataset_allow_local_paths": True},
    )


@pytest.fixture(scope="module")
def shared_bundle(demo_bundles: dict[str, Path], cluster: RayCluster) -> Path:
    """The demo segmentation bundle where every node sees it."""
    target = cluster.shared_dir / "test-bundles" / demo_bundles["segmentation"].name
    if not target.exists():
        shutil.copytree(demo_bundles["segmentation"], target)
    return target


def train_ticket(bundle: Path, dataset: Path, epochs: int) -> JobTicket:
    data = DatasetInput(dataset_id=str(uuid.uuid4()), client_url=str(dataset))
    return JobTicket(
        job_id=str(uuid.uuid4()),
        action="train",
        experiment_id=str(uuid.uuid4()),
        network_arch="monai_segmentation",
        bundle_dir=str(bundle),
        specs={"epochs": epochs, "val_interval": 1},
        train=data,
        validation=data,
        cache_dir=str(bundle.parents[1] / "cache"),
        settings={"dataset_allow_local_paths": True},
    )


# ------------------------------------------------------------------------------------- the backend


def test_refuses_to_start_without_a_shared_folder(cluster: RayCluster) -> None:
    settings = Settings(ray_address=cluster.address)
    with pytest.raises(MedcloudError, match="MEDCLOUD_RAY_SHARED_DIR"):
        RayJobs(settings)


def test_finds_the_dashboard_and_python_of_the_cluster(cluster: RayCluster) -> None:
    found = RayJobs(Settings(ray_address=cluster.address, ray_shared_dir=cluster.shared_dir))
    port = cluster.dashboard_url.rsplit(":", 1)[1]
    assert found.client().get_address().endswith(f":{port}")
    python = Path(found.python())
    assert python.is_file() and (python.parent / "ray").is_file()  # the Python the cluster runs, with Ray


def test_a_failing_worker_ends_with_its_outcome_once_and_its_logs(backend: RayJobs, jobs_api) -> None:
    ticket = failing_ticket()
    handle = backend.submit(ticket)
    assert handle == Handle("ray", {"submission_id": submission_id(ticket.job_id)})
    directory = backend.job_dir(ticket.job_id)
    assert directory.parent == backend.settings.ray_shared_dir.resolve() / "jobs"
    assert (directory / "ticket.json").stat().st_mode & 0o777 == 0o600
    assert backend.submit(ticket) == handle  # idempotent: the same Ray job, not a second one
    assert backend.report(ticket.job_id, handle).state == "running"
    report = wait_for(
        lambda: (r := backend.report(ticket.job_id, handle)).state != "running" and r, what="the job to end"
    )
    assert report.state == "ended"
    assert report.outcome is not None and report.outcome["status"] == "Error", report
    assert "/nonexistent/" in report.outcome["message"], report.outcome
    assert len(ray_jobs_of(jobs_api, ticket.job_id)) == 1
    assert backend.submit(ticket) == handle and len(ray_jobs_of(jobs_api, ticket.job_id)) == 1
    info = jobs_api.get_job_info(handle.data["submission_id"])
    assert info.status == JobStatus.FAILED  # the worker exits non-zero on Error
    # Nothing of the server in Ray's records (the dashboard shows them): no MEDCLOUD_* setting, no credential.
    assert info.runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert reserved(backend.settings.ray_dashboard_url, handle) == {"CPU": 1}
    log_file = backend.logs(ticket.job_id, handle)
    assert log_file == directory / files.LOG
    text = log_file.read_text()
    assert f"Job {ticket.job_id}: worker started" in text and report.outcome["message"] in text
    # An API restart finds the ended job by its outcome: the scheduler's next report ends it.
    assert RayJobs(backend.settings).adopt(ticket.job_id, None) == handle


def test_a_worker_that_leaves_no_outcome_ends_with_rays_message(backend: RayJobs, jobs_api) -> None:
    job_id = str(uuid.uuid4())
    # What a worker killed on its node looks like: the entrypoint exits without writing outcome.json.
    jobs_api.submit_job(entrypoint="echo dying; exit 3", submission_id=submission_id(job_id))
    report = wait_for(lambda: (r := backend.report(job_id, None)).state == "ended" and r, what="the job to end")
    assert report.outcome is None
    assert report.detail == f"Ray job {submission_id(job_id)} FAILED: Job entrypoint command failed with exit code 3"
    assert backend.adopt(job_id, None) is None  # ended without an outcome: nothing to reattach to
    assert "dying" in backend.logs(job_id, None).read_text()


def test_a_job_reserves_and_sees_the_gpus_of_the_settings(cluster: RayCluster, jobs_api) -> None:
    backend = RayJobs(ray_settings(cluster, ray_gpus_per_job=0.5))
    ticket = failing_ticket()
    handle = backend.submit(ticket)
    wait_for(lambda: backend.report(ticket.job_id, handle).state == "ended", what="the job to end")
    assert reserved(cluster.dashboard_url, handle) == {"CPU": 1, "GPU": 0.5}
    info = jobs_api.get_job_info(handle.data["submission_id"])
    assert info.runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1"}  # Ray sets CUDA_VISIBLE_DEVICES itself


def test_an_unknown_job_is_gone(backend: RayJobs) -> None:
    job_id = str(uuid.uuid4())
    assert backend.report(job_id, None).state == "gone"
    assert backend.adopt(job_id, None) is None
    assert backend.logs(job_id, None) is None
    backend.cancel(job_id, None, timeout=5)  # nothing to stop: returns at once


def test_a_long_job_is_adopted_after_a_restart_and_cancel_stops_all_of_it(
    backend: RayJobs, jobs_api, shared_bundle: Path, local_dataset: Path
) -> None:
    ticket = train_ticket(shared_bundle, local_dataset, epochs=500)
    handle = backend.submit(ticket)
    directory = backend.job_dir(ticket.job_id)
    try:
        progress = wait_for(
            lambda: backend.report(ticket.job_id, handle).progress, timeout=180, what="the model to report progress"
        )
        assert progress["max_epoch"] == 500
        running = processes_in(directory)
        assert len(running) >= 2  # the worker and its model process
        for pid in running:  # no GPU reserved (the default), none visible
            assert b"\0CUDA_VISIBLE_DEVICES=\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes(), argv(pid)
        restarted = RayJobs(backend.settings)  # a new API process: nothing of the old one is known
        assert restarted.adopt(ticket.job_id, None) == handle
        assert restarted.adopt(ticket.job_id, handle) == handle
        assert restarted.report(ticket.job_id, handle).state == "running"
        restarted.cancel(ticket.job_id, handle, timeout=30)
        assert jobs_api.get_job_status(handle.data["submission_id"]) == JobStatus.STOPPED
        assert processes_in(directory) == []  # cancel returned: nothing of the job runs
        report = restarted.report(ticket.job_id, handle)
        assert report.state == "ended" and report.outcome is None and "STOPPED" in report.detail
        assert restarted.adopt(ticket.job_id, handle) is None
    finally:
        backend.cancel(ticket.job_id, handle, timeout=30)


# ------------------------------------------------------------------------------------- through the API


def app_settings(cluster: RayCluster, **extra: object) -> dict[str, object]:
    return {
        "ray_address": cluster.address,
        "ray_dashboard_url": cluster.dashboard_url,
        "ray_shared_dir": cluster.shared_dir,
        **extra,
    }


@pytest.fixture
def ray_api(tmp_path: Path, cluster: RayCluster) -> Iterator[Api]:
    with make_api(tmp_path / "data", **app_settings(cluster)) as api:
        assert api.ctx.jobs.name == "ray"
        yield api


def test_a_train_job_runs_on_ray_to_done_with_its_checkpoint_metrics_and_logs(
    ray_api: Api, jobs_api, local_dataset: Path, demo_zips: dict[str, Path]
) -> None:
    exp = seg_experiment(ray_api, local_dataset, demo_zips)
    job_id = start(ray_api, exp, {"epochs": 2, "val_interval": 1, "finetune": True})
    done = wait_status(ray_api, exp, job_id, {"Done", "Error"})
    assert done["status"] == "Done", done["result"]
    result = done["result"]
    assert result["epoch"] in (1, 2) and result["max_epoch"] == 2
    assert result["key_metric"] > 0.8  # fine-tuned from a model that already segments the spheres
    [ran] = ray_jobs_of(jobs_api, job_id)  # it ran as a Ray job, in the shared folder
    assert ran.submission_id == submission_id(job_id) and ran.status == JobStatus.SUCCEEDED
    assert (ray_api.ctx.jobs.job_dir(job_id) / "results" / "models" / "model.pt").is_file()
    logs = ray_api.get(f"experiments/{exp['id']}/jobs/{job_id}/logs")
    assert logs.status_code == 200
    assert f"Job {job_id}: worker started" in logs.text and "Epoch" in logs.text
    tar = ray_api.get(f"experiments/{exp['id']}/jobs/{job_id}:download")
    assert tar.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        assert f"{job_id}/results/models/model.pt" in archive.getnames()


def test_cancel_on_ray_stops_the_ray_job_and_its_processes(
    ray_api: Api, jobs_api, local_dataset: Path, demo_zips: dict[str, Path]
) -> None:
    exp = seg_experiment(ray_api, local_dataset, demo_zips)
    job_id = start(ray_api, exp, {"epochs": 500})
    wait_for(lambda: job(ray_api, exp, job_id)["result"].get("max_epoch"), timeout=240, what="training to start")
    directory = ray_api.ctx.jobs.job_dir(job_id)
    assert processes_in(directory)
    resp = ray_api.post(f"experiments/{exp['id']}/jobs/{job_id}:cancel")
    assert resp.status_code == 200 and resp.json() == {"message": f"Running job {job_id} cancelled"}
    assert job(ray_api, exp, job_id)["status"] == "Canceled"  # recorded before the cancel answered
    assert jobs_api.get_job_status(submission_id(job_id)) == JobStatus.STOPPED
    assert processes_in(directory) == []


def test_a_killed_worker_on_ray_is_an_error(ray_api: Api, local_dataset: Path, demo_zips: dict[str, Path]) -> None:
    exp = seg_experiment(ray_api, local_dataset, demo_zips)
    job_id = start(ray_api, exp, {"epochs": 500})
    wait_for(lambda: job(ray_api, exp, job_id)["result"].get("max_epoch"), timeout=240, what="training to start")
    directory = ray_api.ctx.jobs.job_dir(job_id)
    [worker] = [pid for pid in processes_in(directory) if argv(pid)[1:3] == ["-m", "medcloud.worker.run"]]
    os.kill(worker, signal.SIGKILL)  # what a crash of the worker looks like
    failed = wait_status(ray_api, exp, job_id, {"Error", "Done"})
    # The model process dies with its worker (PR_SET_PDEATHSIG), out of Ray's reach as it would otherwise be.
    wait_for(lambda: processes_in(directory) == [], timeout=30, what="the model process to die with its worker")
    assert failed["status"] == "Error"
    message = failed["result"]["detailed_status"]["message"]
    assert message == (
        f"The job's process died (Ray job {submission_id(job_id)} FAILED: Job entrypoint command failed with "
        "exit code 137) before it finished."
    )


def test_a_sandboxed_train_job_on_ray_reads_its_published_bundle(
    tmp_path: Path, cluster: RayCluster, local_dataset: Path, demo_zips: dict[str, Path]
) -> None:
    with make_api(tmp_path / "data", **app_settings(cluster, model_sandbox="auto")) as api:
        exp = seg_experiment(api, local_dataset, demo_zips)
        job_id = start(api, exp, {"epochs": 1})
        done = wait_status(api, exp, job_id, {"Done", "Error"})
        assert done["status"] == "Done", done["result"]


def test_an_api_restart_reattaches_to_a_job_running_on_ray(
    tmp_path: Path,
    cluster: RayCluster,
    jobs_api,
    local_dataset: Path,
    demo_zips: dict[str, Path],
) -> None:
    data_dir, settings = tmp_path / "data", app_settings(cluster)
    epochs = 6
    with make_api(data_dir, **settings) as api:
        exp = seg_experiment(api, local_dataset, demo_zips)
        job_id = start(api, exp, {"epochs": epochs, "val_interval": 1})
        wait_for(lambda: job(api, exp, job_id)["result"].get("max_epoch"), timeout=240, what="training to start")
    # The API is gone; the job is the cluster's and keeps running.
    assert jobs_api.get_job_status(submission_id(job_id)) == JobStatus.RUNNING
    with make_api(data_dir, **settings) as api:
        assert job_id in api.ctx.runner._running  # adopted, not settled
        assert job(api, exp, job_id)["status"] == "Running"
        assert jobs_api.get_job_status(submission_id(job_id)) == JobStatus.RUNNING
        done = wait_status(api, exp, job_id, {"Done", "Error"})
        assert done["status"] == "Done", done["result"]
        assert done["result"]["max_epoch"] == epochs
        logs = api.get(f"experiments/{exp['id']}/jobs/{job_id}/logs")
        assert logs.status_code == 200 and "Epoch" in logs.text
    assert len(ray_jobs_of(jobs_api, job_id)) == 1  # the restart submitted nothing again
