"""Reading what model code wrote: regular files below a trusted folder, opened step by step, never through a link.

Model code writes one folder of its own (`sandbox.py`); the server reads it with more authority than its
writer. So every such read starts from a folder the server trusts (one model code cannot rename or
replace: its parent is the server's) and walks down one name at a time with `openat(..., O_NOFOLLOW)`:
a link planted anywhere on the way, a folder swapped for a link during the walk, a FIFO or a device
make the read fail instead of reaching outside. A size cap stops a file that is too large.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotConfined(OSError):
    """The path is a link, not a regular file, outside the folder it must be in, or too large."""


def parts_of(relative: str | PurePosixPath) -> list[str]:
    """The names of a relative path, refusing absolute paths, `..`, empty and `.` parts."""
    path = PurePosixPath(relative)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise NotConfined(f"{str(relative)!r} is not a plain relative path")
    return list(path.parts)


def open_dir(root: Path) -> int:
    """An fd of the trusted folder `root` itself (not followed if it is a link)."""
    return os.open(root, DIR_FLAGS)


def walk_dirs(root_fd: int, names: list[str]) -> int:
    """The fd of `root/names[0]/names[1]/...`, each step opened with O_NOFOLLOW (the caller closes it)."""
    fd = os.dup(root_fd)
    try:
        for name in names:
            following = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = following
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root_fd: int, relative: str | PurePosixPath, *, max_bytes: int | None = None) -> BinaryIO:
    """Open the regular file `relative` below the folder `root_fd` for reading, never through a link."""
    names = parts_of(relative)
    try:
        folder = walk_dirs(root_fd, names[:-1])
    except OSError as exc:
        raise NotConfined(f"{relative}: a folder on the way is missing or a link ({exc.strerror})") from None
    try:
        fd = os.open(names[-1], FILE_FLAGS, dir_fd=folder)
    except OSError as exc:
        raise NotConfined(f"{relative}: missing or a link ({exc.strerror})") from None
    finally:
        os.close(folder)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotConfined(f"{relative} is not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        os.close(fd)
        raise NotConfined(f"{relative} is larger than {max_bytes} bytes")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _relative_to(path: Path, root: Path) -> PurePosixPath:
    if not path.is_relative_to(root):
        raise NotConfined(f"{path.name} is outside the folder it must be in")
    return PurePosixPath(path.relative_to(root).as_posix())


def open_regular(path: Path, root: Path, *, max_bytes: int | None = None) -> BinaryIO:
    """Open `path` for reading if it is a regular file below the trusted folder `root`, with no link anywhere
    between them."""
    relative = _relative_to(path, root)
    root_fd = open_dir(root)
    try:
        return open_beneath(root_fd, relative, max_bytes=max_bytes)
    finally:
        os.close(root_fd)


def read_regular(path: Path, root: Path, *, max_bytes: int | None = None) -> bytes:
    with open_regular(path, root, max_bytes=max_bytes) as handle:
        return handle.read()


def write_new(target: Path, source: BinaryIO) -> None:
    """Write `source` to `target` in a folder the caller owns: under a temporary name, then renamed."""
    tmp = target.with_name(f".{target.name}.copy")
    tmp.unlink(missing_ok=True)
    with open(tmp, "xb") as dst:
        shutil.copyfileobj(source, dst, 1 << 20)
    os.replace(tmp, target)


def copy_regular(path: Path, root: Path, target: Path) -> None:
    """Copy a confined file to `target` (a folder of the caller's; replaced, never written through a link)."""
    with open_regular(path, root) as src:
        write_new(target, src)


def iter_regular(root_fd: int, prefix: PurePosixPath = PurePosixPath()) -> Iterator[PurePosixPath]:
    """Every regular file below the folder `root_fd` (relative names), links and special files left out."""
    with os.scandir(root_fd) as entries:
        listing = sorted((entry.name, entry.stat(follow_symlinks=False).st_mode) for entry in entries)
    for name, mode in listing:
        if stat.S_ISREG(mode):
            yield prefix / name
        elif stat.S_ISDIR(mode):
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=root_fd)
            except OSError:
                continue  # replaced by a link since it was listed
            try:
                yield from iter_regular(child, prefix / name)
            finally:
                os.close(child)


def regular_files(root: Path) -> list[Path]:
    """Every regular file below the trusted folder `root`, not following links (links and special files are
    left out); an absent folder, or a link, has none."""
    try:
        root_fd = open_dir(root)
    except OSError:
        return []
    try:
        return [root / relative for relative in iter_regular(root_fd)]
    finally:
        os.close(root_fd)


def copy_tree(root: Path, target: Path, *, max_bytes: int | None = None) -> list[PurePosixPath]:
    """Copy every regular file below the trusted folder `root` into `target` (the caller's), through fds
    only; the relative names copied (none when `root` is absent or a link)."""
    copied: list[PurePosixPath] = []
    try:
        root_fd = open_dir(root)
    except OSError:
        return copied
    try:
        for relative in list(iter_regular(root_fd)):
            try:
                source = open_beneath(root_fd, relative, max_bytes=max_bytes)
            except NotConfined:
                continue  # changed since it was listed
            with source:
                dest = target.joinpath(*relative.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                write_new(dest, source)
            copied.append(relative)
    finally:
        os.close(root_fd)
    return copied
