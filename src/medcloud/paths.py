"""Client-controlled names that become file-system paths: one safe component each, never outside a root."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from medcloud.errors import Invalid

MAX_COMPONENT_BYTES = 255  # the longest file name ext4, xfs and NTFS accept


def unsafe_reason(value: object) -> str | None:
    """Why `value` cannot be one file or folder name, or None when it can."""
    if not isinstance(value, str) or not value:
        return "it is not a non-empty string"
    if value in (".", ".."):
        return "it names the current or parent folder"
    if "/" in value or "\\" in value:
        return "it contains a path separator"
    # NUL ends a path in the C library; other control characters garble logs and shells.
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return "it contains a control character"
    if len(value.encode("utf-8")) > MAX_COMPONENT_BYTES:
        return f"it is longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def safe_path_component(value: object, what: str) -> str:
    """`value` when it is a single harmless file name; `Invalid` naming `what` otherwise.

    Example:
        >>> safe_path_component("ct_000", "image id")
        'ct_000'
        >>> safe_path_component("../../x", "image id")
        Traceback (most recent call last):
        medcloud.errors.Invalid: Invalid Input. The image id '../../x' cannot name a folder: it contains a path separator.
    """
    reason = unsafe_reason(value)
    if reason is not None:
        raise Invalid(f"Invalid Input. The {what} {value!r} cannot name a folder: {reason}.")
    return value  # type: ignore[return-value]  # unsafe_reason checked it is a str


def child_path(root: Path, *parts: str, what: str = "name") -> Path:
    """`root/part/...` when every part is a safe component and the result (links resolved) stays in `root`."""
    path = root.joinpath(*(safe_path_component(part, what) for part in parts))
    # A component that already exists as a symbolic link could still point elsewhere.
    if not path.resolve().is_relative_to(root.resolve()):
        raise Invalid(f"Invalid Input. The {what} {'/'.join(parts)!r} leads outside its folder.")
    return path
