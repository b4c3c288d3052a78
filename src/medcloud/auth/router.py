"""`POST /api/v1/login`: exchange an API key for a bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from medcloud.api import openapi
from medcloud.api.body import parse_body
from medcloud.api.deps import CtxDep, checked_key
from medcloud.auth import service

router = APIRouter()


class LoginRequest(BaseModel):
    ngc_api_key: str = Field(min_length=1)


class LoginOut(BaseModel):
    user_id: str
    token: str = Field(description="Send as `Authorization: Bearer <token>`.")


@router.post(
    "/api/v1/login", status_code=201, openapi_extra=openapi.body(LoginRequest), responses=openapi.ok(201, LoginOut)
)
async def login(request: Request, ctx: CtxDep) -> JSONResponse:
    """Accepts the body with or without a JSON content type, as the guides send it.

    Limited per client address (`auth/limits.py`): attempts per minute, bad keys per minute (429 past
    either), and a key refused lately is refused again without a lookup.
    """
    body = await parse_body(request, LoginRequest)

    def run() -> tuple[str, str]:
        with ctx.db.session() as session:
            return service.login(
                session, api_key=body.ngc_api_key, signing_key=ctx.signing_key, ttl_s=ctx.settings.token_ttl_s
            )

    user_id, token = await checked_key(request, body.ngc_api_key, run, login=True)  # the `auth` pool
    return JSONResponse(status_code=201, content={"user_id": user_id, "token": token})
