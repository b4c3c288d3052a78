"""Table rows of the user commands' typed objects."""

from __future__ import annotations

from medcloud.client.types import Job
from medcloud.commands.output import short_time


def job_row(job: Job) -> tuple[str, ...]:
    """ID, action, status, epoch/max_epoch, key metric, name, modified."""
    progress = job.progress
    epoch = f"{progress.epoch or 0}/{progress.max_epoch}" if progress.max_epoch else "-"
    metric = f"{progress.key_metric:.4f}" if progress.key_metric is not None else "-"
    return (job.id, job.action, job.status, epoch, metric, job.name, short_time(job.last_modified))
