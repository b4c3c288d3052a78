"""Copying a job's results (checkpoints, configs, logs) to `{bucket}/results/{job_id}/` of its workspace."""

from __future__ import annotations

import shutil
from pathlib import Path

from medcloud.confined import copy_regular, open_regular, regular_files
from medcloud.context import Context
from medcloud.experiments.orm import Experiment
from medcloud.jobs import files
from medcloud.jobs.orm import Job
from medcloud.sources.objectstore import storage_errors
from medcloud.workspaces import service as workspaces
from medcloud.workspaces import storage
from medcloud.workspaces.orm import Workspace


def _location(ctx: Context, experiment: Experiment) -> storage.StoreLocation | None:
    if experiment.workspace:
        with ctx.db.session() as session:
            row = session.get(Workspace, experiment.workspace)
            return workspaces.location_of(row, ctx.box, ctx.settings) if row else None
    details = experiment.cloud_details or {}
    if details.get("cloud_type") and details.get("cloud_bucket_name"):
        secrets = ctx.box.open(experiment.sealed_cloud_secrets)
        return storage.location(details["cloud_type"], details, secrets, ctx.settings)
    return None


def upload_results(ctx: Context, *, job: Job, experiment: Experiment, job_dir: Path) -> str | None:
    """Upload `results/` (with the log copied in); return the remote folder, or None without a workspace."""
    results = job_dir / files.RESULTS
    results.mkdir(parents=True, exist_ok=True)
    # The model process owned these folders: copy and upload regular files only, never through a link.
    if (job_dir / files.LOG).exists():
        copy_regular(job_dir / files.LOG, job_dir, results / files.LOG)
    location = _location(ctx, experiment)
    if location is None:
        return None
    remote = f"{location.root.rstrip('/')}/results/{job.id}"
    fs = location.filesystem()
    with storage_errors(location):
        for path in regular_files(results):
            target = f"{remote}/{path.relative_to(results).as_posix()}"
            with open_regular(path, results) as src, fs.open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
    return remote
