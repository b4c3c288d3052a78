"""Inference outputs: the multipart answer split into files, written safely, and NRRD read with its geometry."""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from medcloud.client.errors import ClientError

_NAME = re.compile(r'\bname="([^"]*)"|\bname=([^;\s]+)')


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of a `multipart/form-data` answer by their `Content-Disposition` name (as guide 000 reads them).

    Example:
        >>> parse_multipart(b'--b\\r\\nContent-Disposition: form-data; name="x.csv"\\r\\n\\r\\n1,2\\r\\n--b--\\r\\n',
        ...                 "multipart/form-data; boundary=b")
        {'x.csv': b'1,2'}
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/") or match is None:
        raise ClientError(f"The inference answer is not multipart (Content-Type: {content_type or 'none'}).")
    delimiter = b"--" + match.group(1).encode()
    parts: dict[str, bytes] = {}
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ClientError("The inference answer has a multipart part without headers.")
        disposition = next(
            (line.split(b":", 1)[1].decode("utf-8", "replace") for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-disposition:")),
            "",
        )  # fmt: skip
        named = _NAME.search(disposition)
        if named is None:
            raise ClientError(f"A multipart part has no name: {disposition!r}.")
        parts[named.group(1) or named.group(2)] = content
    return parts


def safe_relative(name: str) -> PurePosixPath:
    """`name` as a relative path inside an output folder; an absolute name or `..` is refused."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or any(part in ("..", "") for part in path.parts) or ":" in path.parts[0]:
        raise ClientError(f"Refusing to write an output named {name!r} outside the output folder.")
    return path


def write_outputs(files: dict[str, bytes], out_dir: Path) -> dict[str, Path]:
    """Write each output under `out_dir` (created) and return name → path; each file appears whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in files.items():
        target = out_dir.joinpath(*safe_relative(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written[name] = target
    return written


@dataclass(frozen=True)
class Volume:
    """An NRRD volume: voxels in the file's axis order (first axis = NRRD's fastest) and where they lie.

    `space_directions` has one row per axis (the step of that axis in mm), `origin` the first voxel's
    position; `affine` is the 4x4 voxel-index → `space` matrix (RAS for medcloud's outputs).
    """

    array: np.ndarray
    space_directions: np.ndarray | None
    origin: np.ndarray | None
    space: str | None

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k, 1) to position; identity where the file has no geometry."""
        affine = np.eye(4)
        if self.space_directions is not None:
            affine[:3, :3] = np.asarray(self.space_directions, dtype=float).T
        if self.origin is not None:
            affine[:3, 3] = np.asarray(self.origin, dtype=float)
        return affine


def read_nrrd(data: bytes) -> Volume:
    """Read an NRRD file's bytes (pynrrd) into a `Volume`.

    Example:
        >>> seg = read_nrrd(outputs["image_seg.nrrd"])
        >>> seg.array.shape, seg.affine
    """
    import nrrd

    handle = io.BytesIO(data)
    try:
        header = nrrd.read_header(handle)
        array = nrrd.read_data(header, handle, index_order="F")
    except (nrrd.NRRDError, ValueError) as err:
        raise ClientError(f"Not a readable NRRD file: {err}") from None
    directions = header.get("space directions")
    origin = header.get("space origin")
    return Volume(
        array=array,
        space_directions=None if directions is None else np.asarray(directions, dtype=float),
        origin=None if origin is None else np.asarray(origin, dtype=float),
        space=header.get("space"),
    )
