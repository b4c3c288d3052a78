"""OpenAPI of what the routers parse by hand: JSON bodies, list parameters, success and error shapes, auth.

Handlers read bodies with `api.body.parse_body` (clients of the hosted service send JSON without a
content type, which FastAPI's own body parameters would refuse), so FastAPI cannot see them: routes
declare them here (`body(...)`, `ok(...)`, `listing(...)`) and `install` finishes the document.
"""

from __future__ import annotations

from typing import Any, get_args

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from medcloud.api.listing import FILTER_KEYS, SORTS

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearer"
API_KEY_SCHEME = "apiKey"


class ErrorBody(BaseModel):
    """Every error answer (API.md §1)."""

    error_desc: str = Field(description="A human sentence saying what went wrong.")
    error_code: int = Field(description="The HTTP status again.")


class PaginationInfo(BaseModel):
    total_records: int
    total_pages: int
    page_size: int
    page_index: int


class Message(BaseModel):
    message: str


class Empty(BaseModel):
    """`{}`."""


# Models the document needs that FastAPI cannot see, by component name, with the JSON-schema mode they are used in.
_MODELS: dict[str, tuple[type[BaseModel], JsonSchemaMode]] = {}


def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, str]:
    """A `$ref` to `model`'s component, registered for `build` (responses use the serialization shape)."""
    known = _MODELS.setdefault(model.__name__, (model, mode))
    assert known == (model, mode), f"two component models named {model.__name__}"
    return {"$ref": REF.format(model=model.__name__)}


def body(*models: type[BaseModel], discriminator: str | None = None) -> dict[str, Any]:
    """`openapi_extra` for a route whose handler parses its JSON body itself: one model, or one of several."""
    refs = [ref(m, "validation") for m in models]
    schema: dict[str, Any] = refs[0] if len(refs) == 1 else {"oneOf": refs}
    if len(refs) > 1 and discriminator:
        values = [get_args(m.model_fields[discriminator].annotation)[0] for m in models]
        schema["discriminator"] = {
            "propertyName": discriminator,
            "mapping": {value: r["$ref"] for value, r in zip(values, refs, strict=True)},
        }
    return {
        "requestBody": {
            "required": True,
            "description": "JSON; sent with or without `Content-Type: application/json`.",
            "content": {"application/json": {"schema": schema}},
        }
    }


def ok(
    status: int, model: type[BaseModel] | None = None, *, content: dict[str, dict[str, Any]] | None = None
) -> dict[int | str, Any]:
    """`responses` of a route: its success shape, a model or `{media type: schema}`."""
    response: dict[str, Any] = {"description": "Success"}
    if model is not None:
        response["model"] = model
    if content:
        response["content"] = {media: {"schema": schema} for media, schema in content.items()}
    return {status: response}


def list_model(name: str, key: str, item: type[BaseModel], *, paged: bool = True) -> type[BaseModel]:
    """`{key: [item]}`, plus `pagination_info` when `skip`/`size` are given."""
    fields: dict[str, Any] = {key: (list[item], ...)}  # type: ignore[valid-type]
    if paged:
        fields["pagination_info"] = (PaginationInfo | None, None)
    return create_model(name, **fields)


def listing(*, user_only: bool = False) -> dict[str, Any]:
    """`openapi_extra` of a collection: the query parameters `api.listing` reads (API.md §1)."""
    params: list[dict[str, Any]] = [
        {"name": "skip", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
        {"name": "size", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
        {
            "name": "sort",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": list(SORTS), "default": "date-descending"},
        },
    ]
    params += [
        {
            "name": key,
            "in": "query",
            "required": False,
            "description": "Exact match; a leading `!` negates.",
            "schema": {"type": "string"},
        }
        for key in FILTER_KEYS
    ]
    if user_only:
        params.append(
            {
                "name": "user_only",
                "in": "query",
                "required": False,
                "description": "`true`: only the caller's experiments, without base experiments.",
                "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
            }
        )
    return {"parameters": params}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }


def _finish_operation(path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)  # validation errors are 400 here (api/errors.py)
    for response in responses.values():
        for media in response.get("content", {}).values():
            schema = media.get("schema", {})
            if "$ref" in schema:  # a handler's `-> dict` adds a generic object schema beside the declared one
                media["schema"] = {"$ref": schema["$ref"]}
    params = operation.get("parameters", [])
    # OpenAPI ignores a header parameter named Authorization: it is a security scheme.
    kept = [p for p in params if not (p.get("in") == "header" and p.get("name", "").lower() == "authorization")]
    secured = len(kept) != len(params)
    if kept:
        operation["parameters"] = kept
    else:
        operation.pop("parameters", None)
    if path.startswith("/api/v1/health"):
        return
    errors = {"400": "Bad input (a sentence says what)."}
    if secured:
        operation["security"] = [{SECURITY_SCHEME: []}, {API_KEY_SCHEME: []}]
        errors["401"] = "Missing or invalid bearer token or API key (or a revoked key)."
        errors["403"] = "Not a member of the org."
    elif path == "/api/v1/login":
        errors["401"] = "Invalid API key."
    if "{" in path.removeprefix("/api/v1/orgs/{org}"):
        errors["404"] = "Unknown, or not the caller's."
    if "requestBody" in operation:
        errors["413"] = "The request body is larger than MEDCLOUD_MAX_BODY_BYTES."
    if secured or path == "/api/v1/login":
        errors["429"] = (
            "Too many logins or bad API keys from this address (auth/limits.py); `Retry-After` says when to retry."
        )
    errors["503"] = "A dependency (storage, model host) failed; try again."
    for status, description in errors.items():
        responses.setdefault(status, _error(description))
    if "429" in errors:
        retry = {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}
        responses["429"].setdefault("headers", {"Retry-After": retry})


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description="A self-hosted server that speaks the MONAI Cloud API.",
        routes=app.routes,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas[ErrorBody.__name__] = ErrorBody.model_json_schema(ref_template=REF)
    if _MODELS:
        _, defs = models_json_schema(list(_MODELS.values()), ref_template=REF)
        for name, schema in defs.get("$defs", {}).items():
            if schemas.setdefault(name, schema) != schema:
                raise RuntimeError(f"two different OpenAPI components named {name}")
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "The `token` of `POST /api/v1/login`.",
        },
        API_KEY_SCHEME: {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`ApiKey <key>`: the API key itself, checked on every request as /login checks it "
            "(for a proxy in front of a viewer that injects one fixed header).",
        },
    }
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            _finish_operation(path, operation)
    return doc


def install(app: FastAPI) -> None:
    """Serve the finished document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
