"""How many replicas an experiment gets on Ray: its `model_params.replicas`, the site's floor and ceiling."""

from __future__ import annotations

import pytest

from medcloud.config import Settings

pytest.importorskip("ray", reason="Ray is the optional `ray` extra (pip install medcloud[ray])")


def scaling(tmp_path, replicas: int, **settings: int) -> dict:  # type: ignore[no-untyped-def]
    from medcloud.execution.ray_hosts import RayHosts

    hosts = RayHosts(Settings(data_dir=tmp_path, ray_address="127.0.0.1:1", ray_shared_dir=tmp_path, **settings))
    return hosts._scaling(replicas)  # no cluster is reached: the constructor connects lazily


def test_exact_count_when_the_maximum_allows_no_more(tmp_path):
    assert scaling(tmp_path, 1) == {"num_replicas": 1}
    assert scaling(tmp_path, 3, ray_max_replicas=3) == {"num_replicas": 3}


def test_autoscaling_from_the_experiments_count_to_the_maximum(tmp_path):
    config = scaling(tmp_path, 2, ray_max_replicas=5)["autoscaling_config"]
    assert (config["min_replicas"], config["initial_replicas"], config["max_replicas"]) == (2, 2, 5)


def test_the_sites_floor_raises_every_experiment_capped_by_the_maximum(tmp_path):
    config = scaling(tmp_path, 1, ray_min_replicas=2, ray_max_replicas=4)["autoscaling_config"]
    assert (config["min_replicas"], config["max_replicas"]) == (2, 4)
    assert scaling(tmp_path, 1, ray_min_replicas=6, ray_max_replicas=4) == {"num_replicas": 4}
    assert scaling(tmp_path, 3, ray_min_replicas=2, ray_max_replicas=3) == {"num_replicas": 3}
