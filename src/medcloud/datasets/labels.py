"""Saving a label a viewer drew: check the NRRD against the image, store it in the dataset, record a `notify`.

Object storage (and local folders): the label becomes `<image stem>_label.nii.gz` (uint8, the image's affine)
beside the image's first path, and the manifest entry's `label_key[0]` names it; the manifest is re-read and
rewritten under one lock per dataset, atomically where the store allows. DICOMweb: the label becomes a DICOM
SEG (highdicom, BINARY, referencing the series' instances) stored by STOW-RS; its SeriesInstanceUID is the
label id. Either way the change is then recorded exactly as the `notify` action records it.

The NRRD's size is checked against `MEDCLOUD_MAX_VOXELS` from its header before anything is read, and the
saves of one image (and the manifest rewrites of one dataset) are serialized across every API process on
the data dir (`datasets/label_locks.py`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import posixpath
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import nrrd
import numpy as np

from medcloud.context import Context
from medcloud.datasets import actions, label_locks
from medcloud.datasets.orm import Dataset
from medcloud.datasets.volumes import Volume, image_files, load_volume
from medcloud.errors import Invalid, Unavailable
from medcloud.imaging import voxels
from medcloud.sources.manifest import parse_manifest
from medcloud.sources.manifest_cache import MANIFESTS

GEOMETRY_TOLERANCE_MM = 1e-3
LABEL_SUFFIX = "_label.nii.gz"
# NRRD type names (all spellings of the format) of the integer types a label may arrive in.
_TYPES = {
    np.dtype(np.uint8): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype(np.int8): ("signed char", "int8", "int8_t"),
    np.dtype(np.uint16): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype(np.int16): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
}
_DTYPE_OF = {name: dtype for dtype, names in _TYPES.items() for name in names}
_RAS = ("right-anterior-superior", "ras", "3d-right-handed")
_LPS = ("left-posterior-superior", "lps")


@dataclass(frozen=True)
class SavedLabel:
    image: str
    label: str
    notify: str  # "added" or "updated"
    voxels: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {"image": self.image, "label": self.label, "notify": self.notify, "voxels": self.voxels}


def parse_label_nrrd(body: bytes, image: Volume) -> np.ndarray:
    """The label volume (uint8, `[x, y, z]`) of an NRRD body; `Invalid` naming what is wrong with it.

    Raw or gzip encoding, an integer type with values 0..255, the image's sizes, and space directions and
    origin equal to the image's within `GEOMETRY_TOLERANCE_MM` (RAS or LPS space).
    """
    if not body.startswith(b"NRRD000"):
        raise Invalid("The body is not an NRRD file (it must start with `NRRD000`).")
    stream = io.BytesIO(body)
    try:
        header = nrrd.read_header(stream)
    except Exception as exc:  # noqa: BLE001 - pynrrd raises several kinds for a malformed header
        raise Invalid(f"The NRRD header cannot be read: {exc}") from None
    dtype = _check_header(header, image)
    expected = int(np.prod(image.shape)) * dtype.itemsize
    data = _payload(body, stream.tell(), str(header.get("encoding", "")).lower(), expected)
    volume = np.frombuffer(data, dtype=dtype).reshape(image.shape, order="F")
    if dtype != np.uint8:
        low, high = int(volume.min()), int(volume.max())
        if low < 0 or high > 255:
            raise Invalid(f"Label values must lie in 0..255; this volume has values from {low} to {high}.")
        volume = volume.astype(np.uint8)
    return volume


def check_label_size(body: bytes, max_voxels: int) -> None:
    """`Invalid` when the NRRD's header declares more than `max_voxels` voxels: checked before the image is
    read or a byte of the label is decompressed (a malformed header is left to `parse_label_nrrd`)."""
    if not body.startswith(b"NRRD000"):
        return
    try:
        header = nrrd.read_header(io.BytesIO(body))
    except Exception:  # noqa: BLE001, S110 - parse_label_nrrd reports a malformed header in words
        return
    if "sizes" in header:
        voxels.check_shape(voxels.nrrd_shape(header), max_voxels, what="The label")


def _check_header(header: dict[str, Any], image: Volume) -> np.dtype:
    for key in ("data file", "datafile"):
        if key in header:
            raise Invalid("Detached NRRD data (`data file`) is not accepted; send the voxels in the body.")
    for key in ("line skip", "lineskip", "byte skip", "byteskip"):
        if int(header.get(key, 0) or 0) != 0:
            raise Invalid(f"The NRRD field `{key}` is not accepted.")
    if int(header.get("dimension", 0)) != 3:
        raise Invalid(f"The label must be a 3-D volume; this NRRD has dimension {header.get('dimension')}.")
    kind = str(header.get("type", "")).strip().lower()
    if kind not in _DTYPE_OF:
        raise Invalid(f"The label voxel type `{kind}` is not accepted; send uint8 (or int8, uint16, int16).")
    dtype = _DTYPE_OF[kind]
    if dtype.itemsize > 1:
        endian = str(header.get("endian", "little")).lower()
        if endian not in ("little", "big"):
            raise Invalid(f"The NRRD endian `{endian}` is neither little nor big.")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    encoding = str(header.get("encoding", "")).lower()
    if encoding not in ("raw", "gzip", "gz"):
        raise Invalid(f"The NRRD encoding `{encoding}` is not accepted; send raw or gzip.")
    sizes = tuple(int(n) for n in header.get("sizes", ()))
    if sizes != image.shape:
        raise Invalid(f"The label's sizes {list(sizes)} differ from the image's {list(image.shape)}.")
    _check_geometry(header, image)
    return dtype


def _check_geometry(header: dict[str, Any], image: Volume) -> None:
    if "space directions" not in header or "space origin" not in header:
        raise Invalid("The label NRRD needs `space directions` and `space origin` (those of the image).")
    space = str(header.get("space", "right-anterior-superior")).strip().lower()
    if space not in (*_RAS, *_LPS):
        raise Invalid(f"The label NRRD's space `{space}` is not accepted; use right-anterior-superior.")
    flip = np.array([-1.0, -1.0, 1.0]) if space in _LPS else np.ones(3)
    try:
        directions = np.asarray(header["space directions"], dtype=float).reshape(3, 3) * flip
        origin = np.asarray(header["space origin"], dtype=float).reshape(3) * flip
    except (TypeError, ValueError):
        raise Invalid("The label NRRD's space directions or origin are not 3 vectors of 3 numbers.") from None
    want_directions, want_origin = image.affine[:3, :3].T, image.affine[:3, 3]
    problems = []
    if not np.all(np.abs(directions - want_directions) <= GEOMETRY_TOLERANCE_MM):
        problems.append(f"space directions {_fmt(directions)} (the image's: {_fmt(want_directions)})")
    if not np.all(np.abs(origin - want_origin) <= GEOMETRY_TOLERANCE_MM):
        problems.append(f"space origin {_fmt(origin)} (the image's: {_fmt(want_origin)})")
    if problems:
        raise Invalid(f"The label does not lie on the image's grid (RAS mm, within 1e-3): {'; '.join(problems)}.")


def _fmt(values: np.ndarray) -> str:
    return json.dumps(np.round(values, 4).tolist())


def _payload(body: bytes, offset: int, encoding: str, expected: int) -> bytes | memoryview:
    """Exactly `expected` bytes of voxels after the header, decompressed; `Invalid` when there are more or fewer."""
    data = memoryview(body)[offset:]
    if encoding in ("gzip", "gz"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib framing
        try:
            out = inflate.decompress(data, expected + 1)  # a bomb stops one byte past what is expected
        except zlib.error as exc:
            raise Invalid(f"The NRRD's gzip data cannot be decompressed: {exc}.") from None
        if len(out) <= expected and not inflate.eof:
            raise Invalid(f"The NRRD's gzip data is truncated: {len(out)} bytes of voxels where {expected} are needed.")
        data = memoryview(out)
    if len(data) != expected:
        word = "truncated" if len(data) < expected else "too long"
        raise Invalid(f"The NRRD's voxel data is {word}: {len(data)} bytes where {expected} are needed.")
    return data


def check_values(volume: np.ndarray, labels: dict[str, str] | None) -> dict[str, int]:
    """Voxel counts per non-zero label value; `Invalid` naming values that are not keys of `labels`."""
    counts = np.bincount(volume.ravel(order="K"), minlength=256)
    present = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if v != 0}
    if labels is not None:
        allowed = {int(k) for k in labels}
        unknown = sorted(set(present) - allowed)
        if unknown:
            raise Invalid(
                f"Label value(s) {', '.join(map(str, unknown))} are not in the experiment's labels "
                f"(allowed: 0 and {', '.join(str(k) for k in sorted(allowed))})."
            )
    return {str(k): v for k, v in sorted(present.items())}


def save_label(ctx: Context, *, row: Dataset, image_id: str, body: bytes, labels: dict[str, str] | None) -> SavedLabel:
    """Check the NRRD and store it as the image's label (blocking storage I/O); the notification is the caller's.

    `labels` is the experiment's `model_params.labels` (None: no experiment given, any 1..255 accepted;
    DICOMweb datasets always have one, checked by the caller).
    """
    check_label_size(body, ctx.settings.max_voxels)
    files, source = image_files(ctx, row, image_id)
    image = load_volume(files, image_id, max_voxels=ctx.settings.max_voxels)
    volume = parse_label_nrrd(body, image)
    counts = check_values(volume, labels)
    from medcloud.datasets import service
    from medcloud.sources.objectstore import ObjectStoreSource

    source = source or service.source_of(row, ctx.box, settings=ctx.settings)
    # One save of this image at a time, in any API process on this data dir: the last one wins whole.
    with label_locks.exclusive(ctx.settings.data_dir, row.id, image_id):
        if isinstance(source, ObjectStoreSource):
            label_id, section = _save_to_objectstore(ctx, row, source, image_id, volume, image)
        else:
            label_id, section = _save_to_dicomweb(source, image_id, volume, files, labels or {})
    return SavedLabel(image=image_id, label=label_id, notify=section, voxels=counts)


def record(ctx: Context, *, session: Any, row: Dataset, saved: SavedLabel) -> None:
    """The same durable rows as the `notify` action (the caller commits, then wakes the hub)."""
    actions.notify(ctx, session=session, row=row, specs={saved.notify: [{"image": saved.image, "label": saved.label}]})


# Object storage ------------------------------------------------------------------------------------------


def _label_path(image_path: str) -> str:
    """`<folder>/<stem>_label.nii.gz` beside the image's first path (a file, or a DICOM series' folder)."""
    folder, name = posixpath.split(image_path.rstrip("/"))
    lowered = name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if lowered.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return posixpath.join(folder, name + LABEL_SUFFIX) if folder else name + LABEL_SUFFIX


def _nifti_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.uint8), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _put(fs: Any, protocol: str, path: str, data: bytes) -> None:
    """Write a whole file: temp file and rename on a local disk, one put on an object store."""
    if protocol == "file":
        tmp = f"{path}.{uuid.uuid4().hex}.part"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        fs.pipe_file(path, data)
    fs.invalidate_cache(path)


def _same_id(value: Any, image_id: str) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int | str) and str(value).strip() == image_id


def _save_to_objectstore(
    ctx: Context, row: Dataset, source: Any, image_id: str, volume: np.ndarray, image: Volume
) -> tuple[str, str]:
    """Write the label file and the manifest entry under the dataset's lock; (label id, notify section)."""
    from medcloud.sources.objectstore import storage_errors

    fs, location = source.fs, source.location
    nifti = _nifti_bytes(volume, image.affine)
    # the manifest is read, changed and written whole: one writer per dataset, across processes
    with label_locks.exclusive(ctx.settings.data_dir, row.id), storage_errors(location, fault=Unavailable):
        raw = source.read_manifest_bytes()  # re-read: another save may have changed it since the request began
        manifest = parse_manifest(raw, source=location.url)
        entry = next((m for m in manifest.images if m.id == image_id), None)
        if entry is None:
            raise Invalid(f"Image {image_id} is no longer in the dataset's manifest.")
        doc = json.loads(raw.decode("utf-8-sig"))
        key = manifest.label_key[0]
        target = _label_path(entry.paths[0])
        ours = entry.label_id is not None and entry.label_paths == (target,)
        if not ours and fs.exists(posixpath.join(source.root, target)):
            # a file of the user's (not this image's label) already has the name: never overwrite it
            target = target.removesuffix(LABEL_SUFFIX) + f"_label_{uuid.uuid4().hex[:8]}.nii.gz"
        label_id = entry.label_id or str(uuid.uuid4())
        _put(fs, location.protocol, posixpath.join(source.root, target), nifti)
        for item in doc["data"]:
            if (
                isinstance(item, dict)
                and isinstance(item.get("image"), dict)
                and _same_id(item["image"].get("id"), image_id)
            ):
                old = item.get(key) if isinstance(item.get(key), dict) else {}
                item[key] = {**old, "path": [target], "id": label_id}
                break
        _put(fs, location.protocol, location.manifest_path, json.dumps(doc, indent=2).encode("utf-8"))
    MANIFESTS.forget(row.id)
    ctx.cache.forget(row.id, f"label:{label_id}")  # the same id now names other voxels
    return label_id, "updated" if entry.label_id is not None else "added"


# DICOMweb ------------------------------------------------------------------------------------------------


def _save_to_dicomweb(
    source: Any, image_id: str, volume: np.ndarray, files: list, labels: dict[str, str]
) -> tuple[str, str]:
    """A SEG of the label stored by STOW-RS on the dataset's server; (its SeriesInstanceUID, notify section)."""
    from medcloud.imaging.seg import labels_to_seg

    had_label = bool(source.labels_of(image_id))
    dicom = [f for f in files if str(f).endswith(".dcm")]
    try:
        seg = labels_to_seg(volume, dicom, labels, series_description="medcloud label", algorithm=None)
    except ValueError as exc:
        raise Invalid(f"The label cannot be stored as a DICOM SEG: {exc}") from None
    source.store([seg])
    return str(seg.SeriesInstanceUID), "updated" if had_label else "added"
