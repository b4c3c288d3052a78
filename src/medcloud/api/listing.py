"""The list query parameters every collection shares: filters, sort and pagination (API.md §1)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request

from medcloud.errors import Invalid

SORTS = {
    "date-descending": ("last_modified", True),
    "date-ascending": ("last_modified", False),
    "name-ascending": ("name", False),
    "name-descending": ("name", True),
}
FILTER_KEYS = ("name", "type", "network_arch", "format")


def _int_param(request: Request, key: str, minimum: int) -> int | None:
    raw = request.query_params.get(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"Invalid Input. Query parameter `{key}` must be an integer.") from None
    if value < minimum:
        raise Invalid(f"Invalid Input. Query parameter `{key}` must be at least {minimum}.")
    return value


def _matches(item: dict[str, Any], key: str, wanted: str) -> bool:
    negate = wanted.startswith("!")
    equal = str(item.get(key)) == wanted.lstrip("!")
    return equal != negate


def apply_list_params(request: Request, items: list[dict[str, Any]], collection: str) -> dict[str, Any]:
    """Filter, sort and page `items`, returning `{collection: [...]}` (+ `pagination_info` when paged)."""
    for key in FILTER_KEYS:
        wanted = request.query_params.get(key)
        if wanted is not None:
            items = [item for item in items if _matches(item, key, wanted)]
    sort = request.query_params.get("sort", "date-descending")
    if sort not in SORTS:
        raise Invalid(f"Invalid Input. `sort` must be one of {', '.join(SORTS)}.")
    field, reverse = SORTS[sort]
    items = sorted(items, key=lambda item: str(item.get(field) or ""), reverse=reverse)
    skip = _int_param(request, "skip", 0)
    size = _int_param(request, "size", 1)
    if skip is None and size is None:
        return {collection: items}
    skip, size = skip or 0, size or max(len(items), 1)
    total = len(items)
    return {
        collection: items[skip : skip + size],
        "pagination_info": {
            "total_records": total,
            "total_pages": math.ceil(total / size),
            "page_size": size,
            "page_index": skip // size,
        },
    }
