"""The one place that decides who may enter the data dir (its mode), kept in one small function."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

# The DB, the master key, cached patient images and bundles live below: only the server's user enters.
DATA_DIR_MODE = 0o700


def secure_data_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and give it `DATA_DIR_MODE`; return it.

    An existing folder that others may enter is tightened too (it is medcloud's own folder); when that
    is not allowed (a volume owned by someone else) it is left as it is, with a warning.
    """
    path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)  # mode is masked by the umask: chmod below
    current = stat.S_IMODE(path.stat().st_mode)
    wanted = DATA_DIR_MODE  # model code sees only what its sandbox binds in (sandbox.py), never this folder
    if current != wanted:
        try:
            os.chmod(path, wanted)
        except OSError as exc:
            log.warning("Could not set mode %o on the data dir %s (it stays %o): %s", wanted, path, current, exc)
    return path
