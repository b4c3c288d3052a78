"""Manifest parsing and validation rules (API.md §4), with no storage involved."""

from __future__ import annotations

import json
from typing import Any

import pytest

from medcloud.errors import Invalid
from medcloud.sources.manifest import Manifest, ManifestImage, parse_manifest

SRC = "s3://bucket/ds/manifest.json"


def parse(doc: Any) -> Manifest:
    return parse_manifest(json.dumps(doc).encode(), source=SRC)


def entry(image_id: str, path: Any, label: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"image": {"path": path, "id": image_id}, **extra}
    if label is not None:
        doc["label"] = label
    return doc


def test_guide_example_parses_with_defaults() -> None:
    manifest = parse(
        {"data": [entry("uuid-1", ["imagesTr/a.nii.gz"], {"path": ["labelsTr/a.nii.gz"], "id": "uuid-2"})]}
    )
    assert manifest == Manifest(
        root_path=None,
        label_key=("label",),
        images=(
            ManifestImage(
                id="uuid-1",
                paths=("imagesTr/a.nii.gz",),
                label_id="uuid-2",
                label_paths=("labelsTr/a.nii.gz",),
                extra={},
            ),
        ),
    )
    assert manifest.images[0].labeled


def test_string_path_and_label_key_string_and_root_path() -> None:
    manifest = parse(
        {
            "root_path": "https://acct.blob.core.windows.net/c/sub",
            "label_key": "seg",
            "data": [entry("a", "imagesTr/a.nii.gz", seg={"path": "s/a.nii.gz", "id": "la"})],
        }
    )
    image = manifest.images[0]
    assert manifest.root_path == "https://acct.blob.core.windows.net/c/sub"
    assert manifest.label_key == ("seg",)
    assert (image.paths, image.label_id, image.label_paths) == (("imagesTr/a.nii.gz",), "la", ("s/a.nii.gz",))


def test_dicom_series_many_files_and_dot_segments_normalised() -> None:
    image = parse({"data": [entry("s", ["./dcm/1.dcm", "dcm//2.dcm"])]}).images[0]
    assert image.paths == ("dcm/1.dcm", "dcm/2.dcm")


def test_non_images_are_skipped_and_unlabeled_is_recognised() -> None:
    manifest = parse(
        {
            "data": [
                "not a dict",
                {"image": {"path": "x"}},
                {"image": {"id": "no-path"}},
                {"label": {"id": "l"}},
                {"image": {"path": [], "id": "empty"}},
                {"image": {"path": [3], "id": "bad-type"}},
                entry("ok", "a.bin", {"path": "l.bin"}),  # a label without an id does not make it labeled
            ]
        }
    )
    assert [(i.id, i.label_id) for i in manifest.images] == [("ok", None)]


def test_label_key_list_and_extra_keys_for_classification() -> None:
    manifest = parse(
        {
            "label_key": ["bbox", "label"],
            "data": [entry("a", "a.png", {"id": "la", "path": []}, bbox=[1, 2, 3, 4], cls=2)],
        }
    )
    image = manifest.images[0]
    assert manifest.label_key == ("bbox", "label")
    assert image.label_id == "la" and image.label_paths == ()
    assert image.extra == {"bbox": [1, 2, 3, 4], "cls": 2}


def test_integer_ids_become_strings() -> None:
    assert parse({"data": [entry(7, "a.bin")]}).images[0].id == "7"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00"])
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(Invalid) as err:
        parse_manifest(raw, source=SRC)
    assert err.value.message.startswith(f"The manifest at {SRC} is not valid JSON: ")


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"images": []}, "has no `data` list"),
        ([1, 2], "has no `data` list"),
        ({"data": {"a": 1}}, "has a `data` field that is not a list"),
        ({"data": [], "root_path": 3}, "has a `root_path` that is not a string"),
        ({"data": [], "label_key": [1]}, "has a `label_key` that is not a string or a list of strings"),
    ],
)
def test_bad_structure(doc: Any, expected: str) -> None:
    with pytest.raises(Invalid, match=expected) as err:
        parse(doc)
    assert err.value.message.startswith(f"The manifest at {SRC} ")


@pytest.mark.parametrize("data", [[], [{"label": {"id": "x"}}], [{"image": {"path": "a"}}]])
def test_no_valid_samples(data: list[Any]) -> None:
    with pytest.raises(Invalid) as err:
        parse({"data": data})
    assert err.value.message.startswith(f"The manifest at {SRC} has no valid samples")


@pytest.mark.parametrize(
    "path, why",
    [
        ("../a.nii.gz", "escapes the dataset root"),
        ("imagesTr/../../a.nii.gz", "escapes the dataset root"),
        ("imagesTr\\..\\..\\a", "escapes the dataset root"),
        ("/etc/passwd", "is not relative to the dataset root"),
        ("s3://other-bucket/a.nii.gz", "is not relative to the dataset root"),
        ("https://example.com/a.nii.gz", "is not relative to the dataset root"),
        ("C:/data/a.nii.gz", "is not relative to the dataset root"),
    ],
)
def test_paths_escaping_the_root_are_rejected_by_name(path: str, why: str) -> None:
    with pytest.raises(Invalid) as err:
        parse({"data": [entry("ok", "fine.bin"), entry("bad", [path])]})
    assert err.value.message == f"The manifest at {SRC} lists the path {path!r}, which {why}."


def test_label_paths_escaping_the_root_are_rejected() -> None:
    with pytest.raises(Invalid, match="'../l.bin', which escapes the dataset root"):
        parse({"data": [entry("a", "a.bin", {"id": "l", "path": "../l.bin"})]})


def test_duplicate_image_ids_are_rejected() -> None:
    with pytest.raises(Invalid) as err:
        parse({"data": [entry("dup", "a.bin"), entry("dup", "b.bin")]})
    assert err.value.message == f"The manifest at {SRC} lists image id dup more than once."
