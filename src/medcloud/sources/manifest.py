"""Parse and validate an object-storage dataset manifest (pure: bytes in, `Manifest` out, no I/O)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from medcloud.errors import Invalid
from medcloud.paths import unsafe_reason

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ManifestImage:
    """One sample: an image (one or more files) and, when labeled, its label files."""

    id: str
    paths: tuple[str, ...]  # relative to the root
    label_id: str | None
    label_paths: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # the entry's other keys

    @property
    def labeled(self) -> bool:
        return self.label_id is not None


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: where files live, how labels are keyed, and the samples."""

    root_path: str | None  # as written (may be an absolute URL of the same store)
    label_key: tuple[str, ...]
    images: tuple[ManifestImage, ...]


def parse_manifest(raw: bytes, *, source: str) -> Manifest:
    """Parse manifest bytes read from `source` (a URL for messages); raise `Invalid` naming the problem."""
    doc = _load_json(raw, source)
    if not isinstance(doc, dict) or "data" not in doc:
        raise Invalid(f"The manifest at {source} has no `data` list.")
    data = doc["data"]
    if not isinstance(data, list):
        raise Invalid(f"The manifest at {source} has a `data` field that is not a list.")
    root_path = doc.get("root_path")
    if root_path is not None and not isinstance(root_path, str):
        raise Invalid(f"The manifest at {source} has a `root_path` that is not a string.")
    label_key = _label_key(doc.get("label_key", ["label"]), source)
    images: list[ManifestImage] = []
    seen: set[str] = set()
    for entry in data:
        image = _parse_entry(entry, label_key, source)
        if image is None:
            continue
        if image.id in seen:
            raise Invalid(f"The manifest at {source} lists image id {image.id} more than once.")
        seen.add(image.id)
        images.append(image)
    if not images:
        raise Invalid(
            f"The manifest at {source} has no valid samples: each entry of `data` needs `image.path` and `image.id`."
        )
    return Manifest(root_path=root_path or None, label_key=label_key, images=tuple(images))


def _load_json(raw: bytes, source: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise Invalid(f"The manifest at {source} is not valid JSON: it is not UTF-8 text ({exc.reason}).") from None
    except json.JSONDecodeError as exc:
        raise Invalid(f"The manifest at {source} is not valid JSON: {exc}.") from None


def _label_key(value: Any, source: str) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(k, str) and k for k in value):
        return tuple(value)
    raise Invalid(f"The manifest at {source} has a `label_key` that is not a string or a list of strings.")


def _parse_entry(entry: Any, label_key: tuple[str, ...], source: str) -> ManifestImage | None:
    """The entry as an image, or None when it is not one (it is then skipped)."""
    if not isinstance(entry, dict):
        return None
    image = entry.get("image")
    image_id = _id(image.get("id")) if isinstance(image, dict) else None
    paths = _paths(image.get("path"), source) if isinstance(image, dict) else None
    if image_id is None or not paths:
        return None
    reason = unsafe_reason(image_id)
    if reason is not None:  # image ids name folders (batch predictions, job inputs): one harmless name each
        raise Invalid(f"The manifest at {source} lists the image id {image_id!r}, which cannot be used: {reason}.")
    used_key, label_id, label_paths = None, None, ()
    for key in label_key:
        label = entry.get(key)
        if isinstance(label, dict) and _id(label.get("id")) is not None:
            used_key, label_id = key, _id(label.get("id"))
            label_paths = _paths(label.get("path"), source) or ()
            break
    extra = {k: v for k, v in entry.items() if k not in ("image", used_key)}
    return ManifestImage(id=image_id, paths=paths, label_id=label_id, label_paths=label_paths, extra=extra)


def _id(value: Any) -> str | None:
    """A usable id (non-empty string, or an integer written as one), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _paths(value: Any, source: str) -> tuple[str, ...] | None:
    """The path(s) as a tuple of safe relative paths; None when the value is not a str or list of str."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) and p.strip() for p in items):
        return None
    return tuple(check_relative_path(p, source=source) for p in items)


def check_relative_path(path: str, *, source: str) -> str:
    """`path` normalised (no `.` segments) when it stays below the root; `Invalid` naming it otherwise."""
    text = path
    if _URL_RE.match(text) or text.startswith(("/", "\\")) or _DRIVE_RE.match(text):
        raise Invalid(f"The manifest at {source} lists the path {path!r}, which is not relative to the dataset root.")
    if ".." in re.split(r"[/\\]", text):
        raise Invalid(f"The manifest at {source} lists the path {path!r}, which escapes the dataset root.")
    segments = [s for s in text.split("/") if s not in ("", ".")]
    if not segments:
        raise Invalid(f"The manifest at {source} lists the path {path!r}, which names no file.")
    return "/".join(segments)
