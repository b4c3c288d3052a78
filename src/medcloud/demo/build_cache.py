"""Build something into a shared cache folder once: concurrent processes race safely, the first rename wins."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(cache_dir: Path, key: str, build: Callable[[Path], object]) -> Path:
    """`cache_dir/key`, made by `build(folder)` the first time; later calls (and racing processes) reuse it.

    The build happens in a private temporary folder renamed into place: renaming a directory is atomic,
    so readers see a whole build or none, and a race's loser drops its copy.
    """
    ready = cache_dir / key
    if not ready.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
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
    return ready
