"""Creating and cancelling the asynchronous experiment jobs (`train`, `annotation`, `batchinfer`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from medcloud import egress
from medcloud.bundles.overrides import check_params, check_train_specs
from medcloud.config import Settings
from medcloud.errors import Conflict, Invalid, NotFound
from medcloud.execution.kinds import kind_of
from medcloud.experiments.orm import Experiment
from medcloud.experiments.schemas import ExperimentJob
from medcloud.families.registry import family_of
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.jobs.states import TERMINAL, JobStatus
from medcloud.learning.annotation_specs import check_annotation_specs


def _check_train(experiment: Experiment, specs: dict[str, Any], where: str, *, allow_expressions: bool) -> None:
    check_train_specs(specs, where, allow_expressions=allow_expressions)
    if not experiment.train_datasets:
        raise Invalid("The experiment has no train_datasets to train on.")
    family_of(experiment.network_arch).check_train(experiment, specs)


def _check_annotation(
    session: Session, experiment: Experiment, specs: dict[str, Any], *, allow_expressions: bool
) -> None:
    if not experiment.eval_dataset or len(experiment.train_datasets) != 1:
        raise Invalid("An annotation job needs an eval_dataset and exactly one train dataset.")
    if jobs.active_for_experiment(session, experiment_id=experiment.id, action="annotation"):
        raise Conflict("The experiment already has a Pending or Running annotation job.")
    check_annotation_specs(specs, allow_expressions=allow_expressions)
    _check_train(experiment, specs.get("train_spec") or {}, "specs.train_spec", allow_expressions=allow_expressions)


def _check_batchinfer(session: Session, experiment: Experiment, specs: dict[str, Any]) -> None:
    if not (experiment.inference_dataset or experiment.train_datasets):
        raise Invalid("The experiment has no inference_dataset to run on.")
    train_job_id = specs.get("train_job_id")
    if train_job_id is not None:
        try:
            train_job_id = str(uuid.UUID(str(train_job_id)))
        except ValueError:
            raise Invalid("Job ID passed is not a valid UUID") from None
        train = session.get(Job, train_job_id)
        if train is None or train.experiment_id != experiment.id or train.action != "train" or train.status != "Done":
            raise Invalid(f"train_job_id {train_job_id} is not a finished train job of this experiment.")


def create_job(
    session: Session, *, experiment: Experiment, request: ExperimentJob, allow_expressions: bool = False
) -> Job:
    """Validate and create the job row (Pending); the caller wakes the runner or the hub.

    `allow_expressions` is the operator's `allow_expression_overrides`: off, MONAI expressions,
    references and components in the specs are refused before anything is stored.
    """
    specs = dict(request.specs)
    if request.action == "train":
        _check_train(experiment, specs, "specs", allow_expressions=allow_expressions)
    elif request.action == "annotation":
        _check_annotation(session, experiment, specs, allow_expressions=allow_expressions)
    else:
        check_params(specs.get("bundle_params") or {}, "specs.bundle_params", allow_expressions=allow_expressions)
        _check_batchinfer(session, experiment, specs)
    parent = request.parent_job_id
    if parent is not None:
        try:
            jobs.get_row(
                session,
                org=experiment.org,
                user_id=experiment.user_id,
                experiment_id=experiment.id,
                job_id=str(uuid.UUID(parent)),
            )
        except (ValueError, NotFound):
            raise Invalid(f"parent_job_id {parent} is not a job of this experiment.") from None
    return jobs.create(
        session,
        org=experiment.org,
        user_id=experiment.user_id,
        experiment_id=experiment.id,
        action=request.action.value,
        specs=specs,
        name=request.name or "",
        description=request.description or "",
        parent_id=parent,
    )


def begin_cancel(session: Session, row: Job) -> tuple[str, list[str]]:
    """Record the cancel; return the message and the ids of running processes to kill.

    Each write is conditional on the status it was decided from (`jobs.transition`); one that loses to
    the runner or the controller is decided again on the status that won.
    """
    to_kill: list[str] = []
    was = _cancel_one(session, row, to_kill)
    if was is None:
        return f"Job {row.id} already ended ({row.status}); nothing to cancel.", []
    # The parent's write holds its row until commit, so a controller cannot add a round's train job
    # unseen: the children listed now are all there will be.
    children = [j for j in jobs.list_for_experiment(session, experiment_id=row.experiment_id) if j.parent_id == row.id]
    for job in children:
        _cancel_one(session, job, to_kill)
    return f"{was} job {row.id} cancelled", to_kill


def _cancel_kills(action: str) -> bool:
    kind = kind_of(action)
    return kind is None or kind.cancel_kills


def _cancel_one(session: Session, job: Job, to_kill: list[str]) -> str | None:
    """Cancel one job; return the status it was canceled from, or None when it had already ended."""
    for _attempt in range(len(JobStatus)):  # each lost race moves the status forward, so this ends
        status = JobStatus(job.status)
        if status in TERMINAL:
            return None
        kills = _cancel_kills(job.action)
        if status == JobStatus.CANCELING and kills:
            to_kill.append(job.id)  # asked again: kill again, which also settles a cancel left half-done
            return status.value
        if status == JobStatus.PENDING or not kills:
            moved = jobs.transition(session, job, JobStatus.CANCELED, "Canceled by the user.")
        else:
            moved = jobs.transition(session, job, JobStatus.CANCELING, "Canceling.")
        if moved:
            if job.status == JobStatus.CANCELING:
                to_kill.append(job.id)
            return status.value
    return None


def check_egress(specs: dict[str, Any], settings: Settings) -> None:
    """An MLflow `tracking_uri` (of a train job, or an annotation's `train_spec`) is an http(s) URL the egress
    policy allows, and holds no credentials: job specs are returned to clients and stored in clear (MLflow
    reads credentials from MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN in the server's environment)."""
    for where, value in (("specs", specs), ("specs.train_spec", specs.get("train_spec"))):
        uri = value.get("tracking_uri") if isinstance(value, dict) else None
        if uri is None or uri == "":
            continue
        if not isinstance(uri, str):
            raise Invalid(f"Invalid Input. `{where}.tracking_uri` must be a string.")
        if egress.has_secrets(uri):
            raise Invalid(
                f"Invalid Input. `{where}.tracking_uri` may not hold credentials or a query: set them in the "
                "server's environment (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)."
            )
        egress.check_url(uri, egress.Policy.from_settings(settings), what="tracking_uri")
