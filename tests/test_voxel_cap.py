"""The voxel cap: images, labels and DICOM SEGs are measured from their headers before anything is decompressed."""

from __future__ import annotations

import gzip
import io
import json
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_api
from tiny_datasets import AFFINE, ct, label_nrrd, put_label, write_dataset

from medcloud.datasets import volumes
from medcloud.errors import Invalid
from medcloud.imaging import voxels
from medcloud.imaging.seg import labels_to_seg, seg_to_labels
from medcloud.imaging.series import read_series
from medcloud.imaging.synthetic_dicom import write_ct_series

HUGE = (4000, 4000, 4000)


def header_bomb(path: Path, shape: tuple[int, ...] = HUGE) -> Path:
    """A gzip NIfTI of a few hundred bytes whose header claims `shape` (int16): the data is not there."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_qform(AFFINE, code=1)
    header.set_sform(AFFINE, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 64))
    return path


def zero_bomb(path: Path, shape: tuple[int, int, int]) -> Path:
    """A real gzip NIfTI of uint8 zeros: small on disk, `prod(shape)` bytes once decompressed."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_qform(AFFINE, code=1)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    out = [squeeze.compress(header.binaryblock + b"\0" * 4)]
    zeros = bytes(1 << 20)
    for _ in range(int(np.prod(shape)) >> 20):
        out.append(squeeze.compress(zeros))
    out.append(squeeze.flush())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(out))
    return path


def manifest_of(root: Path, entries: dict[str, str]) -> Path:
    data = [{"image": {"path": [rel], "id": image_id}} for image_id, rel in entries.items()]
    (root / "manifest.json").write_text(json.dumps({"data": data}))
    return root


