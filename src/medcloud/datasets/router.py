"""Routes of `/datasets` and `/datasets/{id}/jobs` (the synchronous dataset actions)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from medcloud.api import openapi
from medcloud.api.body import parse_body
from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.api.listing import apply_list_params
from medcloud.datasets import actions, service
from medcloud.datasets.orm import Dataset
from medcloud.datasets.schemas import (
    CacheImageJob,
    DatasetAction,
    DatasetCreate,
    DatasetJob,
    DatasetOut,
    DatasetPatch,
    NextImageJob,
    NextImageOut,
    NotifyJob,
)
from medcloud.errors import Invalid
from medcloud.experiments import service as experiments

router = APIRouter(prefix="/api/v1/orgs/{org}/datasets")
DatasetList = openapi.list_model("DatasetList", "datasets", DatasetOut)
# nextimage answers an image; cacheimage and notify answer `{}`.
ACTION_OUT = {"anyOf": [openapi.ref(NextImageOut), {"type": "object", "maxProperties": 0}]}


@router.post("", status_code=201, openapi_extra=openapi.body(DatasetCreate), responses=openapi.ok(201, DatasetOut))
async def create_dataset(request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    body = await parse_body(request, DatasetCreate)

    body = body.model_copy(update={"client_url": body.client_url.strip()})
    if service.is_local(body.client_url) and not ctx.settings.dataset_allow_local_paths:
        raise Invalid("Datasets on this server's own folders are not allowed (MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS).")

    def run() -> dict:
        service.check_egress(
            client_url=body.client_url,
            client_id=body.client_id,
            client_secret=body.client_secret,
            filters=body.filters,
            settings=ctx.settings,
        )
        kind, _source = service.open_source(
            client_url=body.client_url,
            client_id=body.client_id,
            client_secret=body.client_secret,
            filters=body.filters,
            verify=True,
        )
        with ctx.db.session() as session:
            out = service.create(session, org=caller.org, user_id=caller.user_id, body=body, kind=kind, box=ctx.box)
            return out.model_dump(mode="json")

    return JSONResponse(status_code=201, content=await ctx.pools.run("storage", run))


@router.get("", openapi_extra=openapi.listing(), responses=openapi.ok(200, DatasetList))
async def list_datasets(request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    def run() -> list[dict]:
        with ctx.db.session() as session:
            rows = service.list_all(session, org=caller.org, user_id=caller.user_id)
            return [d.model_dump(mode="json") for d in rows]

    return apply_list_params(request, await ctx.pools.run("db", run), "datasets")


@router.get("/{dataset_id}", responses=openapi.ok(200, DatasetOut))
async def get_dataset(dataset_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    did = checked_uuid(dataset_id, "Dataset")

    def run() -> dict:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, dataset_id=did)
            return service.to_out(row).model_dump(mode="json")

    return await ctx.pools.run("db", run)


@router.patch("/{dataset_id}", openapi_extra=openapi.body(DatasetPatch), responses=openapi.ok(200, DatasetOut))
async def patch_dataset(dataset_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    did = checked_uuid(dataset_id, "Dataset")
    body = await parse_body(request, DatasetPatch)

    def run() -> dict:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, dataset_id=did)
            return service.patch(session, row=row, body=body).model_dump(mode="json")

    return await ctx.pools.run("db", run)


@router.delete("/{dataset_id}", responses=openapi.ok(200, DatasetOut))
async def delete_dataset(dataset_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    did = checked_uuid(dataset_id, "Dataset")

    def run() -> dict:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, dataset_id=did)
            out = service.delete(session, row=row, users=experiments.names_using_dataset(session, dataset_id=did))
        ctx.cache.drop_dataset(did)
        return out.model_dump(mode="json")

    return await ctx.pools.run("db", run)


@router.post(
    "/{dataset_id}/jobs",
    status_code=201,
    openapi_extra=openapi.body(NextImageJob, CacheImageJob, NotifyJob, discriminator="action"),
    responses=openapi.ok(201, content={"application/json": ACTION_OUT}),
)
async def dataset_action(dataset_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    did = checked_uuid(dataset_id, "Dataset")
    job = await parse_body(request, DatasetJob)

    owner = {"org": caller.org, "user_id": caller.user_id, "dataset_id": did}

    def owned() -> Dataset:
        with ctx.db.session() as session:
            return service.get_row(session, **owner)

    def notify() -> dict:
        with ctx.db.session() as session:
            return actions.notify(ctx, session=session, row=service.get_row(session, **owner), specs=job.specs)

    if job.action == DatasetAction.NOTIFY:
        content = await ctx.pools.run("db", notify)
    else:
        # Ownership first, in the DB pool; then the storage reads, holding no DB connection while they wait.
        row = await ctx.pools.run("db", owned)
        if job.action == DatasetAction.CACHEIMAGE:
            content = await ctx.pools.run("storage", actions.cacheimage, ctx, row=row, specs=job.specs)
        else:
            pick = partial(service.pick_least_recently_served, ctx.db, dataset_id=did)
            content = await ctx.pools.run("storage", actions.nextimage, ctx, row=row, pick=pick)
    if job.action == DatasetAction.NOTIFY and ctx.hub is not None:
        ctx.hub.dataset_changed(did)  # committed: wake the annotation controllers at once
    return JSONResponse(status_code=201, content=content)
