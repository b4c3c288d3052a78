"""Experiments: validation of references, create/list/get/patch/delete rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from medcloud.bundles.overrides import check_overrides, check_params
from medcloud.datasets.orm import Dataset
from medcloud.db import get_owned
from medcloud.errors import Conflict, Invalid
from medcloud.experiments import catalogue
from medcloud.experiments.orm import Experiment
from medcloud.experiments.schemas import ExperimentCreate, ExperimentOut, ExperimentPatch
from medcloud.families.registry import family_of
from medcloud.workspaces.orm import Workspace


def job_ids(session: Session, experiment_id: str) -> list[str]:
    from medcloud.jobs.orm import Job

    query = select(Job.id).where(Job.experiment_id == experiment_id).order_by(Job.created_on)
    return list(session.scalars(query))


def to_out(row: Experiment, jobs: list[str] | None = None) -> ExperimentOut:
    """The API shape; `jobs` are the ids of the experiment's jobs when the caller loaded them."""
    return ExperimentOut.model_validate(row).model_copy(update={"jobs": jobs or []})


def _uuid(value: str, kind: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise Invalid(f"{kind} ID passed is not a valid UUID") from None


def check_datasets(session: Session, *, org: str, user_id: str, ids: list[str], arch: str) -> None:
    """Each referenced dataset exists, is the caller's and is of a type the experiment's family can use."""
    family = family_of(arch)
    for dataset_id in ids:
        row = session.get(Dataset, dataset_id)
        if row is None or row.org != org or row.user_id != user_id:
            raise Invalid(f"Dataset {dataset_id} does not exist.")
        family.check_dataset(dataset_id, row.type)


def check_model_params(model_params: Mapping[str, Any] | None, *, allow_expressions: bool) -> None:
    """What of `model_params` reaches the bundle's config is plain data; `Invalid` naming the key otherwise."""
    if not model_params:
        return
    if model_params.get("override") is not None:
        check_overrides(model_params["override"], "model_params.override", allow_expressions=allow_expressions)
    image_key = model_params.get("image_key")
    if isinstance(image_key, str):  # it becomes a key of the `dataset#data` item
        check_params({image_key: None}, "model_params.image_key", allow_expressions=allow_expressions)


def normalise(body: ExperimentCreate) -> ExperimentCreate:
    """Canonical UUIDs everywhere (400 for any that is not one)."""
    return body.model_copy(
        update={
            "train_datasets": [_uuid(d, "Dataset") for d in body.train_datasets],
            "eval_dataset": _uuid(body.eval_dataset, "Dataset") if body.eval_dataset else None,
            "inference_dataset": _uuid(body.inference_dataset, "Dataset") if body.inference_dataset else None,
            "base_experiment": [_uuid(b, "Experiment") for b in body.base_experiment],
            "workspace": _uuid(body.workspace, "Workspace") if body.workspace else None,
        }
    )


def check_references(session: Session, *, org: str, user_id: str, body: ExperimentCreate) -> Experiment | None:
    """Validate datasets, workspace and base experiments; return the caller's base experiment row, if any."""
    ids = [*body.train_datasets, *(d for d in (body.eval_dataset, body.inference_dataset) if d)]
    check_datasets(session, org=org, user_id=user_id, ids=ids, arch=body.network_arch)
    if body.workspace:
        ws = session.get(Workspace, body.workspace)
        if ws is None or ws.org != org or ws.user_id != user_id:
            raise Invalid(f"Workspace {body.workspace} does not exist.")
    base_row, public_base = None, False
    for base_id in body.base_experiment:
        public = catalogue.get_base(base_id)
        if public is not None:
            if public.network_arch != body.network_arch:
                raise Invalid(f"Base experiment {base_id} is {public.network_arch}, not {body.network_arch}.")
            public_base = True
            continue
        row = session.get(Experiment, base_id)
        if row is None or row.org != org or row.user_id != user_id:
            raise Invalid(f"Base experiment {base_id} does not exist.")
        if row.network_arch != body.network_arch and family_of(row.network_arch) is not family_of(body.network_arch):
            raise Invalid(f"Base experiment {base_id} is {row.network_arch}, not {body.network_arch}.")
        base_row = row
    family_of(body.network_arch).check_create(body, base_row=base_row, public_base=public_base)
    return base_row


def get_row(session: Session, *, org: str, user_id: str, experiment_id: str) -> Experiment:
    return get_owned(session, Experiment, experiment_id, org=org, user_id=user_id, kind="Experiment")


def list_rows(session: Session, *, org: str, user_id: str) -> list[Experiment]:
    return list(session.scalars(select(Experiment).where(Experiment.org == org, Experiment.user_id == user_id)))


def apply_patch(session: Session, *, row: Experiment, body: ExperimentPatch) -> bool:
    """Apply the patch; return True when real-time inference was just turned off."""
    if body.realtime_infer is True and not row.realtime_infer:
        raise Invalid("Can only change realtime_infer from True to False.")
    ids = [d for d in [*(body.train_datasets or []), body.eval_dataset, body.inference_dataset] if d]
    check_datasets(
        session, org=row.org, user_id=row.user_id, ids=[_uuid(d, "Dataset") for d in ids], arch=row.network_arch
    )
    for key in ("name", "description", "realtime_infer_request_timeout"):
        if getattr(body, key) is not None:
            setattr(row, key, getattr(body, key))
    for key in ("eval_dataset", "inference_dataset"):
        if getattr(body, key) is not None:
            setattr(row, key, _uuid(getattr(body, key), "Dataset"))
    if body.train_datasets is not None:
        row.train_datasets = [_uuid(d, "Dataset") for d in body.train_datasets]
    stopped = body.realtime_infer is False and row.realtime_infer
    if body.realtime_infer is False:
        row.realtime_infer = False
    session.flush()
    return stopped


def names_using_dataset(session: Session, *, dataset_id: str) -> list[str]:
    rows = session.scalars(select(Experiment))
    return [r.name for r in rows if dataset_id in (*r.train_datasets, r.eval_dataset, r.inference_dataset)]


def names_using_workspace(session: Session, *, workspace_id: str) -> list[str]:
    return [r.name for r in session.scalars(select(Experiment).where(Experiment.workspace == workspace_id))]


def delete_row(session: Session, *, row: Experiment, busy_jobs: int = 0) -> tuple[ExperimentOut, list[str]]:
    """Delete the experiment and its (finished) job rows; return its API shape and the deleted job ids."""
    from medcloud.jobs.orm import Job

    if busy_jobs:
        raise Conflict("Experiment in use")
    ids = job_ids(session, row.id)
    out = to_out(row, ids)
    session.execute(delete(Job).where(Job.experiment_id == row.id))
    session.delete(row)
    return out, ids


def folders_of(data_dir: Path, experiment_id: str, jobs: list[str], job_dir: Callable[[str], Path]) -> list[Path]:
    """What the experiment left on disk: its bundle folder, its model host's folder, its jobs' folders
    (`job_dir`: the job backend's folder of a job; annotation jobs keep theirs in the data folder)."""
    return [
        data_dir / "experiments" / experiment_id,
        data_dir / "hosts" / experiment_id,
        *(data_dir / "jobs" / job_id for job_id in jobs),
        *(job_dir(job_id) for job_id in jobs),
    ]
