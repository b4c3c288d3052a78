"""Routes of `/experiments/{id}/jobs/...`: list, get, logs, cancel, download, delete (the row, then its folders)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from medcloud.api import openapi
from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.api.streaming import chunks
from medcloud.confined import iter_regular, open_beneath, open_dir, open_regular
from medcloud.context import Context
from medcloud.errors import Invalid
from medcloud.execution.base import Handle
from medcloud.execution.kinds import BACKEND_ACTIONS
from medcloud.experiments import service as experiments
from medcloud.jobs import files, service
from medcloud.jobs.orm import Job
from medcloud.jobs.schemas import JobOut
from medcloud.jobs.states import JobStatus
from medcloud.learning.actions import begin_cancel
from medcloud.server_paths import server_paths

router = APIRouter(prefix="/api/v1/orgs/{org}/experiments/{experiment_id}/jobs")
JobList = openapi.list_model("JobList", "jobs", JobOut, paged=False)
LOGS_NOT_YET = "Logs for the job are not available yet."


def _scrubbed(ctx: Context, out: dict) -> dict:
    """A job as clients read it: its `result` (messages a worker or a model wrote) names no server folder."""
    return {**out, "result": server_paths(ctx.settings).scrub_json(out["result"])}


def _out(ctx: Context, row: Job) -> dict:
    return _scrubbed(ctx, service.to_out(row).model_dump(mode="json"))


def _ids(experiment_id: str, job_id: str | None = None) -> tuple[str, str | None]:
    return checked_uuid(experiment_id, "Experiment"), checked_uuid(job_id, "Job") if job_id is not None else None


@router.get("", responses=openapi.ok(200, JobList))
async def list_jobs(experiment_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, _ = _ids(experiment_id)

    def run() -> dict:
        with ctx.db.session() as session:
            experiments.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid)
            rows = service.list_for_experiment(session, experiment_id=eid)
            return {"jobs": [_out(ctx, r) for r in reversed(rows)]}

    return await ctx.pools.run("db", run)


@router.post("/{job_id}:cancel", responses=openapi.ok(200, openapi.Message))
async def cancel_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, jid = _ids(experiment_id, job_id)

    def run() -> tuple[str, list[str]]:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
            return begin_cancel(session, row)

    message, to_kill = await ctx.pools.run("db", run)
    for kill_id in to_kill:
        await ctx.runner.cancel(kill_id)
    ctx.hub.wake_all()
    return {"message": message}


def job_folder(ctx: Context, action: str, job_id: str) -> Path:
    """A job's folder on the API machine: the job backend's for jobs it runs, the data folder's otherwise."""
    return ctx.jobs.job_dir(job_id) if action in BACKEND_ACTIONS else files.job_dir(ctx.settings.data_dir, job_id)


def _result_names(directory: Path) -> list[str]:
    try:
        root_fd = open_dir(directory / files.RESULTS)
    except OSError:
        return []
    try:
        return [name.as_posix() for name in iter_regular(root_fd)]
    finally:
        os.close(root_fd)


def _add_regular(tar: tarfile.TarFile, directory: Path, relative: str, arcname: str) -> None:
    """One regular file into the archive, opened through fds below the job folder (links, FIFOs and devices
    are left out: the archive holds regular files only)."""
    root_fd = open_dir(directory)
    try:
        handle = open_beneath(root_fd, relative)
    except OSError:
        return
    finally:
        os.close(root_fd)
    with handle:
        info = tar.gettarinfo(fileobj=handle, arcname=arcname)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o644
        tar.addfile(info, handle)


def _pack(directory: Path, job_id: str, data_dir: Path) -> IO[bytes]:
    """The job's results and log as a .tar.gz in an unnamed temporary file (rewound): on disk, not in memory."""
    # In the data dir: private, and on the disk of the results. Closed by the response stream.
    out = tempfile.TemporaryFile(dir=data_dir)  # noqa: SIM115
    try:
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for relative in [files.LOG, *(f"{files.RESULTS}/{name}" for name in _result_names(directory))]:
                _add_regular(tar, directory, relative, f"{job_id}/{relative}")
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


