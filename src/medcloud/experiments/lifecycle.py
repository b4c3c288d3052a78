"""An experiment's life as the API serves it: list, read, create, patch, delete, real-time inference, new jobs.

The routes only parse and respond; this owns the rows (one DB session per step, in the `db` pool), the
experiment's folder, its model host (started with it, stopped with it) and the sealing of secrets.
"""

from __future__ import annotations

import logging
import shutil

from sqlalchemy.orm import Session

from medcloud import egress
from medcloud.api.body import validate
from medcloud.api.deps import Caller, checked_uuid
from medcloud.bundles.fetch import BundleError
from medcloud.bundles.overrides import check_params
from medcloud.context import Context
from medcloud.datasets.orm import Dataset
from medcloud.db import new_id
from medcloud.errors import Conflict, Invalid
from medcloud.experiments import catalogue, realtime, service
from medcloud.experiments.orm import Experiment
from medcloud.experiments.schemas import (
    ExperimentAction,
    ExperimentCreate,
    ExperimentJob,
    ExperimentPatch,
    InferenceSpecs,
)
from medcloud.families.registry import family_of
from medcloud.inference.hosts import Outputs
from medcloud.jobs import service as jobs
from medcloud.learning import actions as learning
from medcloud.workspaces import storage

log = logging.getLogger(__name__)


def _owned(session: Session, caller: Caller, experiment_id: str) -> Experiment:
    return service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=experiment_id)


def _as_json(session: Session, row: Experiment) -> dict:
    return service.to_out(row, service.job_ids(session, row.id)).model_dump(mode="json")


async def list_experiments(ctx: Context, caller: Caller, *, user_only: bool) -> list[dict]:
    """The caller's experiments, then (unless `user_only`) the catalogue's base experiments."""
    own = await ctx.in_session(
        lambda session: [
            _as_json(session, r) for r in service.list_rows(session, org=caller.org, user_id=caller.user_id)
        ]
    )
    return own if user_only else own + [b.model_dump(mode="json") for b in catalogue.base_experiments()]


async def get_experiment(ctx: Context, caller: Caller, experiment_id: str) -> dict:
    base = catalogue.get_base(experiment_id)
    if base is not None:
        return base.model_dump(mode="json")
    return await ctx.in_session(lambda session: _as_json(session, _owned(session, caller, experiment_id)))


async def create(ctx: Context, caller: Caller, body: ExperimentCreate) -> dict:
    """Check the body, put the model in the experiment's folder, start its host when real-time, then insert
    the row; on any failure (or a cancelled request) the host is stopped and the folder removed."""
    service.check_model_params(
        body.model_params.model_dump(), allow_expressions=ctx.settings.allow_expression_overrides
    )
    body = service.normalise(body)

    def check(session: Session) -> Experiment | None:
        public, secret = storage.split_inline(body.cloud_details)  # before any download: a refusal is cheap
        if public.get("cloud_type"):
            storage.check_policy(public["cloud_type"], public, secret, ctx.settings, org=caller.org)
        return service.check_references(session, org=caller.org, user_id=caller.user_id, body=body)

    base_row = await ctx.in_session(check)
    exp_id = new_id()
    exp_dir = ctx.settings.data_dir / "experiments" / exp_id
    row = Experiment(
        id=exp_id,
        org=caller.org,
        user_id=caller.user_id,
        name=body.name,
        description=body.description,
        network_arch=str(body.network_arch),
        base_experiment=body.base_experiment,
        train_datasets=body.train_datasets,
        eval_dataset=body.eval_dataset,
        inference_dataset=body.inference_dataset,
        realtime_infer=body.realtime_infer,
        realtime_infer_request_timeout=body.realtime_infer_request_timeout,
        bundle_url=egress.redact_url(body.bundle_url) if body.bundle_url else None,  # whole only sealed
        workspace=body.workspace,
    )
    try:
        # The bundle pool has a deadline: a download that hangs answers 503 instead of holding the request;
        # what it writes once it ends is removed then.
        bundle_dir, labels = await ctx.pools.run_abandoning(
            "bundle",
            lambda: shutil.rmtree(exp_dir, True),
            realtime.prepare_model,
            ctx,
            body=body,
            base_row=base_row,
            exp_dir=exp_dir,
        )
        row.bundle_dir = bundle_dir
        row.model_params = {**body.model_params.model_dump(exclude_none=True), "labels": labels}
        _seal_cloud_details(ctx, row, body)
        if body.realtime_infer:
            # Loading a model may take far longer than answering one request.
            await ctx.hosts.start(realtime.host_spec(row, ctx.settings), timeout=ctx.settings.host_start_timeout_s)

        def insert(session: Session) -> dict:
            session.add(row)
            session.flush()
            return service.to_out(row).model_dump(mode="json")

        return await ctx.in_session(insert)
    except BaseException as exc:
        if isinstance(exc, BundleError):
            log.warning("Bundle %s rejected: %s", egress.redact_url(body.bundle_url or ""), exc.detail)
        await ctx.hosts.stop(exp_id)
        await ctx.pools.run("files", shutil.rmtree, exp_dir, True)
        raise


def _seal_cloud_details(ctx: Context, row: Experiment, body: ExperimentCreate) -> None:
    """Inline storage of older clients: known non-secret keys in clear, everything else sealed (with a
    `bundle_url` that holds a secret, whose redacted form is the row's)."""
    public, secret = storage.split_inline(body.cloud_details)
    if body.bundle_url and egress.has_secrets(body.bundle_url):
        secret["bundle_url"] = body.bundle_url
    row.cloud_details = public
    row.sealed_cloud_secrets = ctx.box.seal(secret)


