"""DICOMweb datasets (Orthanc, dcm4chee, cloud PACS): QIDO series are the images, DICOM SEGs their labels.

`client_url` is the DICOMweb root (e.g. `http://host:8042/dicom-web`); `client_id`/`client_secret` are
HTTP Basic credentials. Images are the series QIDO finds for `filters` (a QIDO query string, default
`Modality=CT`; SEG and other non-image series are never images); an image's id is its SeriesInstanceUID.
A `Modality=SEG` series is a label of every series its ReferencedSeriesSequence names (read once per SEG
from WADO-RS metadata and cached: SEGs are immutable); an image is labeled iff some SEG references it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlunsplit

import numpy as np
import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.datadict import tag_for_keyword

from medcloud.egress import split_url
from medcloud.errors import Invalid, MedcloudError, Unavailable
from medcloud.imaging import voxels
from medcloud.imaging.seg import seg_to_labels
from medcloud.imaging.series import SeriesVolume, as_part10, read_series, write_label_nifti, write_nifti
from medcloud.sources import capped_http
from medcloud.sources.limits import SourceLimits

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3
OPEN_READ_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
DEFAULT_FILTERS = "Modality=CT"
NOT_IMAGES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "REG", "RTPLAN", "DOC"}
META_TAGS = {
    "SeriesInstanceUID": "0020000E",
    "StudyInstanceUID": "0020000D",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "Modality": "00080060",
    "PatientID": "00100020",
}
_QIDO_PARAMS = {"fuzzymatching", "includefield"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"'


def parse_dicomweb_url(
    client_url: str, client_id: str | None, client_secret: str | None
) -> tuple[str, tuple[str, str] | None]:
    """(the DICOMweb root without credentials, query or trailing slash; Basic-auth pair or None)."""
    parts = split_url(client_url, what="client_url")  # a malformed URL is a 400, not a crash
    netloc = parts.netloc.rsplit("@", 1)[-1]
    url = urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise Invalid(f"The client_url {url or '(empty)'} is not an http(s) URL of a DICOMweb root.")
    user, password = client_id or parts.username, client_secret or parts.password
    if bool(user) != bool(password):
        raise Invalid("Give both client_id and client_secret (user name and password), or neither.")
    return url, (user, password) if user and password else None


def parse_filters(filters: str | None) -> dict[str, str]:
    """A QIDO query string (`Modality=CT&StudyDate=20240101-`) as search parameters; `Invalid` if malformed."""
    text = (DEFAULT_FILTERS if filters is None or not filters.strip() else filters).strip().lstrip("?")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise Invalid(f"The filters {filters!r} are not a QIDO query string such as 'Modality=CT'.") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key.lower() in _QIDO_PARAMS:
            key = key.lower()
        elif not all(_TAG.match(part) or tag_for_keyword(part) for part in key.split(".")):
            raise Invalid(f"The filters name {key!r}, which is not a DICOM attribute keyword or tag.")
        if key in out and key != "includefield":
            raise Invalid(f"The filters name {key!r} twice; list several values as {key}=A,B.")
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for a connection failure."""
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
        return "the host name does not resolve"
    if isinstance(exc, requests.exceptions.SSLError):
        return "the TLS handshake failed"
    return "the connection failed"


@contextlib.contextmanager
def dicomweb_errors(url: str, *, fault: type[MedcloudError] = Unavailable) -> Iterator[None]:
    """Turn HTTP and connection errors into domain errors whose sentence names `url` and holds no secret."""
    try:
        yield
    except MedcloudError:
        raise
    except requests.exceptions.Timeout:
        raise fault(f"The DICOMweb server at {url} did not answer in time.") from None
    except requests.exceptions.ConnectionError as exc:
        raise fault(f"Could not reach the DICOMweb server at {url}: {_reason(exc)}.") from None
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise Invalid(f"The DICOMweb server at {url} rejected the credentials.") from None
        raise fault(f"The DICOMweb server at {url} answered HTTP {status}.") from None
    except (requests.exceptions.RequestException, ValueError) as exc:
        raise fault(
            f"The DICOMweb server at {url} sent an answer that is not DICOMweb ({type(exc).__name__})."
        ) from None


