"""Routes of `/datasets` and `/datasets/{id}/jobs` (the synchronous dataset actions)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import partial

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from medcloud.api import openapi
from medcloud.api.body import parse_body
from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.api.listing import apply_list_params
from medcloud.datasets import actions, label_locks, labels, service, volumes
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
    SavedLabelOut,
)
from medcloud.errors import Invalid
from medcloud.experiments import service as experiments
from medcloud.sources import kinds

router = APIRouter(prefix="/api/v1/orgs/{org}/datasets")
DatasetList = openapi.list_model("DatasetList", "datasets", DatasetOut)
# nextimage answers an image; cacheimage and notify answer `{}`.
ACTION_OUT = {"anyOf": [openapi.ref(NextImageOut), {"type": "object", "maxProperties": 0}]}
# The viewer's routes (docs/api.md, "medcloud's additions for the viewer"); saving a label has its own body cap.
LABEL_PATH = re.compile(r"/api/v1/orgs/[^/]+/datasets/[^/]+/images/[^/]+/label")
NRRD_OUT = {"application/octet-stream": {"type": "string", "format": "binary", "description": "Raw NRRD."}}
EXPERIMENT_PARAM = {
    "name": "experiment_id",
    "in": "query",
    "schema": {"type": "string", "format": "uuid"},
    "description": "The experiment whose `model_params.labels` name the label values (required for DICOMweb).",
}
LABEL_BODY = {
    "requestBody": {
        "required": True,
        "description": "An NRRD (raw or gzip) of a 3-D uint8 label volume on the image's grid "
        "(int8, uint16, int16 accepted with values 0..255); capped by MEDCLOUD_MAX_LABEL_BODY_BYTES.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("", status_code=201, openapi_extra=openapi.body(DatasetCreate), responses=openapi.ok(201, DatasetOut))
async def create_dataset(request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    body = await parse_body(request, DatasetCreate)

    body = body.model_copy(update={"client_url": body.client_url.strip()})

    def run() -> dict:
        # local folders: only inside the org's roots, links resolved (reads the disk: here, in the pool)
        service.check_local(body.client_url, org=caller.org, settings=ctx.settings)
        address = kinds.SourceAddress(
            kind=kinds.kind_for_new(body.client_url, body.filters),  # chosen once, stored with the row
            client_url=body.client_url,
            client_id=body.client_id,
            client_secret=body.client_secret,
            filters=body.filters,
        )
        kinds.check_egress(address, ctx.settings)
        kinds.open_source(address, verify=True)
        with ctx.db.session() as session:  # in the storage pool: the checks above read the disk and the network
            out = service.create(
                session, org=caller.org, user_id=caller.user_id, body=body, kind=address.kind, box=ctx.box
            )
            return out.model_dump(mode="json")

    return JSONResponse(status_code=201, content=await ctx.pools.run("storage", run))


@router.get("", openapi_extra=openapi.listing(), responses=openapi.ok(200, DatasetList))
async def list_datasets(request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    def listing(session: Session) -> list[dict]:
        return [d.model_dump(mode="json") for d in service.list_all(session, org=caller.org, user_id=caller.user_id)]

    return apply_list_params(request, await ctx.in_session(listing), "datasets")


@router.get("/{dataset_id}", responses=openapi.ok(200, DatasetOut))
async def get_dataset(dataset_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    did = checked_uuid(dataset_id, "Dataset")

    def get(session: Session) -> dict:
        return service.to_out(_owned(session, caller, did)).model_dump(mode="json")

    return await ctx.in_session(get)


@router.patch("/{dataset_id}", openapi_extra=openapi.body(DatasetPatch), responses=openapi.ok(200, DatasetOut))
async def patch_dataset(dataset_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    did = checked_uuid(dataset_id, "Dataset")
    body = await parse_body(request, DatasetPatch)

    def patch(session: Session) -> dict:
        return service.patch(session, row=_owned(session, caller, did), body=body).model_dump(mode="json")

    return await ctx.in_session(patch)


@router.delete("/{dataset_id}", responses=openapi.ok(200, DatasetOut))
async def delete_dataset(dataset_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    did = checked_uuid(dataset_id, "Dataset")

    def delete(session: Session) -> dict:
        users = experiments.names_using_dataset(session, dataset_id=did)
        return service.delete(session, row=_owned(session, caller, did), users=users).model_dump(mode="json")

    out = await ctx.in_session(delete)
    await ctx.pools.run("files", ctx.cache.drop_dataset, did)
    return out


@router.post(
    "/{dataset_id}/jobs",
    status_code=201,
    openapi_extra=openapi.body(NextImageJob, CacheImageJob, NotifyJob, discriminator="action"),
    responses=openapi.ok(201, content={"application/json": ACTION_OUT}),
)
async def dataset_action(dataset_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    did = checked_uuid(dataset_id, "Dataset")
    job = await parse_body(request, DatasetJob)

    def notify(session: Session) -> dict:
        return actions.notify(ctx, session=session, row=_owned(session, caller, did), specs=job.specs)

    if job.action == DatasetAction.NOTIFY:
        content = await ctx.in_session(notify)
    else:
        # Ownership first, in the DB pool; then the storage reads, holding no DB connection while they wait.
        row = await ctx.in_session(lambda session: _owned(session, caller, did))
        if job.action == DatasetAction.CACHEIMAGE:
            content = await ctx.pools.run("storage", actions.cacheimage, ctx, row=row, specs=job.specs)
        else:
            pick = partial(service.pick_least_recently_served, ctx.db, dataset_id=did)
            content = await ctx.pools.run("storage", actions.nextimage, ctx, row=row, pick=pick)
    if job.action == DatasetAction.NOTIFY:
        ctx.events.dataset_notified(did)  # committed: wake the annotation controllers at once
    return JSONResponse(status_code=201, content=content)


async def _nrrd_response(body: volumes.NrrdBody) -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        for chunk in body.chunks():  # slices of a buffer already in memory: nothing here blocks
            yield chunk

    headers = {"Content-Length": str(body.length), "Cache-Control": "no-store"}
    return StreamingResponse(stream(), media_type="application/octet-stream", headers=headers)


def _owned_with_labels(
    session: Session, caller: CallerDep, *, dataset_id: str, experiment_id: str | None
) -> tuple[Dataset, dict[str, str] | None]:
    """The caller's dataset and, when an experiment is named, the caller's experiment's labels (404 if not theirs)."""
    row = _owned(session, caller, dataset_id)
    if experiment_id is None:
        if row.source_kind == "dicomweb":
            raise Invalid(
                "Invalid Input. `experiment_id` is required for a DICOMweb dataset: the experiment's "
                "model_params.labels name the DICOM SEG's segments."
            )
        return row, None
    exp = experiments.get_row(session, org=caller.org, user_id=caller.user_id, experiment_id=experiment_id)
    return row, {str(k): str(v) for k, v in ((exp.model_params or {}).get("labels") or {}).items()}


