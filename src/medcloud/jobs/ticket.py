"""A job as data: what the scheduler hands a job backend, and all a worker may know of the server.

The scheduler (API side, trusted, with the database and the master key) writes one `JobTicket` per
job: the experiment's bundle location, the datasets to read with only their own credentials, the
workspace to upload to with its credentials, and the settings a worker needs. The worker
(`worker/run.py`) runs from the ticket alone, on this machine or on any Ray node: it never opens the
server's database, master key or data folder. The ticket file is private to the worker's user (0600);
the model code the worker runs gets none of it (`jobs/spec.py`, `sandbox.py`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TICKET = "ticket.json"


@dataclass
class DatasetInput:
    """One dataset the job reads: how to open it (`sources.kinds.open_source`), with its own credentials only."""

    dataset_id: str
    client_url: str
    client_id: str | None = None
    client_secret: str | None = None
    filters: str | None = None
    source_kind: str = ""  # the dataset's stored kind; "" (a ticket of an older server): from the URL
    # DICOMweb: per image, the SEG series notified for it, newest first (the worker has no notifications table)
    notified_labels: dict[str, list[str]] = field(default_factory=dict)


RESULTS_LAYOUTS = ("results", "ngc")


@dataclass
class ResultsTarget:
    """Where `results/` is uploaded: a `workspaces.storage.location(...)` call's arguments, and the layout.

    `layout` (the server's `results_layout`) names the job's folder in the bucket: `results` puts it at
    `results/{job_id}/` (the seed guide's layout), `ngc` at `shared/orgs/{org}/users/{user_id}/jobs/{job_id}/`
    (where the hosted service's notebooks read), with the experiment owner's org and user id.
    """

    cloud_type: str
    details: dict[str, Any]
    secrets: dict[str, Any]
    layout: str = "results"
    org: str = ""
    user_id: str = ""

    def folder(self, job_id: str) -> str:
        """The job's results folder relative to the bucket root, without slashes at either end.

        >>> ResultsTarget("aws", {}, {}, layout="ngc", org="acme", user_id="u1").folder("j1")
        'shared/orgs/acme/users/u1/jobs/j1'
        """
        if self.layout == "results":
            parts = ["results", job_id]
        elif self.layout == "ngc":
            parts = ["shared", "orgs", self.org, "users", self.user_id, "jobs", job_id]
        else:
            raise ValueError(f"unknown results layout {self.layout!r} (one of {', '.join(RESULTS_LAYOUTS)})")
        if any(not part or "/" in part or part in (".", "..") for part in parts):
            raise ValueError(f"a results folder needs plain names, not {'/'.join(parts)!r}")
        return "/".join(parts)


@dataclass
class JobTicket:
    job_id: str
    action: str
    experiment_id: str
    network_arch: str
    bundle_dir: str  # the experiment's bundle, as the worker's node sees it
    specs: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)  # a HostSpec: what batch inference loads
    train: DatasetInput | None = None
    validation: DatasetInput | None = None
    inference: DatasetInput | None = None
    weights: str | None = None  # batch inference with a train job's checkpoint, as the worker's node sees it
    results: ResultsTarget | None = None
    cache_dir: str = ""  # where the worker keeps fetched images (this machine: the server's image cache)
    settings: dict[str, Any] = field(default_factory=dict)  # the `Settings` fields a worker needs, nothing more

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobTicket:
        raw = json.loads(text)
        for role in ("train", "validation", "inference"):
            if raw.get(role) is not None:
                raw[role] = DatasetInput(**raw[role])
        if raw.get("results") is not None:
            raw["results"] = ResultsTarget(**raw["results"])
        return cls(**raw)

    def write(self, path: Path) -> None:
        """Write it readable by this user alone (it holds credentials)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> JobTicket:
        return cls.from_json(path.read_text())
