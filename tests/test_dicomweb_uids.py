"""UIDs a PACS answers are checked before they go into a WADO-RS path (sources/dicomweb.py).

A tiny DICOMweb server on loopback answers QIDO with hostile JSON: a StudyInstanceUID `../../..`,
one with a trailing newline, one of 65 digits, a SeriesInstanceUID with a slash, and a SEG whose
UIDs are paths. Every request it gets is recorded: none but QIDO searches may arrive, and each
attempt to use a bad UID ends in a 400 that says so.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from conftest import Api

from medcloud.errors import Invalid
from medcloud.sources.dicomweb import DicomWebSource, _is_uid

ROOT = "/dicom-web"
NOT_A_UID = "that is not a DICOM UID"


def _series(study: str, series: str, modality: str = "CT") -> dict:
    return {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "00080060": {"vr": "CS", "Value": [modality]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
    }


IMAGES = [
    _series("../../../../admin", "1.2.3"),  # a path as the study
    _series("1.2.840.10008\n", "1.2.4"),  # a UID and a newline (a `$` anchored check lets it through)
    _series("1" * 65, "1.2.6"),  # one digit too long
    _series("1.2", "1.2.5/../../x"),  # a path as the series: never an image id
    _series("1.2.9", "1.2.9.1"),  # a fine one
]
SEGS = [_series("..", "9.9", "SEG"), _series("1.2.9", "../9.8", "SEG")]


@dataclass
class Pacs:
    url: str
    paths: list[str] = field(default_factory=list)


@contextlib.contextmanager
def hostile_pacs() -> Iterator[Pacs]:
    """QIDO `GET /dicom-web/series` answers the rows above (by Modality, SeriesInstanceUID, offset); 404 else."""
    pacs = Pacs(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            pacs.paths.append(unquote(self.path))
            parts = urlsplit(self.path)
            if parts.path != f"{ROOT}/series":
                self.send_response(404)
                self.end_headers()
                return
            query = parse_qs(parts.query)
            rows = SEGS if query.get("Modality") == ["SEG"] else IMAGES
            rows = rows[int(query.get("offset", ["0"])[0]) :]  # clients page until an empty answer
            if "SeriesInstanceUID" in query:
                rows = [r for r in rows if r["0020000E"]["Value"][0] in query["SeriesInstanceUID"]]
            body = json.dumps(rows).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    pacs.url = f"http://127.0.0.1:{server.server_port}{ROOT}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield pacs
    finally:
        server.shutdown()
        server.server_close()


def only_qido(pacs: Pacs) -> None:
    """Every request was a QIDO series search: no WADO-RS path was built from a bad UID."""
    assert pacs.paths, "the server was never asked"
    for path in pacs.paths:
        assert urlsplit(path).path == f"{ROOT}/series", path
        assert "/studies/" not in path and "admin" not in path, path


def test_the_uid_check_is_the_dicom_grammar() -> None:
    assert _is_uid("1.2.840.10008.1.2.1") and _is_uid("1" * 64)
    for bad in ("1" * 65, "1.2\n", "\n1.2", "1..2", ".1", "1.", "1.2/3", "../1", "1.2 ", "", "١.٢", None, 12):
        assert not _is_uid(bad), repr(bad)


def test_bad_uids_from_qido_never_reach_a_wado_path(tmp_path: Path) -> None:
    with hostile_pacs() as pacs:
        source = DicomWebSource.open(pacs.url, None, None, filters="Modality=CT")
        assert source.image_ids() == ["1.2.3", "1.2.4", "1.2.6", "1.2.9.1"]  # the slashed series is no image
        for series in ("1.2.3", "1.2.4", "1.2.6"):
            with pytest.raises(Invalid, match=NOT_A_UID) as caught:
                source.fetch(series, tmp_path / series)
            assert f"StudyInstanceUID for series {series} {NOT_A_UID}" in caught.value.message
            assert "nothing was requested with it" in caught.value.message
            with pytest.raises(Invalid, match=NOT_A_UID):
                source.meta(series)
            assert not (tmp_path / series / "dicom").exists()
        with pytest.raises(Invalid, match="is not in the dataset"):
            source.fetch("1.2.5/../../x", tmp_path / "x")
        # SEGs whose UIDs are paths are skipped: their metadata is never asked for, no label comes of them.
        assert source.unlabeled_ids() == ["1.2.3", "1.2.4", "1.2.6", "1.2.9.1"]
        with pytest.raises(Invalid, match=NOT_A_UID):
            source.fetch_label("9.9", None, {}, tmp_path / "label.nii.gz")  # type: ignore[arg-type]
        assert source.meta("1.2.9.1")["RetrieveURL"] == f"{pacs.url}/studies/1.2.9/series/1.2.9.1"
        only_qido(pacs)


def test_through_the_api_a_bad_study_uid_is_a_400_and_no_wado_request(api: Api) -> None:
    with hostile_pacs() as pacs:
        created = api.post("datasets", json={"name": "hostile pacs", "client_url": pacs.url})
        assert created.status_code == 201, created.text
        dataset = created.json()["id"]
        volume = api.get(f"datasets/{dataset}/images/1.2.3/volume")
        assert volume.status_code == 400, volume.text
        assert NOT_A_UID in volume.json()["error_desc"] and "StudyInstanceUID" in volume.json()["error_desc"]
        assert "admin" not in volume.text
        slashed = api.get(f"datasets/{dataset}/images/1.2.5%2F..%2F..%2Fx/volume")
        assert slashed.status_code in (400, 404) and slashed.json()["error_code"] == slashed.status_code
        only_qido(pacs)
