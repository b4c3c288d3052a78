"""Typed views of the API's objects (datasets, experiments, jobs, workspaces) and of a job's progress.

Each keeps the server's whole answer in `raw`, so fields this client does not name (or that the
hosted service adds) stay reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATUSES = frozenset({"Done", "Error", "Canceled"})


def _get(raw: dict[str, Any], key: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    return default if value is None else value


@dataclass(frozen=True)
class Dataset:
    """A dataset (`GET /datasets/{id}`)."""

    id: str
    name: str
    type: str
    format: str
    client_url: str
    description: str = ""
    created_on: str | None = None
    last_modified: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Dataset:
        """Build from the API's JSON."""
        return cls(
            id=raw["id"], name=_get(raw, "name", ""), type=_get(raw, "type", ""), format=_get(raw, "format", ""),
            client_url=_get(raw, "client_url", ""), description=_get(raw, "description", ""),
            created_on=raw.get("created_on"), last_modified=raw.get("last_modified"), raw=raw,
        )  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    """An experiment, or a base experiment of `experiments:base`."""

    id: str
    name: str
    network_arch: str
    realtime_infer: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    train_datasets: list[str] = field(default_factory=list)
    eval_dataset: str | None = None
    inference_dataset: str | None = None
    jobs: list[str] = field(default_factory=list)
    created_on: str | None = None
    last_modified: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Experiment:
        """Build from the API's JSON."""
        params = _get(raw, "model_params", {})
        return cls(
            id=raw["id"], name=_get(raw, "name", ""), network_arch=_get(raw, "network_arch", ""),
            realtime_infer=bool(raw.get("realtime_infer")), labels=dict(_get(params, "labels", {})),
            train_datasets=list(_get(raw, "train_datasets", [])), eval_dataset=raw.get("eval_dataset"),
            inference_dataset=raw.get("inference_dataset"), jobs=list(_get(raw, "jobs", [])),
            created_on=raw.get("created_on"), last_modified=raw.get("last_modified"), raw=raw,
        )  # fmt: skip


@dataclass(frozen=True)
class Progress:
    """Where a train job is: `epoch` of `max_epoch`, the key metric so far, seconds left."""

    epoch: int | None = None
    max_epoch: int | None = None
    key_metric: float | None = None
    eta: float | None = None
    message: str | None = None

    @property
    def fraction(self) -> float | None:
        """Epochs done over epochs planned, or None when unknown."""
        if self.epoch is None or not self.max_epoch:
            return None
        return min(max(self.epoch / self.max_epoch, 0.0), 1.0)


@dataclass(frozen=True)
class Job:
    """An experiment's job (`train`, `batchinfer`, `annotation`)."""

    id: str
    action: str
    status: str
    experiment_id: str | None
    name: str = ""
    parent_id: str | None = None
    specs: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    created_on: str | None = None
    last_modified: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: dict[str, Any], experiment_id: str | None = None) -> Job:
        """Build from the API's JSON; `experiment_id` fills in for servers that do not echo it."""
        return cls(
            id=raw["id"], action=_get(raw, "action", ""), status=_get(raw, "status", ""),
            experiment_id=raw.get("experiment_id") or experiment_id, name=_get(raw, "name", ""),
            parent_id=raw.get("parent_id"), specs=dict(_get(raw, "specs", {})), result=dict(_get(raw, "result", {})),
            created_on=raw.get("created_on"), last_modified=raw.get("last_modified"), raw=raw,
        )  # fmt: skip

    @property
    def ended(self) -> bool:
        """True once the job is Done, Error or Canceled."""
        return self.status in TERMINAL_STATUSES

    @property
    def message(self) -> str | None:
        """`result.detailed_status.message`, the server's last word on the job."""
        detailed = self.result.get("detailed_status")
        return detailed.get("message") if isinstance(detailed, dict) else None

    @property
    def progress(self) -> Progress:
        """The train progress the server reports in `result`."""

        def number(key: str) -> Any:
            value = self.result.get(key)
            return value if isinstance(value, int | float) and not isinstance(value, bool) else None

        epoch, max_epoch = number("epoch"), number("max_epoch")
        return Progress(
            epoch=int(epoch) if epoch is not None else None,
            max_epoch=int(max_epoch) if max_epoch is not None else None,
            key_metric=number("key_metric"),
            eta=number("eta"),
            message=self.message,
        )


@dataclass(frozen=True)
class Workspace:
    """A workspace (a bucket where job results go)."""

    id: str
    name: str
    cloud_type: str
    created_on: str | None = None
    last_modified: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Workspace:
        """Build from the API's JSON."""
        return cls(
            id=raw["id"], name=_get(raw, "name", ""), cloud_type=_get(raw, "cloud_type", ""),
            created_on=raw.get("created_on"), last_modified=raw.get("last_modified"), raw=raw,
        )  # fmt: skip


@dataclass(frozen=True)
class NextImage:
    """`nextimage`'s answer: an unlabeled image id and its metadata."""

    image: str
    meta: dict[str, Any]
    unlabeled: int | None = None
