"""Routes of `/experiments`, `/experiments:base` and the real-time `inference` action."""

from __future__ import annotations

import logging
import shutil

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from medcloud import egress
from medcloud.api import openapi
from medcloud.api.body import parse_body, validate
from medcloud.api.deps import Caller, CallerDep, CtxDep, checked_uuid
from medcloud.api.listing import apply_list_params
from medcloud.api.streaming import chunks
from medcloud.bundles.fetch import BundleError
from medcloud.bundles.overrides import check_params
from medcloud.context import Context
from medcloud.db import new_id
from medcloud.errors import Conflict, Invalid
from medcloud.experiments import catalogue, realtime, service
from medcloud.experiments.orm import Experiment
from medcloud.experiments.schemas import (
    AnnotationJob,
    BatchInferJob,
    ExperimentAction,
    ExperimentCreate,
    ExperimentJob,
    ExperimentOut,
    ExperimentPatch,
    InferenceJob,
    InferenceSpecs,
    TrainJob,
)
from medcloud.families.registry import family_of
from medcloud.inference.outputs import multipart_stream
from medcloud.jobs import service as jobs
from medcloud.learning import actions as learning
from medcloud.workspaces import storage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/orgs/{org}")
ExperimentList = openapi.list_model("ExperimentList", "experiments", ExperimentOut)
# `inference` answers its output files; the asynchronous actions answer the new job's id.
ACTION_OUT = {
    "application/json": {"type": "string", "format": "uuid", "description": "The id of the job created."},
    "multipart/form-data": {
        "type": "object",
        "description": "`inference`: one part per output file, named by its relative file name.",
        "additionalProperties": {"type": "string", "format": "binary"},
    },
}


@router.get("/experiments:base", openapi_extra=openapi.listing(), responses=openapi.ok(200, ExperimentList))
def list_base_experiments(request: Request, caller: CallerDep) -> dict:
    items = [b.model_dump(mode="json") for b in catalogue.base_experiments()]
    return apply_list_params(request, items, "experiments")


