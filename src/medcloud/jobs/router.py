"""Routes of `/experiments/{id}/jobs/...`: list, get, logs, cancel, download, delete."""

from __future__ import annotations

import io
import tarfile

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.errors import Invalid
from medcloud.experiments import service as experiments
from medcloud.jobs import files, service
from medcloud.jobs.states import JobStatus
from medcloud.learning.actions import begin_cancel

router = APIRouter(prefix="/api/v1/orgs/{org}/experiments/{experiment_id}/jobs")


def _ids(experiment_id: str, job_id: str | None = None) -> tuple[str, str | None]:
    return checked_uuid(experiment_id, "Experiment"), checked_uuid(job_id, "Job") if job_id is not None else None


@router.get("")
def list_jobs(experiment_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, _ = _ids(experiment_id)
    with ctx.db.session() as session:
        experiments.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid)
        rows = service.list_for_experiment(session, experiment_id=eid)
        return {"jobs": [service.to_out(r).model_dump(mode="json") for r in reversed(rows)]}


@router.post("/{job_id}:cancel")
async def cancel_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, jid = _ids(experiment_id, job_id)

    def run() -> tuple[str, list[str]]:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
            return begin_cancel(session, row)

    message, to_kill = await run_in_threadpool(run)
    for kill_id in to_kill:
        await ctx.runner.cancel(kill_id)
    ctx.hub.wake_all()
    return {"message": message}


@router.get("/{job_id}:download")
async def download_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> Response:
    eid, jid = _ids(experiment_id, job_id)

    def run() -> bytes:
        with ctx.db.session() as session:
            service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
        directory = files.job_dir(ctx.settings.data_dir, jid)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in (files.RESULTS, files.LOG):
                if (directory / name).exists():
                    tar.add(directory / name, arcname=f"{jid}/{name}")
        return buffer.getvalue()

    body = await run_in_threadpool(run)
    return Response(
        body, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{jid}.tar.gz"'}
    )


@router.get("/{job_id}/logs")
def job_logs(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> PlainTextResponse:
    eid, jid = _ids(experiment_id, job_id)
    with ctx.db.session() as session:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
        status = row.status
    log_path = files.job_dir(ctx.settings.data_dir, jid) / files.LOG
    if status == JobStatus.PENDING or not log_path.exists():
        raise Invalid("Logs for the job are not available yet.")
    return PlainTextResponse(log_path.read_text(errors="replace"))


@router.get("/{job_id}")
def get_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, jid = _ids(experiment_id, job_id)
    with ctx.db.session() as session:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
        return service.to_out(row).model_dump(mode="json")


@router.delete("/{job_id}")
def delete_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, jid = _ids(experiment_id, job_id)
    with ctx.db.session() as session:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
        return service.delete(session, row=row).model_dump(mode="json")