def _is_uid(text: object) -> bool:
    """True for a DICOM UID (digits and dots, at most 64 characters): safe in URLs and file names."""
    return isinstance(text, str) and len(text) <= 64 and bool(_UID.fullmatch(text))  # `$` would allow a "\n"


def _not_a_uid(url: str, name: str, owner: str) -> Invalid:
    return Invalid(
        f"The DICOMweb server at {url} answered a {name}{owner} that is not a DICOM UID (digits and dots, "
        "at most 64 characters); nothing was requested with it."
    )


def _value(item: dict[str, Any], tag: str) -> str:
    """The first value of a DICOM JSON attribute as text, or "UNK" when it is missing or empty."""
    values = (item.get(tag) or {}).get("Value") or []
    if not values or values[0] in (None, ""):
        return "UNK"
    first = values[0]
    return str(first.get("Alphabetic", "UNK")) if isinstance(first, dict) else str(first)


def _referenced_series(instances: list[dict[str, Any]]) -> frozenset[str]:
    """SeriesInstanceUIDs in the ReferencedSeriesSequence (0008,1115) of DICOM JSON instances."""
    refs = {
        _value(entry, "0020000E") for item in instances for entry in (item.get("00081115") or {}).get("Value") or []
    }
    return frozenset(refs - {"UNK"})


