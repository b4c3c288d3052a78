"""Routes of `/experiments/{id}/jobs/...`: list, get, logs, cancel, download, delete (`jobs/lifecycle.py`)."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from medcloud.api import openapi
from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.api.streaming import chunks
from medcloud.jobs import lifecycle
from medcloud.jobs.schemas import JobOut

router = APIRouter(prefix="/api/v1/orgs/{org}/experiments/{experiment_id}/jobs")
JobList = openapi.list_model("JobList", "jobs", JobOut, paged=False)


def _ids(experiment_id: str, job_id: str | None = None) -> tuple[str, str]:
    return checked_uuid(experiment_id, "Experiment"), checked_uuid(job_id, "Job") if job_id is not None else ""


@router.get("", responses=openapi.ok(200, JobList))
async def list_jobs(experiment_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, _ = _ids(experiment_id)
    return {"jobs": await lifecycle.list_jobs(ctx, caller, eid)}


@router.post("/{job_id}:cancel", responses=openapi.ok(200, openapi.Message))
async def cancel_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    return {"message": await lifecycle.cancel(ctx, caller, *_ids(experiment_id, job_id))}


@router.get(
    "/{job_id}:download",
    responses=openapi.ok(200, content={"application/gzip": {"type": "string", "format": "binary"}}),
)
async def download_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> StreamingResponse:
    eid, jid = _ids(experiment_id, job_id)
    packed = await lifecycle.archive(ctx, caller, eid, jid)
    size = os.fstat(packed.fileno()).st_size
    return StreamingResponse(
        chunks(ctx.pools, packed.read, close=packed.close),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{jid}.tar.gz"', "Content-Length": str(size)},
    )


@router.get("/{job_id}/logs", responses=openapi.ok(200, content={"text/plain": {"type": "string"}}))
async def job_logs(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> StreamingResponse:
    log = await lifecycle.open_log(ctx, caller, *_ids(experiment_id, job_id))

    def read(size: int) -> bytes:
        return log.read(size).encode()  # `size` characters: at most 4 bytes each

    return StreamingResponse(chunks(ctx.pools, read, close=log.close), media_type="text/plain")


@router.get("/{job_id}", responses=openapi.ok(200, JobOut))
async def get_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    return await lifecycle.get_job(ctx, caller, *_ids(experiment_id, job_id))


@router.delete("/{job_id}", responses=openapi.ok(200, JobOut))
async def delete_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    """Delete a job that is not active (400 otherwise: cancel it first), then its folders."""
    return await lifecycle.delete(ctx, caller, *_ids(experiment_id, job_id))
