"""The DICOMweb data source against a real Orthanc: opening, unlabeled images, SEG labels, meta, fetch."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_data import LABELS, ct_and_labels
from orthanc import OrthancInfo, empty_orthanc_fixture, orthanc_fixture  # noqa: F401  (fixtures)
from services import free_port

from medcloud.errors import Invalid
from medcloud.imaging.seg import labels_to_seg
from medcloud.imaging.series import read_series
from medcloud.imaging.synthetic_dicom import AXIAL, OBLIQUE, SAGITTAL, handmade_seg, write_ct_series
from medcloud.sources.dicomweb import DicomWebSource, parse_filters


@dataclass
class Stored:
    """What the archive holds: two CTs (one oblique and shuffled), an MR, and a CT without StudyTime."""

    info: OrthancInfo
    axial: list[pydicom.Dataset]
    oblique: list[pydicom.Dataset]
    mr: list[pydicom.Dataset]
    no_time: list[pydicom.Dataset]
    hu: np.ndarray
    labels: np.ndarray

    def source(self, filters: str | None = None) -> DicomWebSource:
        return DicomWebSource.open(self.info.url, self.info.user, self.info.password, filters=filters)


def uid(datasets: list[pydicom.Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


@pytest.fixture
def stored(empty_orthanc: OrthancInfo) -> Stored:
    hu, labels = ct_and_labels(seed=11, shape=(20, 16, 10))
    hu2 = (np.rint(hu / 2) * 2).astype(np.float32)
    axial = write_ct_series(hu, orientation=AXIAL, spacing=(0.8, 0.8, 2.5), patient_id="P1")
    oblique = write_ct_series(
        hu2,
        orientation=OBLIQUE,
        spacing=(0.7, 0.9, -2.0),
        origin=(12.5, -40, 7),
        shuffle=True,
        rescale_slope=2,
        patient_id="P2",
        study_uid=axial[0].StudyInstanceUID,
    )
    mr = write_ct_series(hu, orientation=SAGITTAL, modality="MR", patient_id="P3")
    no_time = write_ct_series(hu, study_time=None, patient_id="P4")
    raw = []
    for ds in no_time:  # stored as files without preamble, as some senders do
        ds.preamble, buffer = None, io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        raw.append(buffer.getvalue())
    empty_orthanc.stow([*axial, *oblique, *mr])
    empty_orthanc.stow(raw)
    return Stored(empty_orthanc, axial, oblique, mr, no_time, hu, labels)


def test_open_checks_credentials_url_and_filters(orthanc: OrthancInfo) -> None:
    DicomWebSource.open(orthanc.url + "/", orthanc.user, orthanc.password, filters=None)
    secret = "not-the-password-4711"
    with pytest.raises(Invalid) as bad:
        DicomWebSource.open(orthanc.url, orthanc.user, secret, filters=None)
    assert bad.value.message == f"The DICOMweb server at {orthanc.url} rejected the credentials."
    with pytest.raises(Invalid, match="rejected the credentials"):
        DicomWebSource.open(orthanc.url, None, None, filters=None)
    with pytest.raises(Invalid) as in_url:  # credentials inside the URL are used, and never shown
        DicomWebSource.open(
            f"http://{orthanc.user}:{secret}@127.0.0.1:{orthanc.port}/dicom-web", None, None, filters=None
        )
    assert in_url.value.message == bad.value.message
    DicomWebSource.open(
        f"http://{orthanc.user}:{orthanc.password}@127.0.0.1:{orthanc.port}/dicom-web", None, None, filters=None
    )
    for not_dicomweb in (orthanc.rest_url, f"{orthanc.rest_url}/app", f"{orthanc.rest_url}/nothing"):
        with pytest.raises(Invalid, match="is not a DICOMweb root"):
            DicomWebSource.open(not_dicomweb, orthanc.user, orthanc.password, filters=None)
    with pytest.raises(Invalid, match="not an http"):
        DicomWebSource.open("ftp://example.org/dicom-web", "u", "p", filters=None)


def test_open_fails_fast_on_a_closed_port() -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    started = time.monotonic()
    with pytest.raises(Invalid) as refused:
        DicomWebSource.open(url, "orthanc", "secret-pw", filters=None)
    assert time.monotonic() - started < 3
    assert refused.value.message == f"Could not reach the DICOMweb server at {url}: connection refused."


@pytest.mark.parametrize("filters", ["Modality", "Modality=CT&&x", "Foo=1", "Modality=CT&Modality=MR"])
def test_invalid_filters_are_refused_before_any_request(filters: str) -> None:
    with pytest.raises(Invalid, match="filters"):
        DicomWebSource.open("http://127.0.0.1:1/dicom-web", "u", "p", filters=filters)


def test_filters_parse_keywords_tags_and_qido_parameters() -> None:
    assert parse_filters(None) == {"Modality": "CT"}
    assert parse_filters("?00080060=MR&includefield=StudyDescription&PatientID=P*") == {
        "00080060": "MR",
        "includefield": "StudyDescription",
        "PatientID": "P*",
    }


def test_unlabeled_ids_follow_filters_and_stored_segs(stored: Stored) -> None:
    source = stored.source()
    assert sorted(source.unlabeled_ids()) == sorted([uid(stored.axial), uid(stored.oblique), uid(stored.no_time)])
    assert sorted(source.image_ids()) == sorted(source.unlabeled_ids())
    assert stored.source("Modality=MR").unlabeled_ids() == [uid(stored.mr)]
    assert stored.source("Modality=CT&PatientID=P2").unlabeled_ids() == [uid(stored.oblique)]
    assert stored.source("StudyDate=20240102").unlabeled_ids()  # no Modality: SEGs still never count as images

    seg = labels_to_seg(stored.labels, stored.axial, LABELS)
    stored.info.stow([seg])
    assert uid(stored.axial) not in source.unlabeled_ids()  # right away, same source object
    assert source.labels_of(uid(stored.axial)) == [str(seg.SeriesInstanceUID)]
    assert seg.SeriesInstanceUID not in stored.source("StudyDate=20240102").unlabeled_ids()

    handmade = handmade_seg(stored.labels[:, :, ::-1], stored.oblique, {1: "liver"}, reference="position")
    stored.info.stow([handmade])
    assert sorted(source.unlabeled_ids()) == [uid(stored.no_time)]
    assert len(source.image_ids()) == 3

    stored.info.delete_series(str(seg.SeriesInstanceUID))
    assert sorted(source.unlabeled_ids()) == sorted([uid(stored.axial), uid(stored.no_time)])


def test_meta_and_check_image(stored: Stored) -> None:
    source = stored.source()
    meta = source.meta(uid(stored.oblique))
    study = str(stored.axial[0].StudyInstanceUID)
    assert meta == {
        "SeriesInstanceUID": uid(stored.oblique),
        "StudyInstanceUID": study,
        "StudyDate": "20240102",
        "StudyTime": "123456",
        "Modality": "CT",
        "PatientID": "P2",
        "RetrieveURL": f"{stored.info.url}/studies/{study}/series/{uid(stored.oblique)}",
    }
    assert source.meta(uid(stored.no_time))["StudyTime"] == "UNK"
    source.check_image(uid(stored.axial))
    for missing in (uid(stored.mr), "1.2.3.4", "not a uid", "1.2.3&Modality=MR"):
        with pytest.raises(Invalid, match="is not in the dataset"):
            source.check_image(missing)


def test_fetch_builds_the_exact_volume_and_keeps_the_dicom_files(stored: Stored, tmp_path: Path) -> None:
    source = stored.source()
    files = source.fetch(uid(stored.oblique), tmp_path / "oblique")
    assert files[0] == tmp_path / "oblique" / f"{uid(stored.oblique)}.nii.gz"
    assert len(files) == 1 + len(stored.oblique) and all(p.parent.name == "dicom" for p in files[1:])
    image = nib.load(files[0])
    expected = (np.rint(stored.hu / 2) * 2)[:, :, ::-1]  # slope 2; negative slice step read ascending
    assert np.array_equal(image.get_fdata(dtype=np.float32), expected)
    assert np.allclose(image.affine, read_series(stored.oblique).affine, atol=1e-5)

    bare = source.fetch(uid(stored.no_time), tmp_path / "bare")  # stored without preamble
    assert np.array_equal(nib.load(bare[0]).get_fdata(dtype=np.float32), stored.hu)
    assert all(p.read_bytes()[128:132] == b"DICM" for p in bare[1:])


def test_fetch_label_puts_the_seg_on_the_image_grid(stored: Stored, tmp_path: Path) -> None:
    source = stored.source()
    files = source.fetch(uid(stored.oblique), tmp_path / "image")
    image = read_series(files[1:])
    on_grid = stored.labels[:, :, ::-1]
    seg = labels_to_seg(on_grid, stored.oblique, {"2": "Right Kidney", "1": "Liver", "3": "spleen"})
    stored.info.stow([seg])
    path = source.fetch_label(str(seg.SeriesInstanceUID), image, LABELS, tmp_path / "labels")
    label = nib.load(path)
    assert path.name == f"{seg.SeriesInstanceUID}.nii.gz" and label.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(label.dataobj), on_grid)
    assert np.allclose(label.affine, nib.load(files[0]).affine)
    assert [p.name for p in (tmp_path / "labels").iterdir()] == [path.name]
    with pytest.raises(Invalid, match="not a DICOM SEG series"):
        source.fetch_label(uid(stored.axial), image, LABELS, tmp_path / "labels")


def test_filters_the_server_rejects(orthanc: OrthancInfo) -> None:
    with pytest.raises(Invalid) as rejected:
        DicomWebSource.open(orthanc.url, orthanc.user, orthanc.password, filters="Modality=CT&fuzzymatching=maybe")
    assert rejected.value.message.startswith(f"The DICOMweb server at {orthanc.url} rejected the filters")
