"""Safe unpacking of zip and tar archives (bundles, image archives): nothing lands outside the target.

Refused: members with absolute or `..` paths, symbolic and hard links, device files, FIFOs, and
archives past a member count or an unpacked size. Sizes are checked from the headers first (cheap,
before writing anything) and again while writing, since headers can lie.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

DEFAULT_MAX_BYTES = 8 * 1024**3
DEFAULT_MAX_MEMBERS = 100_000
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The file is not an archive we unpack, or a member is unsafe, or it is too large."""


@dataclass
class _Budget:
    """Bytes written so far against the cap, counted while writing."""

    name: str
    max_bytes: int
    written: int = 0

    def copy(self, src: IO[bytes], out: IO[bytes]) -> None:
        while chunk := src.read(_CHUNK):
            self.written += len(chunk)
            if self.written > self.max_bytes:
                raise ArchiveError(f"{self.name} unpacks to more than {self.max_bytes} bytes")
            out.write(chunk)


def is_archive(path: Path) -> bool:
    """A regular file that is a zip or a tar (compressed or not)."""
    try:
        return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))
    except OSError:
        return False


def safe_extract(
    archive: Path, dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_members: int = DEFAULT_MAX_MEMBERS
) -> None:
    """Unpack a zip, tar or tar.gz into `dest`; `ArchiveError` for anything unsafe (see the module doc)."""
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, root, max_bytes, max_members)
        else:
            _extract_tar(archive, root, max_bytes, max_members)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"{archive.name} is not a zip, tar or tar.gz archive we can unpack: {exc}") from None
    except OSError as exc:
        raise ArchiveError(f"{archive.name} could not be unpacked: {exc.strerror or exc}") from None


def _target(root: Path, name: str) -> Path | None:
    """Where member `name` goes under `root` (None: the root itself); `ArchiveError` if it would escape."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise ArchiveError(f"archive member {name!r} is an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {name!r} escapes the target folder")
    if not parts:
        return None
    target = root.joinpath(*parts)
    # Only folders and regular files are ever written, so no link can redirect a later member.
    if not target.resolve().is_relative_to(root):
        raise ArchiveError(f"archive member {name!r} escapes the target folder")
    return target


def _too_many(archive: Path, max_members: int) -> ArchiveError:
    return ArchiveError(f"{archive.name} has more than {max_members} members")


def _too_big(archive: Path, max_bytes: int) -> ArchiveError:
    return ArchiveError(f"{archive.name} unpacks to more than {max_bytes} bytes")


def _extract_zip(archive: Path, root: Path, max_bytes: int, max_members: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise _too_many(archive, max_members)
        declared = 0
        for info in infos:
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no Unix mode
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(f"archive member {info.filename!r} is a link or a special file")
            _target(root, info.filename)
            declared += info.file_size
        if declared > max_bytes:
            raise _too_big(archive, max_bytes)
        budget = _Budget(archive.name, max_bytes)
        for info in infos:
            target = _target(root, info.filename)
            if target is None:
                continue
            if info.is_dir() or stat.S_IFMT(info.external_attr >> 16) == stat.S_IFDIR:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                budget.copy(src, out)


def _extract_tar(archive: Path, root: Path, max_bytes: int, max_members: int) -> None:
    with tarfile.open(archive) as tf:
        members: list[tarfile.TarInfo] = []
        declared = 0
        for member in tf:  # headers only: nothing is written until every member was checked
            if len(members) >= max_members:
                raise _too_many(archive, max_members)
            if member.issym() or member.islnk():
                raise ArchiveError(f"archive member {member.name!r} is a link")
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"archive member {member.name!r} is a device, FIFO or other special file")
            _target(root, member.name)
            declared += member.size
            if declared > max_bytes:
                raise _too_big(archive, max_bytes)
            members.append(member)
        budget = _Budget(archive.name, max_bytes)
        for member in members:
            target = _target(root, member.name)
            if target is None:
                continue
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            if src is None:
                raise ArchiveError(f"archive member {member.name!r} cannot be read")
            with src, open(target, "wb") as out:
                budget.copy(src, out)
