"""What the user commands share: exit codes, error reporting, tables and JSON, `key=value` options.

Exit codes (documented in docs/client.md; scripts may rely on them):
    0  done
    1  the API refused the request (bad input, unknown id, wrong key...), or a watched job ended in Error/Canceled
    2  usage: a bad option or a missing setting (argparse uses 2 too)
    3  the server could not be reached, or stayed unavailable (503) after the retries
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from medcloud.client.errors import ClientError, ConnectionFailed, MedcloudError, Unavailable

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
Handler = Callable[[argparse.Namespace], int]


def quiet_logging() -> None:
    """User commands print results, not server-style logs: silence the HTTP libraries' INFO lines."""
    for name in ("httpx", "httpcore", "medcloud.client"):
        logging.getLogger(name).setLevel(logging.WARNING)


def reports_errors(handler: Handler) -> Handler:
    """Run a command; turn client errors into one `error:` line on stderr and the documented exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        quiet_logging()
        try:
            return handler(args)
        except ClientError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return EXIT_USAGE
        except (ConnectionFailed, Unavailable) as err:
            print(f"error: {err.message}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except MedcloudError as err:
            status = f" (HTTP {err.status})" if err.status else ""
            print(f"error: {err.message}{status}", file=sys.stderr)
            return EXIT_API
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run


def parse_value(text: str) -> Any:
    """A value given on the command line: JSON when it parses (`2`, `true`, `[1,2]`), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def key_values(pairs: Sequence[str] | None, option: str) -> dict[str, Any]:
    """`["epochs=2", "train#trainer#max_epochs=3"]` → a dict (values through `parse_value`)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"{option} takes KEY=VALUE, got {pair!r}.")
        out[key] = parse_value(value)
    return out


def to_jsonable(thing: Any) -> Any:
    """Typed client objects as the API's JSON (their `raw`), paths as strings."""
    if is_dataclass(thing) and not isinstance(thing, type):
        raw = getattr(thing, "raw", None)
        return raw if raw else {k: to_jsonable(v) for k, v in asdict(thing).items() if k != "raw"}
    if isinstance(thing, dict):
        return {str(k): to_jsonable(v) for k, v in thing.items()}
    if isinstance(thing, list | tuple):
        return [to_jsonable(v) for v in thing]
    if isinstance(thing, Path):
        return str(thing)
    return thing


def print_json(thing: Any) -> None:
    """One JSON document on stdout."""
    print(json.dumps(to_jsonable(thing), indent=2))


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    """Left-aligned columns for people; `-` for empty cells."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not cells:
        print("(none)")


def short_time(value: str | None) -> str:
    """`2026-12-05T10:12:25.123456+00:00` → `2026-12-05 10:12:25`."""
    return value.replace("T", " ")[:19] if value else "-"