@router.get("/experiments", openapi_extra=openapi.listing(user_only=True), responses=openapi.ok(200, ExperimentList))
async def list_experiments(request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    def run() -> list[dict]:
        with ctx.db.session() as session:
            return [
                service.to_out(r, service.job_ids(session, r.id)).model_dump(mode="json")
                for r in service.list_rows(session, org=caller.org, user_id=caller.user_id)
            ]

    items = await ctx.pools.run("db", run)
    if request.query_params.get("user_only", "false").lower() != "true":
        items += [b.model_dump(mode="json") for b in catalogue.base_experiments()]
    return apply_list_params(request, items, "experiments")


async def _create(ctx: Context, caller: Caller, body: ExperimentCreate) -> dict:
    service.check_model_params(
        body.model_params.model_dump(), allow_expressions=ctx.settings.allow_expression_overrides
    )
    body = service.normalise(body)

    def check() -> Experiment | None:
        public, secret = storage.split_inline(body.cloud_details)  # before any download: a refusal is cheap
        if public.get("cloud_type"):
            storage.check_policy(public["cloud_type"], public, secret, ctx.settings, org=caller.org)
        with ctx.db.session() as session:
            return service.check_references(session, org=caller.org, user_id=caller.user_id, body=body)

    base_row = await ctx.pools.run("db", check)
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

        def insert() -> dict:
            with ctx.db.session() as session:
                session.add(row)
                session.flush()
                return service.to_out(row).model_dump(mode="json")

        return await ctx.pools.run("db", insert)
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


@router.post(
    "/experiments",
    status_code=201,
    openapi_extra=openapi.body(ExperimentCreate),
    responses=openapi.ok(201, ExperimentOut),
)
async def create_experiment(request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    body = await parse_body(request, ExperimentCreate)
    return JSONResponse(status_code=201, content=await _create(ctx, caller, body))


@router.get("/experiments/{experiment_id}", responses=openapi.ok(200, ExperimentOut))
async def get_experiment(experiment_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid = checked_uuid(experiment_id, "Experiment")
    base = catalogue.get_base(eid)
    if base is not None:
        return base.model_dump(mode="json")

    def run() -> dict:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid)
            return service.to_out(row, service.job_ids(session, eid)).model_dump(mode="json")

    return await ctx.pools.run("db", run)


@router.patch(
    "/experiments/{experiment_id}",
    openapi_extra=openapi.body(ExperimentPatch),
    responses=openapi.ok(200, ExperimentOut),
)
async def patch_experiment(experiment_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    eid = checked_uuid(experiment_id, "Experiment")
    body = await parse_body(request, ExperimentPatch)

    def run() -> tuple[dict, bool]:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid)
            service.check_model_params(body.model_params, allow_expressions=ctx.settings.allow_expression_overrides)
            stopped = service.apply_patch(session, row=row, body=body)
            return service.to_out(row, service.job_ids(session, eid)).model_dump(mode="json"), stopped

    out, stopped = await ctx.pools.run("db", run)
    if stopped:
        await ctx.hosts.stop(eid, retire=True)
    return out


@router.delete("/experiments/{experiment_id}", responses=openapi.ok(200, ExperimentOut))
async def delete_experiment(experiment_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    eid = checked_uuid(experiment_id, "Experiment")

    def check() -> None:
        with ctx.db.session() as session:
            service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid)
            if jobs.active_for_experiment(session, experiment_id=eid):
                raise Conflict("Experiment in use")

    await ctx.pools.run("db", check)
    await ctx.hosts.stop(eid, retire=True)

    def delete() -> tuple[dict, list[str]]:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid)
            busy = len(jobs.active_for_experiment(session, experiment_id=eid))  # one may have started meanwhile
            out, job_ids = service.delete_row(session, row=row, busy_jobs=busy)
            return out.model_dump(mode="json"), job_ids

    def remove(job_ids: list[str]) -> None:
        for folder in service.folders_of(ctx.settings.data_dir, eid, job_ids, ctx.jobs.job_dir):
            shutil.rmtree(folder, ignore_errors=True)

    try:
        out, job_ids = await ctx.pools.run("db", delete)
    except BaseException:
        ctx.hosts.revive(eid)  # still there: its next request starts the host again
        raise
    await ctx.pools.run("files", remove, job_ids)  # after the commit: the rows never name missing folders
    return out


@router.post(
    "/experiments/{experiment_id}/jobs",
    status_code=201,
    openapi_extra=openapi.body(InferenceJob, TrainJob, AnnotationJob, BatchInferJob, discriminator="action"),
    responses=openapi.ok(201, content=ACTION_OUT),
)
async def experiment_action(experiment_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> Response:
    eid = checked_uuid(experiment_id, "Experiment")
    job = await parse_body(request, ExperimentJob)

    def load() -> Experiment:
        with ctx.db.session() as session:
            return service.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=eid)

    row = await ctx.pools.run("db", load)
    if job.action == ExperimentAction.INFERENCE:
        return await _inference(ctx, row, job)

    def create() -> str:
        learning.check_egress(job.specs, ctx.settings)  # MLflow's tracking_uri
        with ctx.db.session() as session:
            return learning.create_job(
                session, experiment=row, request=job, allow_expressions=ctx.settings.allow_expression_overrides
            ).id

    job_id = await ctx.pools.run("db", create)
    if job.action == ExperimentAction.ANNOTATION:
        ctx.hub.launch(job_id)
    else:
        ctx.runner.wake()
    return JSONResponse(status_code=201, content=job_id)


async def _inference(ctx: Context, row: Experiment, job: ExperimentJob) -> Response:
    if "image" not in job.specs:
        raise Invalid("Invalid Input. Spec is missing `image`")
    specs = validate(InferenceSpecs, job.specs)
    allow = ctx.settings.allow_expression_overrides
    check_params(specs.bundle_params, "specs.bundle_params", allow_expressions=allow)
    service.check_model_params(row.model_params, allow_expressions=allow)  # a row stored before this check
    family_of(row.network_arch).check_prompts(dict(specs.bundle_params), (row.model_params or {}).get("labels") or {})
    if specs.dataset_id:
        specs = specs.model_copy(update={"dataset_id": checked_uuid(specs.dataset_id, "Dataset")})
    if not row.realtime_infer:
        raise Invalid(
            f"Error: real-time inference is off for experiment {row.id}; create an experiment with "
            "realtime_infer true to run inference."
        )
    image = await ctx.pools.run("storage", realtime.resolve_image, ctx, row=row, specs=specs)
    outputs = await ctx.hosts.infer(
        realtime.host_spec(row, ctx.settings),
        image=image,
        params=dict(specs.bundle_params),
        timeout=row.realtime_infer_request_timeout,
        start_timeout=ctx.settings.host_start_timeout_s,  # a host not running yet (a restart) loads first
    )

    # The output files stay on disk until sent: closing them and removing their folder is the stream's last step.
    def close() -> None:
        ctx.pools.executor("files").submit(outputs.close)

    try:
        if not outputs.files:
            raise Invalid("Error: the model produced no output file.")
        if outputs.inference is not None and outputs.inference != row.inference:
            await ctx.pools.run("db", realtime.record_inference, ctx, row.id, outputs.inference)
        encoder = multipart_stream(outputs.files)
        headers = {"Content-Type": encoder.content_type, "Content-Length": str(encoder.len)}
    except BaseException:
        close()
        raise
    return StreamingResponse(chunks(ctx.pools, encoder.read, close=close), status_code=201, headers=headers)
