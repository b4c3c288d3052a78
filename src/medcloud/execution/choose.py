"""The backends the settings name: local child processes, or a Ray cluster when `MEDCLOUD_RAY_ADDRESS` is set."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import TYPE_CHECKING

from medcloud.config import Settings

if TYPE_CHECKING:
    from medcloud.execution.base import HostBackend, JobBackend


def host_backend(settings: Settings, executor: Executor | None = None) -> HostBackend:
    """Model hosts; `executor`: the `model` thread pool for blocking work (pools.py)."""
    if settings.ray_address:
        from medcloud.execution.ray_hosts import RayHosts  # imports Ray: the optional `ray` extra

        return RayHosts(settings, executor=executor)
    from medcloud.inference.hosts import HostManager

    return HostManager(settings, executor=executor)


def job_backend(settings: Settings) -> JobBackend:
    if settings.ray_address:
        from medcloud.execution.ray_jobs import RayJobs  # imports Ray: the optional `ray` extra

        return RayJobs(settings)
    from medcloud.execution.local_jobs import LocalJobs

    return LocalJobs(settings)
