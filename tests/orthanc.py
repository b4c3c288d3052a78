"""Start a real Orthanc with the DICOMweb plugin on a free local port for tests, and talk to it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from services import _stop, free_port, http_answers, wait_until

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_USER = "orthanc"
ORTHANC_PASSWORD = "orthanc"


@dataclass(frozen=True)
class OrthancInfo:
    """How to reach a running Orthanc: its REST root, its DICOMweb root and the Basic-auth user."""

    rest_url: str  # http://127.0.0.1:<port>
    url: str  # the DICOMweb root, http://127.0.0.1:<port>/dicom-web
    user: str = ORTHANC_USER
    password: str = ORTHANC_PASSWORD

    @property
    def port(self) -> int:
        return int(self.rest_url.rsplit(":", 1)[1])

    def session(self) -> requests.Session:
        session = requests.Session()
        session.auth = (self.user, self.password)
        return session

    def stow(self, datasets: Iterable[pydicom.Dataset | bytes]) -> None:
        """Store instances through DICOMweb STOW-RS (what OHIF does after drawing a SEG)."""
        from medcloud.imaging.synthetic_dicom import series_bytes

        items = list(datasets)
        parts = [item if isinstance(item, bytes) else series_bytes([item])[0] for item in items]
        boundary = "medcloud-test-boundary"
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts
            )
            + f"--{boundary}--\r\n".encode()
        )
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        with self.session() as session:
            response = session.post(f"{self.url}/studies", data=body, headers=headers, timeout=60)
        response.raise_for_status()
        failed = response.json().get("00081198", {}).get("Value", [])
        if failed:
            raise AssertionError(f"Orthanc refused {len(failed)} of {len(parts)} instances: {failed}")

    def clear(self) -> None:
        """Delete every patient (and so every study, series and instance) stored in Orthanc."""
        with self.session() as session:
            patients = session.get(f"{self.rest_url}/patients", timeout=10)
            patients.raise_for_status()
            for patient in patients.json():
                session.delete(f"{self.rest_url}/patients/{patient}", timeout=30).raise_for_status()

    def delete_series(self, series_uid: str) -> None:
        """Delete one series, found by its SeriesInstanceUID."""
        with self.session() as session:
            found = session.post(f"{self.rest_url}/tools/lookup", data=series_uid, timeout=10)
            found.raise_for_status()
            for item in found.json():
                if item.get("Type") == "Series":
                    session.delete(f"{self.rest_url}/series/{item['ID']}", timeout=30).raise_for_status()


def orthanc_config(root: Path, port: int) -> dict[str, object]:
    """Orthanc's JSON configuration: local only, Basic auth, DICOMweb at /dicom-web/, storage under `root`."""
    return {
        "Name": "medcloud-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "DicomServerEnabled": False,
        "SaveJobs": False,
        "OverwriteInstances": True,
        "StorageCompression": False,
        "HttpThreadsCount": 8,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Host": f"127.0.0.1:{port}",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


@contextlib.contextmanager
def orthanc_server(tmp_dir: Path, *, timeout_s: float = 30.0) -> Iterator[OrthancInfo]:
    """Run Orthanc on a free port with its storage and index under `tmp_dir`; stop it on exit."""
    if not Path(ORTHANC_BIN).exists() or not DICOMWEB_PLUGIN.exists():
        raise FileNotFoundError("Orthanc is missing: apt-get install -y orthanc orthanc-dicomweb")
    root = Path(tmp_dir) / "orthanc"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(root, port), indent=2))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [ORTHANC_BIN, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
    )
    info = OrthancInfo(rest_url=f"http://127.0.0.1:{port}", url=f"http://127.0.0.1:{port}/dicom-web")
    try:
        wait_until(lambda: _ready(proc, info), timeout_s=timeout_s, what="Orthanc")
        yield info
    finally:
        _stop(proc)
        log.close()


def _ready(proc: subprocess.Popen, info: OrthancInfo) -> bool:
    """True once Orthanc answers its DICOMweb root (with auth); raise if the process died."""
    if proc.poll() is not None:
        raise RuntimeError(f"Orthanc exited with status {proc.returncode} while starting")
    if not http_answers(info.rest_url + "/system"):
        return False
    with info.session() as session:
        return session.get(f"{info.url}/studies", timeout=1).status_code == 200


@pytest.fixture(scope="session", name="orthanc")
def orthanc_fixture() -> Iterator[OrthancInfo]:
    """A real Orthanc with DICOMweb for the whole test session (empty when a test asks for it)."""
    tmp = Path(tempfile.mkdtemp(prefix="medcloud-orthanc-"))
    try:
        with orthanc_server(tmp) as info:
            yield info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(name="empty_orthanc")
def empty_orthanc_fixture(orthanc: OrthancInfo) -> OrthancInfo:
    """The session's Orthanc with everything deleted first, so a test sees only what it stores."""
    orthanc.clear()
    return orthanc
