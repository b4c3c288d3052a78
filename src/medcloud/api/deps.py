"""FastAPI dependencies: the server context, the authenticated caller and checked path ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from medcloud.auth import service as auth
from medcloud.context import Context
from medcloud.errors import Invalid, Unauthorized


async def get_context(request: Request) -> Context:
    # async: a sync dependency would take a thread of the shared pool on every request
    return request.app.state.context


@dataclass(frozen=True)
class Caller:
    """An authenticated user acting inside one org."""

    org: str
    user_id: str


async def get_caller(
    org: str,
    ctx: Annotated[Context, Depends(get_context)],
    authorization: Annotated[str | None, Header()] = None,
) -> Caller:
    """Check the bearer token and its key (401), then membership of `{org}` (403)."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("Missing bearer token.")
    principal = auth.verify_token(authorization[7:].strip(), signing_key=ctx.signing_key)

    def check() -> None:
        with ctx.db.session() as session:
            auth.authorize(session, principal=principal, org=org)

    await ctx.pools.run("auth", check)  # its own pool: slow work of other requests never delays it
    return Caller(org=org, user_id=principal.user_id)


def checked_uuid(value: str, kind: str) -> str:
    """Return the canonical UUID string or raise the reference's 400 sentence."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise Invalid(f"{kind} ID passed is not a valid UUID") from None


CtxDep = Annotated[Context, Depends(get_context)]
CallerDep = Annotated[Caller, Depends(get_caller)]
