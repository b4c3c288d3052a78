"""Safe unpacking of zip and tar archives (bundles, image archives): nothing lands outside the target."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path


class ArchiveError(ValueError):
    """The file is not an archive we unpack, or a member would escape the target folder."""


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a zip, tar or tar.gz into `dest`; members escaping it (or links, for tar) are refused."""
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise ArchiveError(f"archive member {member!r} escapes the target folder")
            zf.extractall(root)
        return
    try:
        with tarfile.open(archive) as tf:
            tf.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{archive.name} is not a zip, tar or tar.gz archive: {exc}") from None
