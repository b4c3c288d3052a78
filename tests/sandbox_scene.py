"""The scene of the hostile-bundle tests (tests/test_sandbox.py, and tests/test_sandbox_ray.py on Ray): a server
running as root with a victim experiment, listeners standing for the API and PostgreSQL, and the probe bundle
(`probe_bundle.py`) that bob's experiments run; and reading the probe's report.
"""

from __future__ import annotations

import json
import os
import select
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builders import create_dataset, create_experiment, manifest_entries
from conftest import make_api
from helpers import wait_for
from probe_bundle import make_probe_bundle

from medcloud.demo.bundles import pack_bundle


@dataclass
class Scene:
    """A server as root, a victim experiment, listeners standing for the API and PostgreSQL, and the probe."""

    api: object
    data: Path
    dataset: str
    image_id: str
    victim_file: Path
    listeners: list[socket.socket]
    tmp: Path

    def config(self, mode: str, **extra: object) -> dict:
        return {
            "mode": mode,
            "data_dir": str(self.data),
            "victim_file": str(self.victim_file),
            "server_pid": os.getpid(),
            "api_port": self.listeners[0].getsockname()[1],
            "postgres_port": self.listeners[1].getsockname()[1],
            "marker": str(self.tmp / f"pickle-ran-{uuid.uuid4().hex}"),
            **extra,
        }

    def probe_experiment(self, base: Path, config: dict, *, realtime: bool) -> str:
        resp = self.create_probe(base, config, realtime=realtime)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def create_probe(self, base: Path, config: dict, *, realtime: bool):
        probe = make_probe_bundle(base, self.tmp / uuid.uuid4().hex, config)
        body = {
            "name": f"probe-{config['mode']}",
            "network_arch": "monai_custom",
            "train_datasets": [self.dataset],
            "realtime_infer": realtime,
            "bundle_url": f"file://{pack_bundle(probe, probe.parent, 'zip')}",
        }
        return self.api.post("experiments", user="bob", json=body)

    def infer(self, exp_id: str):
        return self.api.post(
            f"experiments/{exp_id}/jobs", user="bob", json={"action": "inference", "specs": {"image": self.image_id}}
        )

    def train(self, exp_id: str) -> str:
        resp = self.api.post(
            f"experiments/{exp_id}/jobs", user="bob", json={"action": "train", "specs": {"train#trainer#max_epochs": 1}}
        )
        assert resp.status_code == 201, resp.text
        job_id = resp.json()
        wait_for(
            lambda: (
                self.api.get(f"experiments/{exp_id}/jobs/{job_id}", user="bob").json()["status"] in ("Done", "Error")
            ),
            timeout=300,
            what="the train job to end",
        )
        return job_id

    def master_key(self) -> str:
        return (self.data / "secret.key").read_text().strip()

    def nothing_connected(self) -> bool:
        return not select.select(self.listeners, [], [], 0)[0]

    def planted(self) -> list[Path]:
        return sorted(self.data.glob("planted-*"))


@contextmanager
def scene(tmp: Path, dataset_root: Path, demo_bundles: dict[str, Path], **settings: object) -> Iterator[Scene]:
    listeners = []
    for _ in range(2):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listeners.append(listener)
    try:
        with make_api(tmp / "data", bundle_allow_local_paths=True, **settings) as api:
            dataset = create_dataset(api, dataset_root)
            victim = create_experiment(api, dataset, pack_bundle(demo_bundles["segmentation"], tmp, "zip"))
            victim_file = tmp / "data" / "experiments" / victim["id"] / "bundle" / "configs" / "metadata.json"
            assert victim_file.exists()
            bob_dataset = create_dataset(api, dataset_root, user="bob")
            image_id = manifest_entries(dataset_root)[0]["image"]["id"]
            yield Scene(api, tmp / "data", bob_dataset, image_id, victim_file, listeners, tmp)
    finally:
        for listener in listeners:
            listener.close()


def read_probe(path: Path) -> dict:
    """The report the probe wrote to `path`, once it is there."""
    return json.loads(wait_for(lambda: path.exists() and path.read_text(), timeout=240, what=str(path)))


def refused(report: dict, *names: str) -> None:
    """Every named attempt of the probe failed."""
    for name in names:
        assert not report[name].startswith("ok"), (name, report[name])


def sees_only_mount_points(report: dict) -> None:
    """The data dir inside the sandbox holds only the empty folders bwrap made to mount the model's own
    folders on: no key, no database, no cache, no other experiment's folder."""
    listing = report["list_data"]
    if listing.startswith("ok:"):
        assert set(listing[3:].split(",")) <= {"hosts", "experiments", "jobs"}, listing
