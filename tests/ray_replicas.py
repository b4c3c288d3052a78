"""What the tests of model hosts on Ray Serve share (tests/test_ray_hosts.py, tests/test_sandbox_ray.py): the
server's settings on the test cluster, a replica's own account asked through Serve, and the module's Ray driver.

Ray is the optional `ray` extra, imported only where used: the test modules skip without it
(`pytest.importorskip`), and importing this module never needs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module", autouse=True)
def driver() -> Iterator[None]:
    """The test process is the Ray driver of every app built here: a MEDCLOUD_* secret in its environment
    must not reach a replica, and it disconnects before the session's cluster stops."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDCLOUD_PROBE_SECRET", "must-not-reach-a-replica")
        yield
    if ray.is_initialized():
        ray.shutdown()


def ray_settings(cluster: Any, **extra: Any) -> dict[str, Any]:
    return {
        "ray_address": cluster.address,
        "ray_shared_dir": cluster.shared_dir,
        "ray_cpus_per_replica": 0.25,  # the cluster has 2 CPUs; the other engineers' tests use it too
        "ray_gpus_per_replica": 0.5,
        "allow_expression_overrides": True,  # the held requests' bundle_params
        "host_start_timeout_s": 300,
        **extra,
    }


def app_name(experiment_id: str) -> str:
    return f"medcloud-{experiment_id}"


def replica_info(experiment_id: str) -> dict[str, Any]:
    """One replica's own account (pid, GPU, weights, environment), asked through Serve like any request."""
    from ray import serve

    return json.loads(serve.get_app_handle(app_name(experiment_id)).info.remote().result(timeout_s=120))
