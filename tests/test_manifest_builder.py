"""`medcloud datasets build-manifest`: NIfTI, DICOM series and PNG images, labels matched by name, stable ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import REPO, make_dataset_folder, random_dicom_series, random_nifti, server_image_ids

from medcloud.client.manifest import ManifestError, build_manifest, plan_manifest, stable_id
from medcloud.imaging.synthetic_dicom import write_ct_series


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`medcloud ARGS` in a subprocess (the real entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "medcloud.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _entries(manifest: dict) -> dict[str, dict]:
    return {
        e["image"]["path"][0].rsplit("/", 1)[0] if "/ct" in e["image"]["path"][0] else e["image"]["path"][0]: e
        for e in manifest["data"]
    }


def test_manifest_lists_nifti_dicom_series_and_png_with_labels_matched_by_name(tmp_path: Path) -> None:
    folder = make_dataset_folder(tmp_path / "ds")
    manifest = build_manifest(folder)
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    entries = _entries(manifest)
    assert set(entries) == {
        "imagesTr/a.nii.gz",
        "imagesTr/b.nii.gz",
        "imagesTr/ct1",
        "imagesTr/ct2",
        "photos/p1.png",
        "photos/p2.png",
    }
    assert entries["imagesTr/a.nii.gz"]["label"]["path"] == ["labelsTr/a.nii.gz"]
    assert entries["imagesTr/b.nii.gz"]["label"]["path"] == ["labelsTr/b.nii.gz"]
    assert entries["imagesTr/ct1"]["label"]["path"] == ["labelsTr/ct1.nii.gz"]
    assert entries["imagesTr/ct1"]["image"]["path"] == [f"imagesTr/ct1/slice{k:03d}.dcm" for k in range(6)]
    assert entries["imagesTr/ct2"]["image"]["path"] == [f"imagesTr/ct2/slice{k:03d}" for k in range(6)]
    assert "label" not in entries["imagesTr/ct2"] and "label" not in entries["photos/p2.png"]
    assert entries["photos/p1.png"]["label"]["path"] == ["photos/p1_mask.png"]
    assert entries["imagesTr/a.nii.gz"]["image"]["id"] == stable_id("imagesTr/a.nii.gz")
    assert entries["imagesTr/ct1"]["image"]["id"] == stable_id("imagesTr/ct1")
    assert manifest["label_key"] == ["label"]


def test_ids_are_stable_across_runs_and_equal_the_demo_datasets(tmp_path: Path) -> None:
    from medcloud.demo.synthetic import stable_id as demo_stable_id

    first = make_dataset_folder(tmp_path / "one")
    second = make_dataset_folder(tmp_path / "two")
    a, b = build_manifest(first), build_manifest(second)
    assert a == b  # same relative paths, same ids, whatever the folder's location
    assert build_manifest(first) == a  # a second run over the same folder (its manifest.json is left out)
    assert stable_id("imagesTr/a.nii.gz") == demo_stable_id("imagesTr/a.nii.gz")


def test_one_image_per_series_when_a_folder_holds_two_series(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    random_dicom_series(folder / "study", 1)
    for k, ds in enumerate(write_ct_series(np.zeros((8, 8, 3), np.float32), seed=2)):
        ds.save_as(folder / "study" / f"other{k}.dcm", enforce_file_format=True)
    manifest = plan_manifest(folder).manifest
    assert sorted(len(e["image"]["path"]) for e in manifest["data"]) == [3, 6]
    assert len({e["image"]["id"] for e in manifest["data"]}) == 2


def test_labels_dir_option_and_suffix_rule_at_the_root(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    random_nifti(folder / "scans" / "x.nii.gz", 1)
    random_nifti(folder / "segs" / "x.nii.gz", 2, label=True)
    random_nifti(folder / "y.nii.gz", 3)
    random_nifti(folder / "y_seg.nii.gz", 4, label=True)
    entries = _entries(plan_manifest(folder, labels="segs").manifest)
    assert entries["scans/x.nii.gz"]["label"]["path"] == ["segs/x.nii.gz"]
    assert entries["y.nii.gz"]["label"]["path"] == ["y_seg.nii.gz"]
    assert len(entries) == 2  # segs/x.nii.gz is a label, not an image


def test_cli_unmatched_label_exits_1_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    folder = make_dataset_folder(tmp_path / "ds")
    random_nifti(folder / "labelsTr" / "zzz.nii.gz", 11, label=True)
    random_nifti(folder / "photos" / "ghost_seg.nii.gz", 12, label=True)
    result = run_cli("datasets", "build-manifest", str(folder))
    assert result.returncode == 1, result.stderr
    assert "labelsTr/zzz.nii.gz" in result.stderr and "photos/ghost_seg.nii.gz" in result.stderr
    assert "--ignore-unmatched" in result.stderr
    assert not (folder / "manifest.json").exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    result = run_cli("datasets", "build-manifest", str(folder), "--ignore-unmatched", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 6 and summary["labeled"] == 4
    assert summary["ignored_labels"] == ["labelsTr/zzz.nii.gz", "photos/ghost_seg.nii.gz"]
    assert summary["skipped_files"] == ["README"]
    written = json.loads((folder / "manifest.json").read_text())
    assert all("zzz" not in json.dumps(e) and "ghost" not in json.dumps(e) for e in written["data"])


def test_an_unreadable_image_is_named_and_an_old_manifest_is_kept(tmp_path: Path) -> None:
    folder = make_dataset_folder(tmp_path / "ds")
    build_manifest(folder)
    before = (folder / "manifest.json").read_bytes()
    (folder / "photos" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ManifestError, match=r"photos/broken.png cannot be read as PNG"):
        build_manifest(folder)
    (folder / "imagesTr" / "ct1" / "junk.dcm").write_bytes(b"x" * 200)
    result = run_cli("datasets", "build-manifest", str(folder))
    assert result.returncode == 1 and "cannot be read" in result.stderr
    assert (folder / "manifest.json").read_bytes() == before


def test_two_labels_for_one_image_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    random_nifti(folder / "x.nii.gz", 1)
    random_nifti(folder / "x_seg.nii.gz", 2, label=True)
    random_nifti(folder / "x_mask.nii.gz", 3, label=True)
    with pytest.raises(ManifestError, match="x.nii.gz has two labels"):
        plan_manifest(folder)


def test_the_server_accepts_the_manifest_and_reads_its_images(tmp_path: Path, api) -> None:  # noqa: ANN001
    folder = make_dataset_folder(tmp_path / "ds")
    manifest = build_manifest(folder)
    resp = api.post("datasets", json={"name": "built", "client_url": str(folder)})
    assert resp.status_code == 201, resp.text
    dataset_id = resp.json()["id"]
    source_ids = server_image_ids(api, dataset_id)
    assert source_ids == {e["image"]["id"] for e in manifest["data"]}
    ct1 = _entries(manifest)["imagesTr/ct1"]["image"]["id"]
    volume = api.get(f"datasets/{dataset_id}/images/{ct1}/volume")
    assert volume.status_code == 200, volume.text
    assert b"sizes: 16 16 6" in volume.content[:400]
