"""A job after it was made, as the API serves it: list, read, cancel, archive, logs, delete.

The routes only parse and respond; this owns the rows (one DB session per step, in the `db` pool), the job
folders (the data folder's or the job backend's), the kill and the wake-up of the annotation controllers.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session

from medcloud.api.deps import Caller
from medcloud.confined import iter_regular, open_beneath, open_dir, open_regular
from medcloud.context import Context
from medcloud.errors import Invalid
from medcloud.execution.base import Handle
from medcloud.execution.kinds import BACKEND_ACTIONS
from medcloud.experiments import service as experiments
from medcloud.jobs import files, service
from medcloud.jobs.orm import Job
from medcloud.jobs.states import JobStatus
from medcloud.learning.actions import begin_cancel
from medcloud.server_paths import server_paths

LOGS_NOT_YET = "Logs for the job are not available yet."


def _owned(session: Session, caller: Caller, experiment_id: str, job_id: str) -> Job:
    return service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=experiment_id, job_id=job_id)


def scrubbed(ctx: Context, out: dict) -> dict:
    """A job as clients read it: its `result` (messages a worker or a model wrote) names no server folder."""
    return {**out, "result": server_paths(ctx.settings).scrub_json(out["result"])}


def as_json(ctx: Context, row: Job) -> dict:
    return scrubbed(ctx, service.to_out(row).model_dump(mode="json"))


async def list_jobs(ctx: Context, caller: Caller, experiment_id: str) -> list[dict]:
    """The experiment's jobs, newest first (404 when the experiment is not the caller's)."""

    def listing(session: Session) -> list[dict]:
        experiments.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=experiment_id)
        return [as_json(ctx, r) for r in reversed(service.list_for_experiment(session, experiment_id=experiment_id))]

    return await ctx.in_session(listing)


async def get_job(ctx: Context, caller: Caller, experiment_id: str, job_id: str) -> dict:
    return await ctx.in_session(lambda session: as_json(ctx, _owned(session, caller, experiment_id, job_id)))


async def cancel(ctx: Context, caller: Caller, experiment_id: str, job_id: str) -> str:
    """Mark the job (and an annotation job's rounds) Canceling, kill what runs, wake the controllers."""
    message, to_kill = await ctx.in_session(
        lambda session: begin_cancel(session, _owned(session, caller, experiment_id, job_id))
    )
    for kill_id in to_kill:
        await ctx.events.job_cancel(kill_id)
    ctx.events.controllers_wake()
    return message


async def delete(ctx: Context, caller: Caller, experiment_id: str, job_id: str) -> dict:
    """Delete a job that is not active (400 otherwise: cancel it first), then its folders."""
    out = await ctx.in_session(
        lambda session: scrubbed(
            ctx, service.delete(session, row=_owned(session, caller, experiment_id, job_id)).model_dump(mode="json")
        )
    )
    # After the commit (the row never names a missing folder), off the event loop.
    await ctx.pools.run("files", remove_folders, job_folders(ctx, job_id))
    return out


async def archive(ctx: Context, caller: Caller, experiment_id: str, job_id: str) -> IO[bytes]:
    """The job's results and log as a .tar.gz in an unnamed temporary file, rewound (the caller closes it)."""
    row_action = await ctx.in_session(lambda session: _owned(session, caller, experiment_id, job_id).action)
    return await ctx.pools.run("files", _pack, job_folder(ctx, row_action, job_id), job_id, ctx.settings.data_dir)


async def open_log(ctx: Context, caller: Caller, experiment_id: str, job_id: str) -> io.TextIOWrapper:
    """The job's log as text (400 while it has none); a cluster's log is copied to the API machine first."""

    def status(session: Session) -> tuple[str, str, Handle | None]:
        row = _owned(session, caller, experiment_id, job_id)
        return row.status, row.action, Handle.from_json(row.backend_handle)

    status_now, action, handle = await ctx.in_session(status)
    if status_now == JobStatus.PENDING:
        raise Invalid(LOGS_NOT_YET)

    def log_folder() -> Path:
        if action in BACKEND_ACTIONS:
            path = ctx.jobs.logs(job_id, handle)
            if path is None:
                raise Invalid(LOGS_NOT_YET)
            return path.parent
        return files.job_dir(ctx.settings.data_dir, job_id)

    return await ctx.pools.run("files", lambda: _open_log(log_folder()))


def job_folder(ctx: Context, action: str, job_id: str) -> Path:
    """A job's folder on the API machine: the job backend's for jobs it runs, the data folder's otherwise."""
    return ctx.jobs.job_dir(job_id) if action in BACKEND_ACTIONS else files.job_dir(ctx.settings.data_dir, job_id)


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
