"""Reading JSON bodies the way the hosted service's clients send them (with or without a content type)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from medcloud.errors import Invalid

Model = TypeVar("Model", bound=BaseModel)


async def json_body(request: Request, *, required: bool = True) -> Any:
    """Parse the body as JSON whatever its content type; an empty body is `{}` unless required."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise Invalid("Invalid Input. The request body is empty; a JSON object is expected.")
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"Invalid Input. The request body is not valid JSON: {exc}.") from None


def validate(model: type[Model], data: Any) -> Model:
    """Validate `data` into `model`, turning pydantic's errors into one 400 sentence."""
    if not isinstance(data, dict):
        raise Invalid("Invalid Input. The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            parts.append(f"Field `{where}`: {err.get('msg', 'invalid')}")
        raise Invalid("Invalid Input. " + "; ".join(parts) + ".") from None


async def parse_body(request: Request, model: type[Model]) -> Model:
    return validate(model, await json_body(request))
