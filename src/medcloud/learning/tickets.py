"""The trusted half of a job, on the API side: turn a job row into a `JobTicket` (data, no database).

Only the scheduler calls this. It opens the sealed credentials of the datasets and the workspace the
job uses — those and nothing else go into the ticket — and names the bundle and checkpoint as the
worker's node sees them (`execution.shared`: copied into the Ray shared folder on that backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from medcloud.context import Context
from medcloud.datasets.orm import Dataset, Notification
from medcloud.datasets.service import address_of
from medcloud.errors import Invalid
from medcloud.execution.shared import node_path
from medcloud.experiments.orm import Experiment
from medcloud.experiments.realtime import host_spec
from medcloud.jobs import files
from medcloud.jobs.orm import Job
from medcloud.jobs.ticket import DatasetInput, JobTicket, ResultsTarget
from medcloud.sources.kinds import DICOMWEB
from medcloud.workspaces.orm import Workspace

# The settings a worker runs with: how model code is sandboxed and what client URLs may reach.
WORKER_SETTINGS = (
    "model_sandbox",
    "sandbox_uid_base",
    "sandbox_env_passthrough",
    "sandbox_memory_bytes",
    "sandbox_max_processes",
    "sandbox_cpu_seconds",
    "sandbox_cpus",
    "sandbox_file_bytes",
    "sandbox_max_open_files",
    "sandbox_tmp_bytes",
    "sandbox_job_wall_s",
    "sandbox_readable_paths",
    "host_python",
    "allow_expression_overrides",
    "egress_allow_private",
    "egress_allowed_networks",
    "egress_max_bytes",
    "egress_deadline_s",
    "dataset_allow_local_paths",
    "max_voxels",
    "wado_max_bytes",
    "aws_endpoint_url",
    "azure_blob_endpoint",
    "gcs_endpoint",
)


def dataset_input(ctx: Context, session: Any, dataset_id: str | None, *, with_notified: bool) -> DatasetInput | None:
    row = session.get(Dataset, dataset_id) if dataset_id else None
    if row is None:
        return None
    address = address_of(row, ctx.box)
    notified: dict[str, list[str]] = {}
    if with_notified and address.kind == DICOMWEB:
        query = (
            select(Notification.image_id, Notification.label_id)
            .where(Notification.dataset_id == row.id, Notification.section.in_(["added", "updated"]))
            .order_by(Notification.seq.desc())
        )
        for image_id, label_id in session.execute(query):
            if label_id:
                notified.setdefault(image_id, []).append(label_id)
    return DatasetInput(
        dataset_id=row.id,
        source_kind=address.kind,
        client_url=address.client_url,
        client_id=address.client_id,
        client_secret=address.client_secret,
        filters=address.filters,
        notified_labels=notified,
    )


def _results_target(ctx: Context, session: Any, experiment: Experiment) -> ResultsTarget | None:
    """The experiment's workspace (or inline storage) and the folder layout the server's settings choose."""
    where = {"layout": ctx.settings.results_layout, "org": experiment.org, "user_id": experiment.user_id}
    if experiment.workspace:
        row = session.get(Workspace, experiment.workspace)
        if row is None:
            return None
        return ResultsTarget(row.cloud_type, dict(row.details), ctx.box.open(row.sealed_secrets), **where)
    details = experiment.cloud_details or {}
    if details.get("cloud_type") and details.get("cloud_bucket_name"):
        secrets = ctx.box.open(experiment.sealed_cloud_secrets)
        return ResultsTarget(details["cloud_type"], dict(details), secrets, **where)
    return None


def _weights(ctx: Context, session: Any, job: Job, job_dir_of: Any) -> str | None:
    train_job_id = job.specs.get("train_job_id")
    if not train_job_id:
        return None
    train = session.get(Job, str(train_job_id))
    path = Path(job_dir_of(str(train_job_id))) / files.RESULTS / "models" / "model.pt"
    if train is None or train.experiment_id != job.experiment_id or not path.exists():
        raise Invalid(f"Train job {train_job_id} has no checkpoint to run.")
    return str(node_path(ctx.settings, path, kind="checkpoints", key=str(train_job_id)))


def build_ticket(ctx: Context, session: Any, job: Job, *, job_dir_of: Any, cache_dir: Path) -> JobTicket:
    """Everything the job's worker needs, read in the caller's session (blocking: call from a thread)."""
    experiment = session.get(Experiment, job.experiment_id) if job.experiment_id else None
    if experiment is None:
        raise Invalid("The job's experiment is gone.")
    params = experiment.model_params or {}
    bundle = node_path(ctx.settings, Path(experiment.bundle_dir), kind="experiments", key=experiment.id)
    host = vars(host_spec(experiment, ctx.settings)) | {"bundle_dir": str(bundle)}
    ticket = JobTicket(
        job_id=job.id,
        action=job.action,
        experiment_id=experiment.id,
        network_arch=experiment.network_arch,
        bundle_dir=str(bundle),
        specs=dict(job.specs),
        labels=params.get("labels") or {},
        host=host,
        results=_results_target(ctx, session, experiment),
        cache_dir=str(cache_dir),
        settings={name: getattr(ctx.settings, name) for name in WORKER_SETTINGS},
    )
    if job.action == "train":
        train_id = experiment.train_datasets[0] if experiment.train_datasets else None
        ticket.train = dataset_input(ctx, session, train_id, with_notified=True)
        if ticket.train is None:
            raise Invalid("The experiment's train dataset is gone.")
        ticket.validation = dataset_input(ctx, session, experiment.eval_dataset, with_notified=True)
    elif job.action == "batchinfer":
        dataset_id = experiment.inference_dataset or (experiment.train_datasets or [None])[0]
        ticket.inference = dataset_input(ctx, session, dataset_id, with_notified=False)
        if ticket.inference is None:
            raise Invalid("The experiment has no inference_dataset to run on.")
        ticket.weights = _weights(ctx, session, job, job_dir_of)
    else:
        raise Invalid(f"Job action {job.action!r} does not run in a worker.")
    return ticket