class DicomWebSource:
    """A DICOMweb dataset (the `DataSource` protocol), plus SEG labels for training."""

    def __init__(
        self, url: str, session: requests.Session, query: dict[str, str], limits: SourceLimits | None = None
    ) -> None:
        self.url, self._session, self._query = url, session, query
        self.limits = limits or SourceLimits()
        capped_http.mount(session, self.limits.wado_max_bytes)  # every answer, whoever reads it
        self._client = DICOMwebClient(url, session=session, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        self._client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=200)
        self._lock = threading.Lock()
        self._seg_refs: dict[str, frozenset[str]] = {}  # SEG series uid -> referenced series uids

    @classmethod
    def open(
        cls,
        client_url: str,
        client_id: str | None,
        client_secret: str | None,
        *,
        filters: str | None = None,
        limits: SourceLimits | None = None,
    ) -> DicomWebSource:
        """Connect and check the root answers QIDO with these credentials and filters (in seconds).

        `limits`: each answer's bytes and each volume's voxels (the settings' defaults when None).
        """
        url, auth = parse_dicomweb_url(client_url, client_id, client_secret)
        query = parse_filters(filters)
        session = requests.Session()
        session.auth = auth
        # The root was checked against the egress policy; a redirect could lead anywhere else: none followed.
        session.max_redirects = 0
        source = cls(url, session, query, limits)
        with dicomweb_errors(url, fault=Invalid):
            source._probe()
        return source

    def _probe(self) -> None:
        """QIDO searches without, then with the filters; `Invalid` unless both get DICOM JSON back."""
        status = self._qido_status({})
        if status is not None:
            raise Invalid(
                f"{self.url} is not a DICOMweb root: a QIDO search for series there answered "
                f"HTTP {status} without DICOM JSON."
            )
        status = self._qido_status(self._query)
        if status is not None:
            raise Invalid(f"The DICOMweb server at {self.url} rejected the filters as a QIDO query (HTTP {status}).")

    def _qido_status(self, query: dict[str, str]) -> int | None:
        """None when a one-result QIDO series search answers DICOM JSON (or no content), else its status."""
        response = self._session.get(
            f"{self.url}/series",
            params={**query, "limit": "1"},
            headers={"Accept": "application/dicom+json, application/json"},
            timeout=(CONNECT_TIMEOUT_S, OPEN_READ_TIMEOUT_S),
        )
        if response.status_code in (401, 403):
            raise Invalid(f"The DICOMweb server at {self.url} rejected the credentials.")
        kind = response.headers.get("Content-Type", "").lower()
        body = response.json() if response.status_code == 200 and "json" in kind and response.content else []
        dicom_json = isinstance(body, list) and all(isinstance(i, dict) and all(map(_TAG.match, i)) for i in body)
        return None if response.status_code in (200, 204) and dicom_json else response.status_code

    def _search(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        params = dict(filters)
        fields = [f for f in params.pop("includefield", "").split(",") if f] + list(META_TAGS)
        fuzzy = params.pop("fuzzymatching", "").lower()
        with dicomweb_errors(self.url):
            return self._client.search_for_series(
                search_filters=params,
                fields=fields,
                get_remaining=True,
                fuzzymatching=True if fuzzy == "true" else None,
            )

    def _images(self, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The QIDO rows of image series; a row whose SeriesInstanceUID is not a UID names no image (skipped)."""
        rows = self._search({**self._query, **(extra or {})})
        images = [row for row in rows if _value(row, "00080060").upper() not in NOT_IMAGES]
        kept = [row for row in images if _is_uid(_value(row, "0020000E"))]
        if len(kept) < len(images):
            log.warning(
                "The DICOMweb server at %s listed %d series whose SeriesInstanceUID is not a DICOM UID; "
                "they were skipped",
                self.url,
                len(images) - len(kept),
            )
        return kept

    def _study_of(self, row: dict[str, Any], series_uid: str) -> str:
        """The StudyInstanceUID of a QIDO row, checked before it goes into a WADO-RS path."""
        study_uid = _value(row, "0020000D")
        if not _is_uid(study_uid):
            raise _not_a_uid(self.url, "StudyInstanceUID", f" for series {series_uid}")
        return study_uid

    def _series_path(self, study_uid: str, series_uid: str) -> str:
        """`/studies/{study}/series/{series}` of a WADO-RS request; both checked to be UIDs (the last guard)."""
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
            if not _is_uid(uid):
                raise _not_a_uid(self.url, name, "")
        return f"/studies/{study_uid}/series/{series_uid}"

    def _segs(self) -> dict[str, frozenset[str]]:
        """SEG series uid -> referenced series uids, for every SEG on the server now."""
        found = [(_value(r, "0020000D"), _value(r, "0020000E")) for r in self._search({"Modality": "SEG"})]
        rows = [(st, se) for st, se in found if _is_uid(st) and _is_uid(se)]  # others cannot be asked for
        with self._lock:
            missing = [(st, se) for st, se in rows if se not in self._seg_refs]
        if missing:
            with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                found = list(pool.map(lambda pair: self._seg_metadata_refs(*pair), missing))
            with self._lock:
                self._seg_refs.update(zip((se for _, se in missing), found, strict=True))
        with self._lock:
            return {se: self._seg_refs[se] for _, se in rows}

    def _seg_metadata_refs(self, study_uid: str, series_uid: str) -> frozenset[str]:
        self._series_path(study_uid, series_uid)  # both UIDs, before the client builds its URL from them
        with dicomweb_errors(self.url):
            return _referenced_series(self._client.retrieve_series_metadata(study_uid, series_uid))

    def image_ids(self) -> list[str]:
        """SeriesInstanceUIDs of every image (series matching the filters), in the server's order."""
        return [_value(row, "0020000E") for row in self._images()]

    def unlabeled_ids(self) -> list[str]:
        """SeriesInstanceUIDs of the images no SEG references, in the server's order."""
        images = self.image_ids()
        labeled = set().union(*self._segs().values())
        return [uid for uid in images if uid not in labeled]

    def labels_of(self, image_id: str) -> list[str]:
        """SeriesInstanceUIDs of the SEGs that reference `image_id`."""
        return [seg for seg, refs in self._segs().items() if image_id in refs]

    def _row(self, image_id: str) -> dict[str, Any]:
        """The QIDO attributes of image `image_id`; `Invalid` when it is not one of the dataset's images."""
        rows = self._images({"SeriesInstanceUID": image_id}) if _is_uid(image_id) else []
        rows = [row for row in rows if _value(row, "0020000E") == image_id]
        if not rows:
            raise Invalid(f"Image {image_id} is not in the dataset.")
        return rows[0]

    def check_image(self, image_id: str) -> None:
        """Raise `Invalid` if `image_id` is not a series matching the dataset's filters."""
        self._row(image_id)

    def meta(self, image_id: str) -> dict[str, Any]:
        """What `nextimage` returns beside the id (API.md §3.1); missing tags are "UNK"."""
        row = self._row(image_id)
        meta = {name: _value(row, tag) for name, tag in META_TAGS.items()}
        meta["RetrieveURL"] = self.url + self._series_path(self._study_of(row, image_id), image_id)
        return meta

    def _retrieve(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """Every instance of a series as a Part-10 file `folder/<SOPInstanceUID>.dcm` (WADO-RS).

        A series larger than `MEDCLOUD_WADO_MAX_BYTES` is `Invalid` as soon as the count passes the cap;
        whatever failed, the instances already written are removed.
        """
        wado_path = self._series_path(study_uid, series_uid)
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        try:
            with self._too_large(f"Series {series_uid}"), dicomweb_errors(self.url):
                response = self._session.get(
                    self.url + wado_path,
                    headers={"Accept": _ACCEPT_DICOM},
                    stream=True,
                    timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                )
                response.raise_for_status()
                for n, part in enumerate(self._client._decode_multipart_message(response, stream=True)):
                    data = as_part10(bytes(part))
                    uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).get("SOPInstanceUID", ""))
                    path = folder / (f"{uid}.dcm" if _is_uid(uid) else f"instance_{n:05d}.dcm")
                    paths.append(path)
                    path.write_bytes(data)
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise
        if not paths:
            raise Unavailable(f"The DICOMweb server at {self.url} returned no instance of series {series_uid}.")
        return paths

    @contextlib.contextmanager
    def _too_large(self, what: str) -> Iterator[None]:
        """An answer past the byte cap, said of `what` (a series) rather than of an answer."""
        try:
            yield
        except capped_http.AnswerTooLarge as exc:
            raise Invalid(
                f"{what} on the DICOMweb server at {self.url} is larger than this server retrieves "
                f"({exc.max_bytes:,} bytes, {capped_http.SETTING})."
            ) from None

    def fetch(self, image_id: str, dest_dir: Path) -> list[Path]:
        """Download the series: `[dest_dir/<uid>.nii.gz (HU volume), dest_dir/dicom/<SOPInstanceUID>.dcm...]`.

        Its voxels are counted from the instances' headers before the volume is built (`MEDCLOUD_MAX_VOXELS`).
        """
        row = self._row(image_id)
        dest_dir = Path(dest_dir)
        files = self._retrieve(self._study_of(row, image_id), image_id, dest_dir / "dicom")
        voxels.check_count(voxels.dicom_voxels(files), self.limits.max_voxels, what=f"Series {image_id}")
        try:
            volume = read_series(files)
        except ValueError as exc:
            raise Invalid(f"Series {image_id} cannot be read as a volume: {exc}") from None
        return [write_nifti(volume, dest_dir / f"{image_id}.nii.gz"), *files]

    def store(self, datasets: list[pydicom.Dataset]) -> None:
        """Store instances by STOW-RS with the dataset's credentials; `Unavailable` when the server refuses one."""
        with dicomweb_errors(self.url):
            answer = self._client.store_instances(datasets)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise Unavailable(
                f"The DICOMweb server at {self.url} refused {len(failed)} instance(s) (failure reason {', '.join(reasons)})."
            )

    def fetch_label(self, seg_series_uid: str, image: SeriesVolume, labels: dict[str, str], dest: Path) -> Path:
        """The SEG as a uint8 label NIfTI on `image`'s grid; `dest` is a `.nii[.gz]` file or a folder."""
        rows = self._search({"Modality": "SEG", "SeriesInstanceUID": seg_series_uid}) if _is_uid(seg_series_uid) else []
        if not rows:
            raise Invalid(f"Label {seg_series_uid} is not a DICOM SEG series of the dataset.")
        dest = Path(dest)
        target = dest if dest.name.endswith((".nii", ".nii.gz")) else dest / f"{seg_series_uid}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        study_uid = self._study_of(rows[0], seg_series_uid)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".seg-") as tmp:
            files = self._retrieve(study_uid, seg_series_uid, Path(tmp))
            try:
                parts = [seg_to_labels(path, image, labels, max_voxels=self.limits.max_voxels) for path in files]
            except ValueError as exc:
                raise Invalid(f"Label {seg_series_uid} cannot be placed on the image: {exc}") from None
        label = parts[0]
        for part in parts[1:]:  # a SEG series of several instances: later ones drawn over earlier ones
            label = np.where(part > 0, part, label)
        return write_label_nifti(label, image, target)
