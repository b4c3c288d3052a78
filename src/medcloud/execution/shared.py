"""Files a worker or replica on another node must read: the Ray backend's shared folder.

On the local backend every path is already where the worker runs, so `node_path` returns it unchanged.
With `MEDCLOUD_RAY_ADDRESS` set, a bundle or checkpoint outside `MEDCLOUD_RAY_SHARED_DIR` is published
there once per content (`publish`): regular files only, never through a link (model code owns the
experiment's folder and may have left one pointing anywhere), written under a temporary name and
renamed, so a reader never sees half a copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from medcloud.config import Settings
from medcloud.confined import copy_regular, regular_files


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(base: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(base).as_posix()}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()[:32]


def publish(source: Path, root: Path) -> Path:
    """`source` (a folder, or one regular file) copied to `root/<content digest>` (a file keeps its name
    inside that folder); the copy's path. Content already published is not copied again, once its digest
    is checked: a folder of that name holding anything else (planted, or half-written) is replaced."""
    single = source.is_file() and not source.is_symlink()
    base = source.parent if single else source
    files = [source] if single else regular_files(source)
    name = content_digest(base, files)
    folder = root / name
    target = folder / source.name if single else folder
    if folder.is_dir() and not folder.is_symlink():
        if _holds(folder, name, single):
            return target
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.is_symlink():
        folder.unlink()
    staging = root / f".{folder.name}.{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)  # an empty bundle still gets its folder
        for path in files:
            dest = staging / path.relative_to(base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            copy_regular(path, base, dest)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # not just another process having published the same content
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _holds(folder: Path, digest: str, single: bool) -> bool:
    """True when `folder` holds exactly the content its name is the digest of, and nothing else."""
    found = regular_files(folder)
    everything = [p for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()]
    if len(everything) != len(found):
        return False  # links or special files were added
    return content_digest(folder, found) == digest


def node_path(settings: Settings, path: Path, *, kind: str, key: str) -> Path:
    """Where a worker or replica finds `path`: itself on the local backend (or when it is already in the
    shared folder), else its copy published under `<shared>/<kind>/<key>/`."""
    if not settings.ray_address or settings.ray_shared_dir is None:
        return path
    shared = settings.ray_shared_dir.expanduser().resolve()
    if path.resolve().is_relative_to(shared):
        return path
    return publish(path, shared / kind / key)
