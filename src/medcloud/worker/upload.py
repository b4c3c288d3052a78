"""Copying a job's results (checkpoints, configs, logs) to the job's folder in its workspace bucket.

The folder follows the server's `results_layout`, carried in the ticket (`ResultsTarget.folder`):
`{bucket}/results/{job_id}/` (the seed guide's, the default) or
`{bucket}/shared/orgs/{org}/users/{user_id}/jobs/{job_id}/` (where the hosted service's notebooks read).
Runs in the worker, with the workspace's location and credentials from the ticket.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from medcloud.config import Settings
from medcloud.confined import copy_regular, open_regular, regular_files
from medcloud.jobs import files
from medcloud.jobs.ticket import ResultsTarget
from medcloud.sources.objectstore import storage_errors
from medcloud.workspaces import storage

URL_SCHEMES = {"s3": "s3", "abfs": "az", "gcs": "gs"}  # fsspec protocol → the URL scheme users write


def upload_results(settings: Settings, *, job_id: str, target: ResultsTarget | None, job_dir: Path) -> str | None:
    """Upload `results/` (with the log copied in); return the remote folder as a URL (`s3://bucket/...`,
    `az://container/...`, `gs://bucket/...`), or None without a workspace."""
    results = job_dir / files.RESULTS
    results.mkdir(parents=True, exist_ok=True)
    # `results/` is the worker's copy of the model's (worker/run.py); still, regular files only, never a link.
    if (job_dir / files.LOG).exists():
        copy_regular(job_dir / files.LOG, job_dir, results / files.LOG)
    if target is None:
        return None
    location = storage.location(target.cloud_type, dict(target.details), dict(target.secrets), settings)
    remote = f"{location.root.rstrip('/')}/{target.folder(job_id)}"
    fs = location.filesystem()
    with storage_errors(location):
        for path in regular_files(results):
            target_path = f"{remote}/{path.relative_to(results).as_posix()}"
            with open_regular(path, results) as src, fs.open(target_path, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
    scheme = URL_SCHEMES.get(location.protocol)
    return f"{scheme}://{remote}" if scheme else remote
