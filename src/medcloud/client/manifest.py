"""Build the `manifest.json` of an object-storage dataset from a local folder of images and labels.

What counts as an image:
    * a NIfTI file (`.nii`, `.nii.gz`), a PNG or a JPEG file (`.png`, `.jpg`, `.jpeg`);
    * a DICOM series: the `.dcm` files of one folder, and its files without extension that pydicom
      reads. A folder holding several series gives one image per SeriesInstanceUID.
    Hidden files and folders (`.name`), the manifest itself and other files are left out (reported).

How labels are found and matched (a label file is `.nii`, `.nii.gz`, `.nrrd` or `.png`):
    1. Label folders: every top-level folder whose name starts with `labels` (`labelsTr`, `labels`),
       or only the folder given as `labels` (`--labels-dir`). A label at `<labels folder>/<r>.<ext>`
       matches the image whose path without extension is `<r>` below its own top-level folder (or
       below the dataset folder): `labelsTr/x.nii.gz` ↔ `imagesTr/x.nii.gz`, `labelsTr/ct1.nii.gz` ↔
       the DICOM series folder `imagesTr/ct1/`. When several images match, the one in the images
       folder of the same suffix (`labelsTr` ↔ `imagesTr`) wins; otherwise it is an error.
    2. Suffixes: outside label folders, a file named `<stem>_seg`, `_label`, `_labels` or `_mask`
       plus a label extension is the label of the image `<stem>` in the same folder (`x.nii.gz`,
       `x.png`, or the DICOM series folder `x/`): `case1_seg.nii.gz` ↔ `case1.nii.gz`.
    A label that matches no image is an error naming it (`ignore_unmatched=True` leaves it out); an
    image with two labels is an error. Images without a label are listed unlabeled.

Ids are stable across runs: uuid5 of the path relative to the folder (the same namespace as the demo
dataset), of the series folder for a DICOM series (`folder#SeriesInstanceUID` when the folder holds
several series). `write_manifest` writes to a temporary file and renames it: nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The demo dataset's namespace (`medcloud.demo.synthetic.stable_id`): the same relative path gets the same id.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://medcloud.local/demo-dataset")
_IMAGE_EXTS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg")
_LABEL_EXTS = (".nii.gz", ".nii", ".nrrd", ".png")
_LABEL_MARKER = re.compile(r"^(?P<stem>.+?)_(?:seg|label|labels|mask)$", re.IGNORECASE)
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """The folder cannot become a manifest (unmatched or ambiguous labels, an unreadable file); the message says why."""


@dataclass
class ManifestPlan:
    """A built manifest (`manifest`, ready for `json.dump`) and what was left out of it."""

    manifest: dict[str, Any]
    ignored_labels: list[str] = field(default_factory=list)  # unmatched labels, left out on request
    skipped_files: list[str] = field(default_factory=list)  # files that are neither image nor label

    @property
    def labeled(self) -> int:
        """How many images have a label."""
        return sum(1 for entry in self.manifest["data"] if "label" in entry)


@dataclass
class _Image:
    key: str  # path relative to the folder, without extension (a series: its folder, plus #uid if several)
    paths: list[str]
    id_source: str
    top: str  # first path segment ("" for a file at the root)
    label: str | None = None


def stable_id(relative_path: str) -> str:
    """The uuid5 id of a path relative to the dataset folder (equal to the demo dataset's ids)."""
    return str(uuid.uuid5(_ID_NAMESPACE, relative_path))


def build_manifest(
    folder: str | Path,
    *,
    labels: str | Path | None = None,
    ignore_unmatched: bool = False,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Build the manifest of `folder` and write it to `output` (default `folder/manifest.json`).

    Args:
        folder: the dataset folder; manifest paths are relative to it.
        labels: the labels folder, relative to `folder` (default: top-level folders named `labels*`).
        ignore_unmatched: leave out labels that match no image instead of failing.
        output: where to write the manifest.

    Returns:
        The manifest written: `{"label_key": ["label"], "data": [{"image": {...}, "label": {...}}, ...]}`.

    Raises:
        ManifestError: unmatched or ambiguous labels, an unreadable file, no image; nothing is written.

    Example:
        >>> build_manifest("spleen", labels="labelsTr")["data"][0]["image"]["path"]
        ['imagesTr/spleen_1.nii.gz']
    """
    plan = plan_manifest(folder, labels=labels, ignore_unmatched=ignore_unmatched)
    write_manifest(plan.manifest, Path(output) if output else Path(folder) / MANIFEST_NAME)
    return plan.manifest


def plan_manifest(
    folder: str | Path, *, labels: str | Path | None = None, ignore_unmatched: bool = False
) -> ManifestPlan:
    """The manifest of `folder` and what was left out, without writing anything (see the module's rules)."""
    root = Path(folder)
    if not root.is_dir():
        raise ManifestError(f"{root} is not a folder.")
    label_dirs = _label_dirs(root, labels)
    images, label_files, skipped = _scan(root, label_dirs)
    if not images:
        raise ManifestError(f"No images (NIfTI, DICOM series, PNG or JPEG) found in {root}.")
    unmatched = _match(images, label_files, label_dirs)
    if unmatched and not ignore_unmatched:
        raise ManifestError(
            f"{len(unmatched)} label(s) match no image: {', '.join(unmatched)}. "
            "Name each like its image (labelsTr/x.nii.gz for imagesTr/x.nii.gz, or x_seg.nii.gz next to "
            "x.nii.gz), or pass --ignore-unmatched to leave them out."
        )
    data = []
    for image in sorted(images, key=lambda i: i.key):
        entry: dict[str, Any] = {"image": {"path": image.paths, "id": stable_id(image.id_source)}}
        if image.label is not None:
            entry["label"] = {"path": [image.label], "id": stable_id(image.label)}
        data.append(entry)
    return ManifestPlan({"label_key": ["label"], "data": data}, ignored_labels=unmatched, skipped_files=skipped)


def write_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    """Write `manifest` as JSON to `path` atomically (a temporary file in the same folder, then a rename)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _label_dirs(root: Path, labels: str | Path | None) -> list[str]:
    """Label folders as paths relative to `root`."""
    if labels is None:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("labels"))
    given = Path(labels)
    path = given if given.is_absolute() else root / given
    if not path.is_dir():
        raise ManifestError(f"The labels folder {labels} does not exist in {root}.")
    try:
        return [path.resolve().relative_to(root.resolve()).as_posix()]
    except ValueError:
        raise ManifestError(f"The labels folder {labels} is not inside {root}.") from None


def _ext(name: str, exts: tuple[str, ...]) -> str | None:
    lower = name.lower()
    return next((e for e in exts if lower.endswith(e)), None)


def _scan(root: Path, label_dirs: list[str]) -> tuple[list[_Image], list[str], list[str]]:
    """(images, label files, skipped files), paths relative to `root`, walked in sorted order."""
    images: list[_Image] = []
    labels: list[str] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        in_labels = any(rel_dir == d or rel_dir.startswith(d + "/") for d in label_dirs)
        dicom_candidates: list[str] = []
        for name in sorted(f for f in filenames if not f.startswith(".")):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel == MANIFEST_NAME:
                continue
            ext = _ext(name, _LABEL_EXTS)
            if ext and (in_labels or _LABEL_MARKER.match(name[: -len(ext)])):
                labels.append(rel)
            elif in_labels:
                skipped.append(rel)
            elif ext := _ext(name, _IMAGE_EXTS):
                _check_readable(root / rel, rel, ext)
                images.append(_Image(rel[: -len(ext)], [rel], rel, rel.split("/", 1)[0] if rel_dir else ""))
            elif name.lower().endswith(".dcm") or "." not in name:
                dicom_candidates.append(rel)
            else:
                skipped.append(rel)
        if dicom_candidates and not in_labels:
            found, not_dicom = _series(root, rel_dir, dicom_candidates)
            images += found
            skipped += not_dicom
    return images, labels, skipped


def _series(root: Path, rel_dir: str, files: list[str]) -> tuple[list[_Image], list[str]]:
    """One image per SeriesInstanceUID among `files` of the folder `rel_dir`; files that are not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[str]] = defaultdict(list)
    not_dicom: list[str] = []
    for rel in files:
        try:
            ds = pydicom.dcmread(root / rel, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except InvalidDicomError:
            if rel.lower().endswith(".dcm"):
                raise ManifestError(f"{rel} cannot be read as DICOM: it has no DICOM header.") from None
            not_dicom.append(rel)  # a README or LICENSE without extension
            continue
        except OSError as exc:
            raise ManifestError(f"{rel} cannot be read: {exc.strerror or exc}.") from None
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise ManifestError(f"{rel} is a DICOM file without a SeriesInstanceUID.")
        groups[uid].append(rel)
    if not rel_dir and groups:
        raise ManifestError("DICOM files must be in a folder per series, not at the top of the dataset folder.")
    top = rel_dir.split("/", 1)[0]
    several = len(groups) > 1
    images = [
        _Image(
            f"{rel_dir}#{uid}" if several else rel_dir, sorted(paths), f"{rel_dir}#{uid}" if several else rel_dir, top
        )
        for uid, paths in sorted(groups.items())
    ]
    return images, not_dicom


def _check_readable(path: Path, rel: str, ext: str) -> None:
    """`ManifestError` naming `rel` when it is not the image its extension says (header only)."""
    try:
        if ext in (".nii", ".nii.gz"):
            import nibabel as nib

            nib.load(str(path)).header  # noqa: B018 - parses the header, which is all we need to know
            return
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ManifestError(f"{rel} cannot be read: {exc.strerror or exc}.") from None
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds for a bad header
        raise ManifestError(f"{rel} cannot be read as NIfTI: {exc}.") from None
    magic = b"\x89PNG\r\n\x1a\n" if ext == ".png" else b"\xff\xd8\xff"
    if not head.startswith(magic):
        kind = "PNG" if ext == ".png" else "JPEG"
        raise ManifestError(f"{rel} cannot be read as {kind}: its first bytes are not a {kind} signature.")


def _match(images: list[_Image], labels: list[str], label_dirs: list[str]) -> list[str]:
    """Attach each label to its image (see the module's rules); return the labels that match none."""
    by_key: dict[str, list[_Image]] = defaultdict(list)
    for image in images:
        by_key[image.key].append(image)
        if image.top and "/" in image.key:
            by_key["|" + image.key.split("/", 1)[1]].append(image)  # below its top-level folder
    unmatched: list[str] = []
    for label in sorted(labels):
        image = _image_for(label, label_dirs, by_key)
        if image is None:
            unmatched.append(label)
        elif image.label is not None:
            raise ManifestError(f"Image {image.paths[0]} has two labels: {image.label} and {label}.")
        else:
            image.label = label
    return unmatched


def _image_for(label: str, label_dirs: list[str], by_key: dict[str, list[_Image]]) -> _Image | None:
    ext = _ext(label, _LABEL_EXTS) or ""
    stem_path = label[: -len(ext)]
    folder = next((d for d in label_dirs if label.startswith(d + "/")), None)
    if folder is None:  # the suffix rule: x_seg.nii.gz next to x
        marker = _LABEL_MARKER.match(stem_path.rsplit("/", 1)[-1])
        parent = stem_path.rsplit("/", 1)[0] if "/" in stem_path else ""
        key = f"{parent}/{marker['stem']}" if parent and marker else (marker["stem"] if marker else stem_path)
        found = by_key.get(key, [])
        return found[0] if len(found) == 1 else None
    rest = stem_path[len(folder) + 1 :]
    marker = _LABEL_MARKER.match(rest.rsplit("/", 1)[-1])
    keys = [rest] + ([rest[: len(rest) - len(rest.rsplit("/", 1)[-1])] + marker["stem"]] if marker else [])
    found = [i for k in keys for i in (*by_key.get(k, []), *by_key.get("|" + k, []))]
    found = list({id(i): i for i in found}.values())
    if len(found) > 1:  # labelsTr ↔ imagesTr
        twin = "images" + folder.split("/", 1)[0][len("labels") :]
        preferred = [i for i in found if i.top.lower() == twin.lower()]
        if len(preferred) != 1:
            raise ManifestError(
                f"Label {label} matches several images ({', '.join(i.paths[0] for i in found)}); "
                "move it next to its image as <name>_seg.<ext>, or name the labels folder like the images folder."
            )
        return preferred[0]
    return found[0] if found else None
