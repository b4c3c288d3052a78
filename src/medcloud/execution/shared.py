"""Files a worker or replica on another node must read: the Ray backend's shared folder.

On the local backend every path is already where the worker runs, so `node_path` returns it unchanged.
With `MEDCLOUD_RAY_ADDRESS` set, a bundle or checkpoint outside `MEDCLOUD_RAY_SHARED_DIR` is copied
there once per content (`<shared>/<kind>/<key>/<digest>/`, written under a temporary name and renamed,
so a reader never sees half a copy) and that copy's path is returned.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from medcloud.config import Settings


def content_digest(path: Path) -> str:
    """A digest of a file or folder tree: names, sizes and modification times (cheap; no content read)."""
    digest = hashlib.sha256()
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    for entry in entries:
        stat = entry.stat()
        digest.update(
            f"{entry.relative_to(path) if entry != path else entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:20]


def publish(shared_dir: Path, path: Path, *, kind: str, key: str) -> Path:
    """`path` copied under `shared_dir/kind/key/<digest>/` (once); the copy's path."""
    target_dir = shared_dir / kind / key / content_digest(path)
    target = target_dir / path.name
    if target.exists():
        return target
    staging = shared_dir / kind / key / f".{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        if path.is_dir():
            shutil.copytree(path, staging / path.name, symlinks=False)
        else:
            shutil.copy2(path, staging / path.name)
        try:
            os.rename(staging, target_dir)
        except OSError:  # another caller published the same content first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def node_path(settings: Settings, path: Path, *, kind: str, key: str) -> Path:
    """Where a worker or replica finds `path`: itself on the local backend, else its copy in the shared folder."""
    if not settings.ray_address or settings.ray_shared_dir is None:
        return path
    shared = settings.ray_shared_dir.expanduser().resolve()
    if path.resolve().is_relative_to(shared):
        return path
    return publish(shared, path, kind=kind, key=key)
