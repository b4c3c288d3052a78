"""The one table from domain exception to HTTP status and `{"error_desc","error_code"}` body, whose sentence
never names a folder of the server (`server_paths.py`)."""

from __future__ import annotations

import logging

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medcloud import errors
from medcloud.server_paths import server_paths

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "The server's metadata database is unavailable at the moment; try again shortly."
STATUS_BY_ERROR: dict[type[errors.MedcloudError], int] = {
    errors.Invalid: 400,
    errors.Conflict: 400,
    errors.NotFound: 404,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.Unavailable: 503,
    errors.TooManyRequests: 429,
}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error_desc": message, "error_code": status}, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    """One sentence naming each field that is wrong, e.g. "Field `name`: Field required"."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc) or "request body"
        parts.append(f"Field `{where}`: {err.get('msg', 'invalid')}")
    return "Invalid Input. " + "; ".join(parts) + "."


def install(app: FastAPI) -> None:
    """Register the handlers on the app (after `app.state.context` is set: messages are scrubbed of its paths)."""
    context = getattr(app.state, "context", None)
    scrub = server_paths(context.settings).scrub if context is not None else str

    @app.exception_handler(errors.MedcloudError)
    async def _domain(_request: Request, exc: errors.MedcloudError) -> JSONResponse:
        status = next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(exc, cls)), 400)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, errors.TooManyRequests) else None
        # A sentence built from a library's or a model's exception may name a file of the server.
        return error_response(status, scrub(exc.message), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, describe_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The router's own 404/405 say only "Not Found": name what was asked. Headers carry 405's `Allow`.
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"Not Found: no API route {request.url.path}."
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"Method {request.method} is not allowed on {request.url.path}."
        return error_response(exc.status_code, scrub(message), headers=exc.headers)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    @app.exception_handler(sqlalchemy.exc.InterfaceError)
    async def _database_down(request: Request, exc: sqlalchemy.exc.DBAPIError) -> JSONResponse:
        # The database server is unreachable, restarting or (SQLite) locked for too long: nothing the
        # client sent is wrong, and the request may be tried again. The driver's text may name the server.
        log.error("Database unavailable on %s %s: %s", request.method, request.url.path, type(exc.orig).__name__)
        return error_response(503, DATABASE_UNAVAILABLE, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal server error: {type(exc).__name__}")
