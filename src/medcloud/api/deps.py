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
    """Check the credentials (401), then membership of `{org}` (403).

    `Authorization: Bearer <token>` (a token from /login), or `Authorization: ApiKey <key>` (the key itself,
    as a proxy in front of a viewer sends it): the key gets the checks /login makes, on every request.
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        principal = auth.verify_token(credentials, signing_key=ctx.signing_key)

        def check() -> auth.Principal:
            with ctx.db.session() as session:
                auth.authorize(session, principal=principal, org=org)
            return principal

    elif scheme.lower() == "apikey" and credentials:

        def check() -> auth.Principal:
            with ctx.db.session() as session:
                found = auth.key_principal(session, api_key=credentials)
                auth.authorize(session, principal=found, org=org)
            return found

    else:
        raise Unauthorized(
            "Missing credentials: send `Authorization: Bearer <token>` or `Authorization: ApiKey <key>`."
        )

    principal = await ctx.pools.run("auth", check)  # its own pool: slow work of other requests never delays it
    return Caller(org=org, user_id=principal.user_id)


def checked_uuid(value: str, kind: str) -> str:
    """Return the canonical UUID string or raise the reference's 400 sentence."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise Invalid(f"{kind} ID passed is not a valid UUID") from None


CtxDep = Annotated[Context, Depends(get_context)]
CallerDep = Annotated[Caller, Depends(get_caller)]
