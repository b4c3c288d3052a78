"""FastAPI dependencies: the server context, the authenticated caller and checked path ids."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request

from medcloud.auth import service as auth
from medcloud.auth.limits import AuthGuard, client_address
from medcloud.context import Context
from medcloud.errors import Invalid, Unauthorized

T = TypeVar("T")


async def get_context(request: Request) -> Context:
    # async: a sync dependency would take a thread of the shared pool on every request
    return request.app.state.context


def auth_guard(request: Request) -> tuple[AuthGuard, str]:
    """The app's limits on API keys (`auth/limits.py`) and the client address they count against."""
    return request.app.state.auth_guard, client_address(request.client.host if request.client else None)


async def checked_key(request: Request, key: str, check: Callable[[], T], *, login: bool) -> T:
    """Run `check` (which looks `key` up, in the `auth` pool) under the limits on API keys: 429 past them,
    401 for a key refused lately; a key that `check` finds invalid is counted and remembered."""
    guard, address = auth_guard(request)
    charged = guard.admit(address, key, login=login)  # on the event loop: a few dictionary look-ups
    ctx: Context = request.app.state.context
    try:
        found = await ctx.pools.run("auth", check)  # its own pool: slow work of other requests never delays it
    except auth.InvalidKey:
        guard.refused(address, key, charged=charged)
        raise
    except BaseException:
        guard.undecided(address, charged=charged)  # a valid key of another org, the database down, ...
        raise
    guard.accepted(address, key, charged=charged)
    return found


@dataclass(frozen=True)
class Caller:
    """An authenticated user acting inside one org."""

    org: str
    user_id: str


async def get_caller(
    org: str,
    request: Request,
    ctx: Annotated[Context, Depends(get_context)],
    authorization: Annotated[str | None, Header()] = None,
) -> Caller:
    """Check the credentials (401), then membership of `{org}` (403).

    `Authorization: Bearer <token>` (a token from /login), or `Authorization: ApiKey <key>` (the key itself,
    as a proxy in front of a viewer sends it): the key gets the checks /login makes, on every request, and
    the same limits on bad keys (`auth/limits.py`).
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        principal = auth.verify_token(credentials, signing_key=ctx.signing_key)

        def check_token() -> None:
            with ctx.db.session() as session:
                auth.authorize(session, principal=principal, org=org)

        await ctx.pools.run("auth", check_token)  # its own pool: slow work of other requests never delays it
        return Caller(org=org, user_id=principal.user_id)

    if scheme.lower() == "apikey" and credentials:

        def check_key() -> auth.Principal:
            with ctx.db.session() as session:
                found = auth.key_principal(session, api_key=credentials)
                auth.authorize(session, principal=found, org=org)
            return found

        principal = await checked_key(request, credentials, check_key, login=False)
        return Caller(org=org, user_id=principal.user_id)

    raise Unauthorized("Missing credentials: send `Authorization: Bearer <token>` or `Authorization: ApiKey <key>`.")


def checked_uuid(value: str, kind: str) -> str:
    """Return the canonical UUID string or raise the reference's 400 sentence."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise Invalid(f"{kind} ID passed is not a valid UUID") from None


CtxDep = Annotated[Context, Depends(get_context)]
CallerDep = Annotated[Caller, Depends(get_caller)]
