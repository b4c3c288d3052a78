"""DICOM series to volume (voxels, affine, slice order) and DICOM SEG to and from label volumes."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_data import LABELS, ct_and_labels
from pydicom.sr.codedict import codes

from medcloud.imaging.seg import labels_to_seg, seg_to_labels
from medcloud.imaging.series import as_part10, read_series, to_label_grid, write_label_nifti, write_nifti
from medcloud.imaging.synthetic_dicom import (
    AXIAL,
    OBLIQUE,
    SAGITTAL,
    handmade_seg,
    series_bytes,
    write_ct_series,
)

ORIENTATIONS = {"axial": AXIAL, "sagittal": SAGITTAL, "oblique": OBLIQUE}


def expected_ras(ds: pydicom.Dataset, i: int, j: int) -> np.ndarray:
    """RAS position of pixel (column i, row j) of an instance, straight from its DICOM LPS geometry."""
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = ipp + i * col_spacing * iop[:3] + j * row_spacing * iop[3:]
    return lps * np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("name", list(ORIENTATIONS))
@pytest.mark.parametrize(("slope", "step"), [(1, 2.5), (2, -3.0)])
def test_series_volume_is_voxel_exact_with_the_dicom_geometry(name: str, slope: int, step: float) -> None:
    hu, _ = ct_and_labels()
    hu = (np.rint(hu / slope) * slope).astype(np.float32)  # representable with this slope
    datasets = write_ct_series(
        hu,
        orientation=ORIENTATIONS[name],
        spacing=(0.75, 0.8, step),
        origin=(-100.5, 20.25, 33.0),
        shuffle=True,
        rescale_intercept=-1024,
        rescale_slope=slope,
        seed=7,
    )
    assert [int(ds.InstanceNumber) for ds in datasets] != list(range(1, hu.shape[2] + 1))
    volume = read_series(series_bytes(datasets))
    expected = hu if step > 0 else hu[:, :, ::-1]  # slices ascend along the normal, whatever the writer did
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array, expected)
    for ds in datasets:
        k = volume.instance_uids.index(ds.SOPInstanceUID)
        for i, j in [(0, 0), (5, 3), (hu.shape[0] - 1, hu.shape[1] - 1)]:
            assert np.allclose((volume.affine @ [i, j, k, 1])[:3], expected_ras(ds, i, j), atol=1e-4)
        assert np.array_equal(volume.array[:, :, k], (ds.pixel_array.T * slope - 1024.0).astype(np.float32))
    assert np.isclose(np.linalg.norm(volume.affine[:3, 2]), abs(step))


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_series_volume_agrees_with_monai_pydicom_reader(name: str, tmp_path: Path) -> None:
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    hu, _ = ct_and_labels(seed=2, shape=(10, 9, 6))
    datasets = write_ct_series(hu, orientation=ORIENTATIONS[name], spacing=(0.7, 0.9, 2.5), origin=(10, -20, 30))
    for n, data in enumerate(series_bytes(datasets)):  # MONAI sorts by InstanceNumber: keep those in order
        (tmp_path / f"{n}.dcm").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = LoadImage(reader=PydicomReader(), image_only=True)(str(tmp_path))
    volume = read_series(sorted(tmp_path.iterdir()))
    assert np.array_equal(np.asarray(image), volume.array)
    assert np.allclose(image.affine.numpy(), volume.affine, atol=1e-4)


def test_files_without_preamble_or_meta_and_nifti_output(tmp_path: Path) -> None:
    hu, labels = ct_and_labels(seed=3, shape=(8, 6, 5))
    datasets = write_ct_series(hu, orientation=OBLIQUE, spacing=(1, 1, 2), shuffle=True)
    for n, ds in enumerate(datasets):
        ds.preamble = None
        if n % 2:
            del ds.file_meta  # bare dataset, implicit VR, as some old archives hold
            ds.save_as(tmp_path / f"{n}.dcm", implicit_vr=True, little_endian=True, enforce_file_format=False)
        else:
            ds.save_as(tmp_path / f"{n}.dcm", enforce_file_format=False)
    volume = read_series(sorted(tmp_path.glob("*.dcm")))
    assert np.array_equal(volume.array, hu)
    image = nib.load(write_nifti(volume, tmp_path / "image.nii.gz"))
    assert np.array_equal(image.get_fdata(dtype=np.float32), hu) and np.allclose(image.affine, volume.affine)
    label = nib.load(write_label_nifti(labels, volume, tmp_path / "label.nii.gz"))
    assert label.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(label.dataobj), labels)
    flipped = nib.as_closest_canonical(label)  # what a model pipeline may hand back
    assert np.array_equal(to_label_grid(flipped, volume), labels)


def test_series_errors() -> None:
    hu, _ = ct_and_labels(seed=4, shape=(6, 6, 5))
    one, other = write_ct_series(hu), write_ct_series(hu)
    with pytest.raises(ValueError, match="more than one series"):
        read_series(one[:2] + other[:2])
    with pytest.raises(ValueError, match="same position"):
        read_series([one[0], one[0]])
    with pytest.raises(ValueError, match="no image"):
        read_series([])


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_highdicom_seg_round_trip_with_shuffled_segments_and_name_variants(name: str) -> None:
    hu, labels = ct_and_labels(seed=5)
    datasets = write_ct_series(hu, orientation=ORIENTATIONS[name], spacing=(0.8, 0.8, -2.0), shuffle=True)
    volume = read_series(datasets)
    on_grid = labels[:, :, ::-1]  # the label map as it lies on the read volume's grid
    written = {"3": "Spleen", "1": "LIVER", "2": "Right Kidney"}  # segment order 3, 1, 2; other spelling
    seg = labels_to_seg(on_grid, datasets, written)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Spleen", "LIVER", "Right Kidney"]
    assert seg.preamble == b"\0" * 128 and seg.SegmentationType == "BINARY"
    stored = series_bytes([seg])[0]
    assert np.array_equal(seg_to_labels(stored, volume, LABELS), on_grid)
    partial = seg_to_labels(stored, volume, {"1": "liver", "2": "pancreas"})
    assert np.array_equal(partial, np.where(on_grid == 1, 1, 0))  # unknown segments become background


@pytest.mark.parametrize("reference", ["both", "uid", "position"])
def test_dcmqi_style_seg_round_trip(reference: str) -> None:
    hu, labels = ct_and_labels(seed=6, shape=(13, 11, 9))  # 143 bits per frame: frames straddle bytes
    datasets = write_ct_series(hu, orientation=SAGITTAL, spacing=(0.9, 1.1, 1.5), shuffle=True, seed=3)
    volume = read_series(datasets)
    seg = handmade_seg(labels, datasets, {2: "right kidney", 3: "SPLEEN", 1: "Liver"}, reference=reference)
    assert "DimensionIndexSequence" not in seg and int(seg.NumberOfFrames) < 3 * labels.shape[2]
    assert np.array_equal(seg_to_labels(series_bytes([seg])[0], volume, LABELS), labels)


def test_position_only_seg_lands_on_a_copy_of_the_series() -> None:
    hu, labels = ct_and_labels(seed=7, shape=(10, 10, 6))
    grid = dict(orientation=OBLIQUE, spacing=(1.0, 1.0, 2.0), origin=(5.0, 5.0, 5.0))
    original, copy = write_ct_series(hu, **grid), write_ct_series(hu, **grid, shuffle=True)
    seg = handmade_seg(labels, original, {1: "liver", 2: "right_kidney", 3: "spleen"}, reference="position")
    assert np.array_equal(seg_to_labels(seg, read_series(copy), LABELS), labels)
    shifted = read_series(write_ct_series(hu, **{**grid, "origin": (500.0, 500.0, 500.0)}))
    with pytest.raises(ValueError, match="voxel grid"):
        seg_to_labels(seg, shifted, LABELS)


def test_fractional_seg_from_highdicom() -> None:
    hu, labels = ct_and_labels(seed=8, shape=(10, 8, 5))
    datasets = write_ct_series(hu, shuffle=True)
    volume = read_series(datasets)
    mask = (labels == 1).transpose(2, 1, 0).astype(np.float32)
    sources = sorted(datasets, key=lambda ds: volume.instance_uids.index(ds.SOPInstanceUID))
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Liver",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Organ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask * 0.9,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    assert np.array_equal(seg_to_labels(seg, volume, LABELS), (labels == 1).astype(np.uint8))


def test_labels_to_seg_rejects_wrong_shapes_and_empty_volumes() -> None:
    hu, labels = ct_and_labels(seed=9, shape=(6, 6, 5))
    datasets = write_ct_series(hu)
    with pytest.raises(ValueError, match="shape"):
        labels_to_seg(labels[:, :, :3], datasets, LABELS)
    with pytest.raises(ValueError, match="no labelled voxel"):
        labels_to_seg(np.zeros_like(labels), datasets, LABELS)


def test_seg_of_a_series_without_type2_attributes_leaves_the_sources_alone() -> None:
    hu, labels = ct_and_labels(seed=10, shape=(8, 8, 5))
    datasets = write_ct_series(hu, study_time=None, study_date=None)
    seg = labels_to_seg(labels, datasets, LABELS, algorithm=None)
    assert all("StudyTime" not in ds and "StudyDate" not in ds for ds in datasets)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert np.array_equal(seg_to_labels(seg, read_series(datasets), LABELS), labels)


def test_as_part10_adds_what_strict_readers_need() -> None:
    ds = write_ct_series(np.zeros((4, 4, 1), dtype=np.float32))[0]
    forms = {}
    for name, meta in (("no preamble", True), ("bare dataset", False)):
        ds.preamble, buffer = None, io.BytesIO()
        if not meta:
            del ds.file_meta
        ds.save_as(buffer, enforce_file_format=False, implicit_vr=not meta or None, little_endian=True)
        forms[name] = buffer.getvalue()
    for raw in forms.values():
        strict = pydicom.dcmread(io.BytesIO(as_part10(raw)))  # no force: preamble and DICM present
        assert strict.SOPInstanceUID == ds.SOPInstanceUID and strict.pixel_array.shape == (4, 4)


@pytest.mark.parametrize(
    "geometry",
    [
        {"shuffle": True},
        {"spacing": (0.7, 0.9, 2.5), "origin": (10, -20, 30)},
        {"orientation": ((np.cos(0.3), np.sin(0.3), 0), (-np.sin(0.3), np.cos(0.3), 0)), "shuffle": True},
        {"orientation": ((1, 0, 0), (0, np.cos(0.3), -np.sin(0.3))), "spacing": (0.7, 0.9, 2.5)},
    ],
    ids=["shuffled", "anisotropic", "oblique-in-plane", "tilted"],
)
def test_read_series_equals_highdicoms_volume_in_medcloud_order(geometry):
    """`read_series` keeps its own reader (docs/architecture.md, "DICOM series"): it must give exactly the
    voxels and geometry of highdicom's `get_volume_from_series`, once that is put in medcloud's order
    (column, row, slice ascending along the normal; highdicom's is slice, row, column, slices descending)."""
    hu = np.random.default_rng(7).integers(-1000, 1000, (20, 16, 12)).astype(np.float32)
    datasets = write_ct_series(hu, **geometry)
    ours = read_series(datasets)
    theirs = hd.get_volume_from_series(datasets, dtype=np.float32).flip_spatial(0)
    np.testing.assert_array_equal(np.transpose(theirs.array, (2, 1, 0)), ours.array)
    np.testing.assert_allclose(theirs.affine[:, [2, 1, 0, 3]], ours.lps_affine, atol=1e-9)