@router.get(
    "/{job_id}:download",
    responses=openapi.ok(200, content={"application/gzip": {"type": "string", "format": "binary"}}),
)
async def download_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> StreamingResponse:
    eid, jid = _ids(experiment_id, job_id)

    def folder() -> Path:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
            return job_folder(ctx, row.action, jid)

    directory = await ctx.pools.run("db", folder)
    packed = await ctx.pools.run("files", _pack, directory, jid, ctx.settings.data_dir)
    size = os.fstat(packed.fileno()).st_size
    return StreamingResponse(
        chunks(ctx.pools, packed.read, close=packed.close),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{jid}.tar.gz"', "Content-Length": str(size)},
    )


def _open_log(directory: Path) -> io.TextIOWrapper:
    """The log as text, as it was always served: UTF-8, bad bytes replaced, newlines made `\\n`.

    Opened without following links: model code may own the job folder.
    """
    try:
        binary = open_regular(directory / files.LOG, directory)
    except FileNotFoundError:
        raise Invalid(LOGS_NOT_YET) from None
    except OSError as exc:
        raise Invalid(f"The job's log cannot be read: {exc.strerror or exc}.") from None
    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace")


@router.get("/{job_id}/logs", responses=openapi.ok(200, content={"text/plain": {"type": "string"}}))
async def job_logs(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> StreamingResponse:
    eid, jid = _ids(experiment_id, job_id)

    def status() -> tuple[str, str, Handle | None]:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
            return row.status, row.action, Handle.from_json(row.backend_handle)

    status_now, action, handle = await ctx.pools.run("db", status)
    if status_now == JobStatus.PENDING:
        raise Invalid(LOGS_NOT_YET)

    def log_folder() -> Path:
        if action in BACKEND_ACTIONS:
            path = ctx.jobs.logs(jid, handle)  # a cluster's log is copied to the API machine first
            if path is None:
                raise Invalid(LOGS_NOT_YET)
            return path.parent
        return files.job_dir(ctx.settings.data_dir, jid)

    log = await ctx.pools.run("files", lambda: _open_log(log_folder()))

    def read(size: int) -> bytes:
        return log.read(size).encode()  # `size` characters: at most 4 bytes each

    return StreamingResponse(chunks(ctx.pools, read, close=log.close), media_type="text/plain")


@router.get("/{job_id}", responses=openapi.ok(200, JobOut))
async def get_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid, jid = _ids(experiment_id, job_id)

    def run() -> dict:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
            return _out(ctx, row)

    return await ctx.pools.run("db", run)


def job_folders(ctx: Context, job_id: str) -> list[Path]:
    """Every folder a job may have left: the data folder's and, if it differs, its backend's (a Ray cluster's)."""
    own = files.job_dir(ctx.settings.data_dir, job_id)
    backend = ctx.jobs.job_dir(job_id)
    return [own] if backend == own else [own, backend]


def remove_folders(folders: list[Path]) -> None:
    """Remove each folder and what it holds (blocking: run it in the `files` pool).

    `shutil.rmtree` on Linux walks by file descriptors: a link planted inside is removed, never followed,
    and a folder that is itself a link is left alone (an error, ignored).
    """
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@router.delete("/{job_id}", responses=openapi.ok(200, JobOut))
async def delete_job(experiment_id: str, job_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    """Delete a job that is not active (400 otherwise: cancel it first), then its folders."""
    eid, jid = _ids(experiment_id, job_id)

    def run() -> dict:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid, job_id=jid)
            return _scrubbed(ctx, service.delete(session, row=row).model_dump(mode="json"))

    out = await ctx.pools.run("db", run)
    # After the commit (the row never names a missing folder), off the event loop.
    await ctx.pools.run("files", remove_folders, job_folders(ctx, jid))
    return out
