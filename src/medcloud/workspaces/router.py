"""Routes of `/workspaces`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medcloud.api.body import parse_body
from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.api.listing import apply_list_params
from medcloud.experiments import service as experiments
from medcloud.workspaces import service
from medcloud.workspaces.schemas import WorkspaceCreate, WorkspacePatch

router = APIRouter(prefix="/api/v1/orgs/{org}/workspaces")


@router.post("", status_code=201)
async def create_workspace(request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    body = await parse_body(request, WorkspaceCreate)
    await run_in_threadpool(
        service.verify, cloud_type=body.cloud_type, details=body.cloud_specific_details, settings=ctx.settings
    )

    def run() -> dict:
        with ctx.db.session() as session:
            out = service.create(session, org=caller.org, user_id=caller.user_id, body=body, box=ctx.box)
            return out.model_dump(mode="json")

    return JSONResponse(status_code=201, content=await run_in_threadpool(run))


@router.get("")
def list_workspaces(request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    with ctx.db.session() as session:
        items = [w.model_dump(mode="json") for w in service.list_all(session, org=caller.org, user_id=caller.user_id)]
    return apply_list_params(request, items, "workspaces")


@router.get("/{workspace_id}")
def get_workspace(workspace_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    wid = checked_uuid(workspace_id, "Workspace")
    with ctx.db.session() as session:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, workspace_id=wid)
        return service.to_out(row).model_dump(mode="json")


@router.patch("/{workspace_id}")
async def patch_workspace(workspace_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    wid = checked_uuid(workspace_id, "Workspace")
    body = await parse_body(request, WorkspacePatch)

    def run() -> dict:
        with ctx.db.session() as session:
            row = service.get_row(session, org=caller.org, user_id=caller.user_id, workspace_id=wid)
            if body.cloud_specific_details is not None:
                service.verify(cloud_type=row.cloud_type, details=body.cloud_specific_details, settings=ctx.settings)
            return service.patch(session, row=row, body=body, box=ctx.box).model_dump(mode="json")

    return await run_in_threadpool(run)


@router.delete("/{workspace_id}")
def delete_workspace(workspace_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    wid = checked_uuid(workspace_id, "Workspace")
    with ctx.db.session() as session:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, workspace_id=wid)
        users = experiments.names_using_workspace(session, workspace_id=wid)
        return service.delete(session, row=row, users=users).model_dump(mode="json")
