"""Routes of `/experiments`, `/experiments:base` and the experiment actions (`experiments/lifecycle.py`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from medcloud.api import openapi
from medcloud.api.body import parse_body
from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.api.listing import apply_list_params
from medcloud.api.streaming import chunks
from medcloud.experiments import catalogue, lifecycle
from medcloud.experiments.schemas import (
    AnnotationJob,
    BatchInferJob,
    ExperimentAction,
    ExperimentCreate,
    ExperimentJob,
    ExperimentOut,
    ExperimentPatch,
    InferenceJob,
    TrainJob,
)
from medcloud.inference.outputs import multipart_stream

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
    user_only = request.query_params.get("user_only", "false").lower() == "true"
    return apply_list_params(request, await lifecycle.list_experiments(ctx, caller, user_only=user_only), "experiments")


@router.post(
    "/experiments",
    status_code=201,
    openapi_extra=openapi.body(ExperimentCreate),
    responses=openapi.ok(201, ExperimentOut),
)
async def create_experiment(request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    body = await parse_body(request, ExperimentCreate)
    return JSONResponse(status_code=201, content=await lifecycle.create(ctx, caller, body))


@router.get("/experiments/{experiment_id}", responses=openapi.ok(200, ExperimentOut))
async def get_experiment(experiment_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    return await lifecycle.get_experiment(ctx, caller, checked_uuid(experiment_id, "Experiment"))


@router.patch(
    "/experiments/{experiment_id}",
    openapi_extra=openapi.body(ExperimentPatch),
    responses=openapi.ok(200, ExperimentOut),
)
async def patch_experiment(experiment_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    eid = checked_uuid(experiment_id, "Experiment")
    return await lifecycle.patch(ctx, caller, eid, await parse_body(request, ExperimentPatch))


@router.delete("/experiments/{experiment_id}", responses=openapi.ok(200, ExperimentOut))
async def delete_experiment(experiment_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    return await lifecycle.delete(ctx, caller, checked_uuid(experiment_id, "Experiment"))


@router.post(
    "/experiments/{experiment_id}/jobs",
    status_code=201,
    openapi_extra=openapi.body(InferenceJob, TrainJob, AnnotationJob, BatchInferJob, discriminator="action"),
    responses=openapi.ok(201, content=ACTION_OUT),
)
async def experiment_action(experiment_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> Response:
    eid = checked_uuid(experiment_id, "Experiment")
    job = await parse_body(request, ExperimentJob)
    if job.action != ExperimentAction.INFERENCE:
        return JSONResponse(status_code=201, content=await lifecycle.start_job(ctx, caller, eid, job))
    outputs = await lifecycle.infer(ctx, caller, eid, job.specs)

    # The output files stay on disk until sent: closing them and removing their folder is the stream's last step.
    def close() -> None:
        ctx.pools.executor("files").submit(outputs.close)

    try:
        encoder = multipart_stream(outputs.files)
        headers = {"Content-Type": encoder.content_type, "Content-Length": str(encoder.len)}
    except BaseException:
        close()
        raise
    return StreamingResponse(chunks(ctx.pools, encoder.read, close=close), status_code=201, headers=headers)
