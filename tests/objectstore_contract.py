"""The data-source contract of object-storage datasets, shared by the S3/Azure/local tests (test_objectstore.py)
and the GCS tests (test_gcs.py): a store under test, the small dataset put there, and what reading it back
must give."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcloud.sources.objectstore import ObjectStoreSource


@dataclass
class Store:
    """One kind of store under test: how to put a folder there and how a client names it."""

    name: str
    base: str  # client URL of the bucket/container (or local folder), no trailing slash
    client_id: str | None
    client_secret: str | None
    put: Callable[[Path, str], None]  # (local folder, prefix)
    endpoint_url: str | None = None

    def url(self, prefix: str) -> str:
        return f"{self.base}/{prefix}"

    def open(self, url: str) -> ObjectStoreSource:
        return ObjectStoreSource.open(url, self.client_id, self.client_secret, endpoint_url=self.endpoint_url)


def write_dataset(
    folder: Path,
    *,
    files_under: str = "",
    manifest: dict[str, Any] | None = None,
    manifest_name: str = "manifest.json",
) -> dict[str, bytes]:
    """A small dataset with random bytes: its files by path relative to the root, manifest written."""
    files = {
        "imagesTr/a.nii.gz": os.urandom(3000),
        "labelsTr/a.nii.gz": os.urandom(500),
        "imagesTr/b.nii.gz": os.urandom(1200),
        "multi/x.bin": os.urandom(10),
        "multi/y.bin": os.urandom(20),
        **{f"dcm/series1/{i}.dcm": os.urandom(300 + i) for i in range(3)},
    }
    for rel, data in files.items():
        path = folder / files_under / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    doc = manifest if manifest is not None else {}
    doc.setdefault(
        "data",
        [
            {
                "image": {"path": ["imagesTr/a.nii.gz"], "id": "img-a"},
                "label": {"path": ["labelsTr/a.nii.gz"], "id": "lab-a"},
            },
            {"image": {"path": "imagesTr/b.nii.gz", "id": "img-b"}},
            {"image": {"path": ["multi/x.bin", "multi/y.bin"], "id": "img-multi"}},
            {"image": {"path": ["dcm/series1"], "id": "series-1"}},  # a folder: a DICOM series
            {"comment": "not an image"},
        ],
    )
    (folder / manifest_name).write_text(json.dumps(doc))
    return files


def fetched(paths: list[Path], dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in paths}


def assert_contract(source: ObjectStoreSource, files: dict[str, bytes], dest: Path) -> None:
    """The listing, labels and the bytes of every fetched file match the originals."""
    assert [i.id for i in source.images()] == ["img-a", "img-b", "img-multi", "series-1"]
    assert source.unlabeled_ids() == ["img-b", "img-multi", "series-1"]
    assert source.get("img-a").label_id == "lab-a" and source.meta("img-b") == {"labels": []}
    expected = {
        "img-a": ["imagesTr/a.nii.gz"],
        "img-b": ["imagesTr/b.nii.gz"],
        "img-multi": ["multi/x.bin", "multi/y.bin"],
        "series-1": [f"dcm/series1/{i}.dcm" for i in range(3)],
    }
    for image_id, rels in expected.items():
        got = fetched(source.fetch(image_id, dest / image_id), dest / image_id)
        assert got == {rel: files[rel] for rel in rels}, image_id
    label = fetched(source.fetch_label("img-a", dest / "label"), dest / "label")
    assert label == {"labelsTr/a.nii.gz": files["labelsTr/a.nii.gz"]}
    again = source.fetch("img-a", dest / "img-a")  # overwriting an earlier download is fine
    assert again[0].read_bytes() == files["imagesTr/a.nii.gz"]
    assert not [p for p in dest.rglob("*") if p.name.endswith(".part")]
