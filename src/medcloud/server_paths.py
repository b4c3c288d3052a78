"""This server's own absolute paths, kept out of what clients read.

Error sentences and job messages are often built from exceptions whose text names a file (a library's
"Cannot work out file type of "/srv/medcloud/data/cache/..."", a model's traceback through
site-packages, a worker's `FileNotFoundError`). Before such text reaches a client, every server root
in it is replaced by a short label, the rest of the path kept (it says which file, not where the
server lives):

| root | label |
|---|---|
| the data folder (`MEDCLOUD_DATA_DIR`) | `[data]` |
| the Ray shared folder (`MEDCLOUD_RAY_SHARED_DIR`) | `[shared]` |
| the operator's bundle paths (`MEDCLOUD_VISTA3D_BUNDLE`, `MEDCLOUD_DEEPEDIT_BUNDLE`, `MEDCLOUD_BUNDLE_MIRROR`) | `[MEDCLOUD_...]` |
| Python's prefixes and medcloud's own code | `[python]` |
| the server user's home folder | `[home]` |

`api/errors.py` scrubs every error answer; the job routes scrub the job's `result`. Paths a client gave
(a local dataset, a local bundle) stay as given unless they lie under one of these roots.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any

from medcloud.config import Settings

_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class ServerPaths:
    """Replace each root (longest first) by its label wherever it starts a path in a text."""

    def __init__(self, roots: dict[str, str]) -> None:
        usable = {root.rstrip("/"): label for root, label in roots.items() if root and root.rstrip("/")}
        self.roots = dict(sorted(usable.items(), key=lambda item: -len(item[0])))
        # A root counts only as a whole name: `/srv/data` is not the start of `/srv/data2`.
        pattern = "|".join(re.escape(root) + r"(?![\w.-])" for root in self.roots)
        self._pattern = re.compile(pattern) if pattern else None

    def scrub(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda match: self.roots[match.group(0)], text)

    def scrub_json(self, value: Any) -> Any:
        """Every string of a JSON value (keys kept), scrubbed."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {key: self.scrub_json(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.scrub_json(item) for item in value]
        return value


def _forms(path: str | Path | None) -> list[str]:
    """A path as configured, expanded and resolved (any of them may appear in a message)."""
    if path is None or str(path).strip() == "" or _REMOTE.match(str(path)):
        return []
    text = str(path).removeprefix("file://")
    expanded = Path(text).expanduser()
    forms = {text, str(expanded)}
    try:
        forms.add(str(expanded.resolve()))
    except (OSError, RuntimeError):
        pass
    return [form for form in forms if form.startswith("/") and form != "/"]


def _roots(settings: Settings) -> dict[str, str]:
    roots: dict[str, str] = {}

    def add(path: str | Path | None, label: str) -> None:
        for form in _forms(path):
            roots.setdefault(form, label)

    add(settings.data_dir, "[data]")
    add(settings.ray_shared_dir, "[shared]")
    add(settings.vista3d_bundle, "[MEDCLOUD_VISTA3D_BUNDLE]")
    add(settings.deepedit_bundle, "[MEDCLOUD_DEEPEDIT_BUNDLE]")
    add(settings.bundle_mirror, "[MEDCLOUD_BUNDLE_MIRROR]")
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        add(prefix, "[python]")
    add(Path(__file__).resolve().parent, "[python]/medcloud")
    add(Path.home(), "[home]")
    return roots


@functools.lru_cache(maxsize=16)
def _cached(key: tuple[tuple[str, str], ...]) -> ServerPaths:
    return ServerPaths(dict(key))


def server_paths(settings: Settings) -> ServerPaths:
    """The scrubber for this server's settings (built once per distinct set of roots)."""
    return _cached(tuple(sorted(_roots(settings).items())))
