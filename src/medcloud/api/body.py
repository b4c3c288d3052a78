"""Reading JSON bodies the way the hosted service's clients send them (with or without a content type)."""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from medcloud.errors import Invalid

Model = TypeVar("Model", bound=BaseModel)

# No request of the API nests deeper than a handful of levels; bundle overrides maybe a dozen.
MAX_DEPTH = 64
# Python refuses int() of more than 4300 digits with a ValueError; nothing real needs more than a few dozen.
MAX_INT_DIGITS = 1000
# A `\uD800`-`\uDFFF` escape: only these can produce a string that UTF-8 (the DB, our responses) refuses.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise Invalid(f"Invalid Input. A number in the request body has more than {MAX_INT_DIGITS} digits.")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: our responses and the DB's JSON must stay standard JSON
        raise Invalid("Invalid Input. A number in the request body is out of range.")
    return value


def _parse_constant(name: str) -> Any:
    raise Invalid(f"Invalid Input. `{name}` is not a JSON value.")


def _check_shape(data: Any, check_strings: bool) -> None:
    """Depth at most MAX_DEPTH and, when asked, every string encodable as UTF-8 (no lone surrogate)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise Invalid(f"Invalid Input. The request body nests deeper than {MAX_DEPTH} levels.")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if check_strings and isinstance(key, str):
                    stack.append((key, depth))
                stack.append((item, depth + 1))
        elif check_strings and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Invalid("Invalid Input. A string in the request body has an unpaired surrogate escape.") from None


def loads(raw: bytes) -> Any:
    """`json.loads` that answers Invalid for what the standard parser turns into crashes or odd values."""
    try:
        data = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        raise Invalid(f"Invalid Input. The request body nests deeper than {MAX_DEPTH} levels.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"Invalid Input. The request body is not valid JSON: {exc}.") from None
    except ValueError as exc:  # any other refusal of the parser is the client's input, never a crash
        raise Invalid(f"Invalid Input. The request body is not valid JSON: {exc}.") from None
    # UTF-16/32 bodies (NULs among the first bytes) hide the escapes from the cheap search: check them all.
    _check_shape(data, check_strings=b"\x00" in raw[:4] or _SURROGATE_ESCAPE.search(raw) is not None)
    return data


async def json_body(request: Request, *, required: bool = True) -> Any:
    """Parse the body as JSON whatever its content type; an empty body is `{}` unless required.

    Its size is capped by `api.limits.BodyLimit` (413) before it gets here.
    """
    raw = await request.body()
    if not raw.strip():
        if required:
            raise Invalid("Invalid Input. The request body is empty; a JSON object is expected.")
        return {}
    return loads(raw)


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