async def patch(ctx: Context, caller: Caller, experiment_id: str, body: ExperimentPatch) -> dict:
    """Apply the patch; turning real-time inference off stops (and retires) the model host."""

    def apply(session: Session) -> tuple[dict, bool]:
        row = _owned(session, caller, experiment_id)
        service.check_model_params(body.model_params, allow_expressions=ctx.settings.allow_expression_overrides)
        stopped = service.apply_patch(session, row=row, body=body)
        return _as_json(session, row), stopped

    out, stopped = await ctx.in_session(apply)
    if stopped:
        await ctx.hosts.stop(experiment_id, retire=True)
    return out


async def delete(ctx: Context, caller: Caller, experiment_id: str) -> dict:
    """Delete an experiment with no active job (409 otherwise): its host, its row and jobs', then its folders."""

    def check(session: Session) -> None:
        _owned(session, caller, experiment_id)
        if jobs.active_for_experiment(session, experiment_id=experiment_id):
            raise Conflict("Experiment in use")

    def delete_rows(session: Session) -> tuple[dict, list[str]]:
        row = _owned(session, caller, experiment_id)
        busy = len(jobs.active_for_experiment(session, experiment_id=experiment_id))  # one may have started since
        out, job_ids = service.delete_row(session, row=row, busy_jobs=busy)
        return out.model_dump(mode="json"), job_ids

    def remove(job_ids: list[str]) -> None:
        for folder in service.folders_of(ctx.settings.data_dir, experiment_id, job_ids, ctx.jobs.job_dir):
            shutil.rmtree(folder, ignore_errors=True)

    await ctx.in_session(check)
    await ctx.hosts.stop(experiment_id, retire=True)
    try:
        out, job_ids = await ctx.in_session(delete_rows)
    except BaseException:
        ctx.hosts.revive(experiment_id)  # still there: its next request starts the host again
        raise
    await ctx.pools.run("files", remove, job_ids)  # after the commit: the rows never name missing folders
    return out


async def start_job(ctx: Context, caller: Caller, experiment_id: str, job: ExperimentJob) -> str:
    """Create a train, batch or annotation job (its specs checked) and wake whoever runs it; its id."""

    def create_job(session: Session) -> str:
        row = _owned(session, caller, experiment_id)
        learning.check_egress(job.specs, ctx.settings)  # MLflow's tracking_uri
        allow = ctx.settings.allow_expression_overrides
        return learning.create_job(session, experiment=row, request=job, allow_expressions=allow).id

    job_id = await ctx.in_session(create_job)
    if job.action == ExperimentAction.ANNOTATION:
        ctx.events.annotation_created(job_id)
    else:
        ctx.events.job_created()
    return job_id


def _inference_specs(ctx: Context, row: Experiment, raw: dict) -> InferenceSpecs:
    """The request's specs, checked once: the image, the bundle parameters (no expressions), the prompts."""
    if "image" not in raw:
        raise Invalid("Invalid Input. Spec is missing `image`")
    specs = validate(InferenceSpecs, raw)
    allow = ctx.settings.allow_expression_overrides
    check_params(specs.bundle_params, "specs.bundle_params", allow_expressions=allow)
    service.check_model_params(row.model_params, allow_expressions=allow)  # a row stored before this check
    family_of(row.network_arch).check_prompts(dict(specs.bundle_params), (row.model_params or {}).get("labels") or {})
    if specs.dataset_id:
        specs = specs.model_copy(update={"dataset_id": checked_uuid(specs.dataset_id, "Dataset")})
    return specs


async def infer(ctx: Context, caller: Caller, experiment_id: str, raw_specs: dict) -> Outputs:
    """Real-time inference: the output files, open (the caller streams them, then calls `close()`).

    One DB session reads the experiment (real-time inference on, checked first) and the image's dataset; the
    image cache is looked up once; the model host answers (started first when it is not running).
    """

    def load(session: Session) -> tuple[Experiment, InferenceSpecs, Dataset | None]:
        row = _owned(session, caller, experiment_id)
        if not row.realtime_infer:
            raise Invalid(
                f"Error: real-time inference is off for experiment {row.id}; create an experiment with "
                "realtime_infer true to run inference."
            )
        specs = _inference_specs(ctx, row, raw_specs)
        return row, specs, realtime.inference_dataset(session, row, specs)

    row, specs, dataset = await ctx.in_session(load)
    image = await ctx.pools.run("storage", realtime.resolve_image, ctx, row=row, specs=specs, dataset=dataset)
    outputs = await ctx.hosts.infer(
        realtime.host_spec(row, ctx.settings),
        image=image,
        params=dict(specs.bundle_params),
        timeout=row.realtime_infer_request_timeout,
        start_timeout=ctx.settings.host_start_timeout_s,  # a host not running yet (a restart) loads first
    )
    try:
        if not outputs.files:
            raise Invalid("Error: the model produced no output file.")
        if outputs.inference is not None and outputs.inference != row.inference:
            await ctx.pools.run("db", realtime.record_inference, ctx, row.id, outputs.inference)
    except BaseException:
        await ctx.pools.run("files", outputs.close)
        raise
    return outputs
