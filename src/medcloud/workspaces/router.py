"""Routes of `/workspaces`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from medcloud.api import openapi
from medcloud.api.body import parse_body
from medcloud.api.deps import CallerDep, CtxDep, checked_uuid
from medcloud.api.listing import apply_list_params
from medcloud.experiments import service as experiments
from medcloud.workspaces import service
from medcloud.workspaces.schemas import WorkspaceCreate, WorkspaceOut, WorkspacePatch

router = APIRouter(prefix="/api/v1/orgs/{org}/workspaces")
WorkspaceList = openapi.list_model("WorkspaceList", "workspaces", WorkspaceOut)


@router.post("", status_code=201, openapi_extra=openapi.body(WorkspaceCreate), responses=openapi.ok(201, WorkspaceOut))
async def create_workspace(request: Request, caller: CallerDep, ctx: CtxDep) -> JSONResponse:
    body = await parse_body(request, WorkspaceCreate)
    details = body.cloud_specific_details
    await ctx.pools.run(
        "storage", service.verify, cloud_type=body.cloud_type, details=details, settings=ctx.settings, org=caller.org
    )

    def create(session: Session) -> dict:
        return service.create(session, org=caller.org, user_id=caller.user_id, body=body, box=ctx.box).model_dump(
            mode="json"
        )

    return JSONResponse(status_code=201, content=await ctx.in_session(create))


@router.get("", openapi_extra=openapi.listing(), responses=openapi.ok(200, WorkspaceList))
async def list_workspaces(request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    def listing(session: Session) -> list[dict]:
        return [w.model_dump(mode="json") for w in service.list_all(session, org=caller.org, user_id=caller.user_id)]

    return apply_list_params(request, await ctx.in_session(listing), "workspaces")


@router.get("/{workspace_id}", responses=openapi.ok(200, WorkspaceOut))
async def get_workspace(workspace_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    wid = checked_uuid(workspace_id, "Workspace")

    def get(session: Session) -> dict:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, workspace_id=wid)
        return service.to_out(row).model_dump(mode="json")

    return await ctx.in_session(get)


@router.patch("/{workspace_id}", openapi_extra=openapi.body(WorkspacePatch), responses=openapi.ok(200, WorkspaceOut))
async def patch_workspace(workspace_id: str, request: Request, caller: CallerDep, ctx: CtxDep) -> dict:
    wid = checked_uuid(workspace_id, "Workspace")
    body = await parse_body(request, WorkspacePatch)

    def owned(session: Session) -> str:
        return service.get_row(session, org=caller.org, user_id=caller.user_id, workspace_id=wid).cloud_type

    def patch(session: Session) -> dict:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, workspace_id=wid)
        return service.patch(session, row=row, body=body, box=ctx.box).model_dump(mode="json")

    cloud_type = await ctx.in_session(owned)
    if body.cloud_specific_details is not None:  # checked by connecting, holding no DB connection meanwhile
        await ctx.pools.run(
            "storage",
            service.verify,
            cloud_type=cloud_type,
            details=body.cloud_specific_details,
            settings=ctx.settings,
            org=caller.org,
        )
    return await ctx.in_session(patch)


@router.delete("/{workspace_id}", responses=openapi.ok(200, WorkspaceOut))
async def delete_workspace(workspace_id: str, caller: CallerDep, ctx: CtxDep) -> dict:
    wid = checked_uuid(workspace_id, "Workspace")

    def delete(session: Session) -> dict:
        row = service.get_row(session, org=caller.org, user_id=caller.user_id, workspace_id=wid)
        users = experiments.names_using_workspace(session, workspace_id=wid)
        return service.delete(session, row=row, users=users).model_dump(mode="json")

    return await ctx.in_session(delete)