def _owned(session: Session, caller: CallerDep, dataset_id: str) -> Dataset:
    return service.get_row(session, org=caller.org, user_id=caller.user_id, dataset_id=dataset_id)


def _experiment_id(request: Request) -> str | None:
    value = request.query_params.get("experiment_id")
    return None if value is None or value == "" else checked_uuid(value, "Experiment")


@router.get("/{dataset_id}/images/{image_id}/volume", responses=openapi.ok(200, content=NRRD_OUT))
async def image_volume(dataset_id: str, image_id: str, caller: CallerDep, ctx: CtxDep) -> StreamingResponse:
    """The image as raw NRRD: the header and voxel order of the segmentation outputs; int16 or float32."""
    did = checked_uuid(dataset_id, "Dataset")
    row = await ctx.in_session(lambda session: _owned(session, caller, did))
    files, _source = await ctx.pools.run("storage", volumes.image_files, ctx, row, image_id)

    def convert() -> volumes.NrrdBody:
        volume = volumes.load_volume(files, image_id, max_voxels=ctx.settings.max_voxels)
        return volumes.nrrd_body(volume.array, volume.affine, volumes.wire_dtype(volume.array))

    return await _nrrd_response(await ctx.pools.run("files", convert))


@router.get(
    "/{dataset_id}/images/{image_id}/label",
    responses=openapi.ok(200, content=NRRD_OUT),
    openapi_extra={"parameters": [EXPERIMENT_PARAM]},
)
async def image_label(
    dataset_id: str, image_id: str, request: Request, caller: CallerDep, ctx: CtxDep
) -> StreamingResponse:
    """The image's current label as raw uint8 NRRD on the image's grid; 404 when it has none."""
    did = checked_uuid(dataset_id, "Dataset")
    eid = _experiment_id(request)
    row, names = await ctx.in_session(partial(_owned_with_labels, caller=caller, dataset_id=did, experiment_id=eid))
    body = await ctx.pools.run("storage", volumes.label_nrrd, ctx, row, image_id, names)
    return await _nrrd_response(body)


@router.put(
    "/{dataset_id}/images/{image_id}/label",
    status_code=201,
    responses=openapi.ok(201, SavedLabelOut),
    openapi_extra={"parameters": [EXPERIMENT_PARAM], **LABEL_BODY},
)
async def save_image_label(
    dataset_id: str, image_id: str, request: Request, caller: CallerDep, ctx: CtxDep
) -> JSONResponse:
    """Store a label volume (NRRD body) as the image's label, then record it as `notify` does.

    At most `MEDCLOUD_MAX_LABEL_SAVES` run at once in this process (503 with Retry-After past it, before the
    body is read); saves of one image are serialized across processes (`datasets/label_locks.py`).
    """
    did = checked_uuid(dataset_id, "Dataset")
    eid = _experiment_id(request)
    gate = _label_gate(request, ctx)
    if not gate.try_acquire():
        raise HTTPException(503, gate.busy_message(), headers={"Retry-After": str(label_locks.RETRY_AFTER_S)})
    try:
        row, names = await ctx.in_session(partial(_owned_with_labels, caller=caller, dataset_id=did, experiment_id=eid))
        body = await request.body()  # capped by MEDCLOUD_MAX_LABEL_BODY_BYTES (api/limits.py)
        if not body:
            raise Invalid("Invalid Input. The body must be an NRRD of the label volume; it is empty.")
        saved = await ctx.pools.run(
            "storage", labels.save_label, ctx, row=row, image_id=image_id, body=body, labels=names
        )

        await ctx.in_session(
            lambda session: labels.record(ctx, session=session, row=_owned(session, caller, did), saved=saved)
        )
    finally:
        gate.release()
    ctx.events.dataset_notified(did)  # committed: wake the annotation controllers at once
    return JSONResponse(status_code=201, content=saved.as_json())


def _label_gate(request: Request, ctx: CtxDep) -> label_locks.SaveGate:
    """This app's gate on label saves (made on first use; the event loop is the only user)."""
    gate = getattr(request.app.state, "label_saves", None)
    if gate is None:
        gate = request.app.state.label_saves = label_locks.SaveGate(ctx.settings.max_label_saves)
    return gate
