"""Test helpers: reading multipart replies and NRRD bytes, Dice, and waiting on conditions."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import nibabel as nib
import numpy as np
from requests_toolbelt.multipart.decoder import MultipartDecoder


def multipart_parts(resp) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Decode a multipart reply the way guide 000 does (name parsed out of Content-Disposition)."""
    decoder = MultipartDecoder(resp.content, resp.headers["Content-Type"])
    parts = {}
    for part in decoder.parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        assert set(part.headers) == {b"Content-Disposition"}, part.headers
        parts[disposition.split(";")[1].split("=")[1].strip('"')] = part.content
    return parts


def nrrd_voxels(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Read the last N bytes as uint8 voxels, first axis fastest (what the OHIF plugin does)."""
    count = int(np.prod(shape))
    assert b"encoding: raw" in data[: data.index(b"\n\n")]
    return np.frombuffer(data[-count:], dtype=np.uint8).reshape(shape, order="F")


def nifti_array(path) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(nib.load(str(path)).dataobj)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def csv_rows(data: bytes) -> list[list[str]]:
    return [line.split(",") for line in io.StringIO(data.decode()).read().strip().splitlines()]
