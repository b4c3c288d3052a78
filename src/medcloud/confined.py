"""Reading what model code wrote: regular files inside a given folder, never through a link it planted.

Model code owns its folders (`sandbox.py`) and may leave `results/x -> /data/secret.key` behind; the
server reads those folders with more authority than their owner, so every such read goes through here.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO


class NotConfined(OSError):
    """The path is a link, not a regular file, or outside the folder it must be in."""


def _check_inside(path: Path, root: Path) -> None:
    if not path.parent.resolve().is_relative_to(root.resolve()):
        raise NotConfined(f"{path} is outside {root}")


def open_regular(path: Path, root: Path) -> BinaryIO:
    """Open `path` for reading if it is a regular file inside `root` (no link anywhere below `root`)."""
    _check_inside(path, root)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotConfined(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def read_regular(path: Path, root: Path) -> bytes:
    with open_regular(path, root) as handle:
        return handle.read()


def copy_regular(path: Path, root: Path, target: Path) -> None:
    """Copy a confined file to `target` (replaced, never written through a link)."""
    tmp = target.with_name(f".{target.name}.copy")
    tmp.unlink(missing_ok=True)
    with open_regular(path, root) as src, open(tmp, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, target)


def regular_files(root: Path) -> list[Path]:
    """Every regular file under `root`, not following links (links and special files are left out)."""
    if root.is_symlink() or not root.is_dir():
        return []
    found = []
    for folder, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(folder) / name
            if stat.S_ISREG(path.lstat().st_mode):
                found.append(path)
    return sorted(found)
