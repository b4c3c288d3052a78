"""Build something into a shared cache folder once: concurrent processes wait for the first builder."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(cache_dir: Path, key: str, build: Callable[[Path], object]) -> Path:
    """`cache_dir/key`, made by `build(folder)` the first time; later calls (and racing processes) reuse it.

    The build happens in a private temporary folder renamed into place: renaming a directory is atomic,
    so readers see a whole build or none. Builders of one key take turns on a lock file (`.key.lock`): a
    second process (another test worker, a second server) waits for the first build instead of repeating it.
    """
    ready = cache_dir / key
    if ready.is_dir():
        return ready
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.is_dir():
            _build(cache_dir, key, build)
    return ready


def _build(cache_dir: Path, key: str, build: Callable[[Path], object]) -> None:
    """Build in a private folder, then rename it into place (a builder without the lock, e.g. on another
    host of a shared folder, may win the rename: its copy is kept and this one dropped)."""
    ready = cache_dir / key
    folder = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    try:
        build(folder)
        folder.chmod(0o755)  # mkdtemp made it private; the cache is meant to be shared
        os.rename(folder, ready)
    except OSError:
        if not ready.is_dir():
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
