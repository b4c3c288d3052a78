"""Logging of job processes: one format on stdout (the job's log), storage and HTTP clients kept quiet.

A job's log is what its worker and model process print. Storage clients log every request (Azure's
`http_logging_policy` dumps each request's and response's headers at INFO; botocore, urllib3, s3fs,
aiobotocore, fsspec, gcsfs and google.auth add more at DEBUG once anything lowers the root level), which
drowned a short train job's own lines. These loggers are set to WARNING, so their failures still show.
A bundle's `logging.conf` (applied later by MONAI with `disable_existing_loggers=False`) configures the
root logger and keeps these levels, unless it names one of these loggers itself.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers of the storage and HTTP clients a job uses (fsspec backends, MLflow's HTTP, egress downloads).
# A level on a parent covers its children that keep NOTSET; the noisiest children are named too, in case a
# library sets its own level on them.
NOISY_LOGGERS: tuple[str, ...] = (
    "azure",
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.identity",
    "adlfs",
    "botocore",
    "boto3",
    "s3transfer",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "gcsfs",
    "google.auth",
    "google.resumable_media",
    "urllib3",
    "requests",
    "aiohttp",
    "httpx",
    "httpcore",
)


def quiet_storage_loggers(level: int = logging.WARNING) -> None:
    """Set every logger in `NOISY_LOGGERS` to `level` (WARNING by default): requests and headers go unlogged.

    Args:
        level: the least severe level these loggers still pass on.

    Example:
        >>> quiet_storage_loggers()
        >>> logging.getLogger("azure.core.pipeline.policies.http_logging_policy").isEnabledFor(logging.INFO)
        False
    """
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def setup_job_logging() -> None:
    """Log INFO and above to stdout (which the job's log file is) in one format, storage clients quieted."""
    logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stdout)
    quiet_storage_loggers()