def test_a_header_claiming_4000_cubed_is_a_fast_400_with_the_numbers(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", {"fine": ct(1)})
    bomb = header_bomb(root / "images" / "bomb.nii.gz")
    assert bomb.stat().st_size < 1024
    manifest_of(root, {"fine": "images/fine.nii.gz", "bomb": "images/bomb.nii.gz"})
    with make_api(tmp_path / "data") as api:
        dataset_id = api.post("datasets", json={"name": "b", "client_url": str(root)}).json()["id"]
        tracemalloc.start()
        started = time.monotonic()
        for path in ("images/bomb/volume", "images/bomb/label"):
            resp = api.get(f"datasets/{dataset_id}/{path}")
            assert resp.status_code == 400, resp.text
            message = resp.json()["error_desc"]
            assert "4000 x 4000 x 4000 = 64,000,000,000 voxels" in message and "MEDCLOUD_MAX_VOXELS" in message
            assert "536,870,912" in message  # the default cap, 1024**3 / 2
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < 5 and peak < 16 * 1024**2, (elapsed, peak)
        assert api.ctx.cache.lookup(dataset_id, "bomb") is None  # nothing kept
        assert api.get(f"datasets/{dataset_id}/images/fine/volume").status_code == 200


def test_a_real_gzip_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    # 16 Mi zero voxels in 16 KiB: inflating it would allocate at least 16 MiB, counted by tracemalloc
    root = tmp_path / "ds"
    bomb = zero_bomb(root / "images" / "bomb.nii.gz", (256, 256, 256))
    assert bomb.stat().st_size < 64 * 1024
    manifest_of(root, {"bomb": "images/bomb.nii.gz"})
    with make_api(tmp_path / "data", max_voxels=1_000_000) as api:
        dataset_id = api.post("datasets", json={"name": "b", "client_url": str(root)}).json()["id"]
        tracemalloc.start()
        resp = api.get(f"datasets/{dataset_id}/images/bomb/volume")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert resp.status_code == 400 and "256 x 256 x 256 = 16,777,216 voxels" in resp.json()["error_desc"]
        assert "1,000,000 voxels, MEDCLOUD_MAX_VOXELS" in resp.json()["error_desc"]
        assert peak < 8 * 1024**2, peak
        # inference on it is refused the same way, before the model host sees it
        cached = api.post(f"datasets/{dataset_id}/jobs", json={"action": "cacheimage", "specs": {"image": "bomb"}})
        assert cached.status_code == 201
        assert api.ctx.cache.lookup(dataset_id, "bomb") is None


def test_an_oversized_label_is_refused_from_its_header_and_nothing_is_stored(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", {"a": ct(2)})
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    header = (
        b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4000 4000 4000\nencoding: gzip\n"
        b"space: right-anterior-superior\nspace directions: (1.5,0,0) (0,1.5,0) (0,0,2)\nspace origin: (0,0,0)\n\n"
    )
    body = header + gzip.compress(bytes(1 << 16))
    with make_api(tmp_path / "data") as api:
        dataset_id = api.post("datasets", json={"name": "l", "client_url": str(root)}).json()["id"]
        resp = put_label(api, dataset_id, "a", body)
        assert resp.status_code == 400, resp.text
        assert "The label has 4000 x 4000 x 4000 = 64,000,000,000 voxels" in resp.json()["error_desc"]
        assert api.ctx.cache.lookup(dataset_id, "a") is None  # refused before the image was even read
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
        # a label of the image's own size is saved
        ok = put_label(api, dataset_id, "a", label_nrrd((ct(2) > 500).astype(np.uint8)))
        assert ok.status_code == 201, ok.text


def test_load_volume_measures_before_it_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nifti = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(ct(3, (20, 10, 5)), AFFINE), str(nifti))
    series = write_ct_series(ct(4, (12, 10, 6)).astype(np.float32))
    dicom = []
    for n, ds in enumerate(series):
        dicom.append(tmp_path / "dicom" / f"{n}.dcm")
        dicom[-1].parent.mkdir(exist_ok=True)
        ds.save_as(dicom[-1], enforce_file_format=True)
    assert volumes.load_volume([nifti], "a", max_voxels=1000).array.shape == (20, 10, 5)
    assert voxels.dicom_voxels(dicom) == 12 * 10 * 6 == read_series(dicom).array.size

    def never(*_args: object) -> None:
        raise AssertionError("decoded before the cap was checked")

    monkeypatch.setattr(volumes, "_voxels", never)
    monkeypatch.setattr(volumes, "read_series", never)
    with pytest.raises(Invalid, match=r"Image a has 20 x 10 x 5 = 1,000 voxels, more than this server reads \(999"):
        volumes.load_volume([nifti], "a", max_voxels=999)
    with pytest.raises(Invalid, match="Image s has 720 voxels"):
        volumes.load_volume(dicom, "s", max_voxels=719)


def test_nrrd_nifti2_and_picture_headers(tmp_path: Path) -> None:
    nrrd_file = tmp_path / "v.nrrd"
    nrrd_file.write_bytes(label_nrrd(np.zeros((7, 6, 5), dtype=np.uint8)))
    nifti2 = tmp_path / "v2.nii"
    nib.save(nib.Nifti2Image(np.zeros((3, 4, 5, 2), dtype=np.uint8), np.eye(4)), str(nifti2))
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "p.png")
    voxels.check_files([nrrd_file, nifti2, tmp_path / "p.png"], 40 * 30, what="x")  # each fits
    assert voxels.nifti_shape(nifti2) == (3, 4, 5, 2)
    for path, count in ((nrrd_file, "210"), (nifti2, "120"), (tmp_path / "p.png", "1,200")):
        with pytest.raises(Invalid, match=f"= {count} voxels"):
            voxels.check_files([path], 100, what="x")
    (tmp_path / "junk.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(Invalid, match="junk.nii.gz cannot be read as NIfTI") as refused:
        voxels.nifti_shape(tmp_path / "junk.nii.gz")
    assert str(tmp_path) not in str(refused.value)  # no server path in the message


def test_a_seg_declaring_too_many_frames_is_refused_before_its_pixels(tmp_path: Path) -> None:
    hu = ct(5, (16, 12, 6)).astype(np.float32)
    series = write_ct_series(hu)
    volume = read_series(series)
    label = np.zeros(volume.shape, dtype=np.uint8)
    label[4:8, 4:8, 2:4] = 1
    seg = labels_to_seg(label, series, {"1": "spleen"})
    assert np.array_equal(seg_to_labels(seg, volume, {"1": "spleen"}, max_voxels=10**6), label)
    frames = int(seg.NumberOfFrames)
    with pytest.raises(Invalid, match=f"The DICOM SEG has {12 * 16 * frames} voxels"):
        seg_to_labels(seg, volume, {"1": "spleen"}, max_voxels=12 * 16 * frames - 1)
    seg.Rows, seg.Columns, seg.NumberOfFrames = 4000, 4000, 4000  # the pixel data no longer matches: never read
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    with pytest.raises(Invalid, match="64,000,000,000 voxels"):
        seg_to_labels(buffer.getvalue(), volume, {"1": "spleen"}, max_voxels=10**6)
