"""Start real storage servers (Azurite for Azure Blob, moto for S3) on free local ports for tests."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MOTO_KEY_ID = "testing-key-id"
MOTO_SECRET = "testing-secret"


@dataclass(frozen=True)
class AzuriteInfo:
    """How to reach a running Azurite blob server."""

    endpoint: str  # http://127.0.0.1:<port>/devstoreaccount1
    account: str
    key: str
    connection_string: str

    @property
    def host_url(self) -> str:
        """`http://127.0.0.1:<port>` without the account segment."""
        return self.endpoint.rsplit("/", 1)[0]


@dataclass(frozen=True)
class MotoInfo:
    """How to reach a running moto S3 server (any key pair is accepted)."""

    endpoint_url: str  # http://127.0.0.1:<port>
    key: str = MOTO_KEY_ID
    secret: str = MOTO_SECRET


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll `check` until it returns True; raise TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not become ready within {timeout_s:.0f} s")


def http_answers(url: str) -> bool:
    """True when an HTTP server answers `url` with any status."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def azurite_server(tmp_dir: Path, *, timeout_s: float = 30.0) -> Iterator[AzuriteInfo]:
    """Run `azurite-blob` on a free port with its data under `tmp_dir`; stop it on exit."""
    if not AZURITE_BIN.exists():
        raise FileNotFoundError(f"{AZURITE_BIN} is missing: run `npm install` in {REPO_ROOT}")
    port = free_port()
    location = Path(tmp_dir) / "azurite"
    location.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(AZURITE_BIN),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(location),
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--loose",
    ]
    log = open(location / "azurite.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        wait_until(
            lambda: proc.poll() is None and http_answers(endpoint + "?comp=list"),
            timeout_s=timeout_s,
            what="Azurite",
        )
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
        )
        yield AzuriteInfo(endpoint=endpoint, account=AZURITE_ACCOUNT, key=AZURITE_KEY, connection_string=conn)
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started (and its children, via its own process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


@contextlib.contextmanager
def moto_server(*, timeout_s: float = 30.0) -> Iterator[MotoInfo]:
    """Run moto's S3-compatible server in a thread on a free 127.0.0.1 port; stop it on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_answers(endpoint_url + "/moto-api/"), timeout_s=timeout_s, what="moto")
        yield MotoInfo(endpoint_url=endpoint_url)
    finally:
        server.stop()


def _local_files(folder: Path) -> Iterator[tuple[Path, str]]:
    """Every file below `folder` with its POSIX path relative to it."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            yield path, path.relative_to(folder).as_posix()


def upload_folder_to_azure(info: AzuriteInfo, folder: Path, container: str, prefix: str = "") -> None:
    """Create `container` if needed and upload every file below `folder` under `prefix`."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(info.connection_string)
    client = service.get_container_client(container)
    if not client.exists():
        client.create_container()
    for path, rel in _local_files(folder):
        name = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
        client.upload_blob(name, path.read_bytes(), overwrite=True)


def s3_client(info: MotoInfo) -> Any:
    """A boto3 S3 client for the moto server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=info.endpoint_url,
        aws_access_key_id=info.key,
        aws_secret_access_key=info.secret,
        region_name="us-east-1",
    )


def upload_folder_to_s3(info: MotoInfo, folder: Path, bucket: str, prefix: str = "") -> None:
    """Create `bucket` if needed and upload every file below `folder` under `prefix`."""
    client = s3_client(info)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    for path, rel in _local_files(folder):
        key = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteInfo]:
    """A real Azurite blob server for the whole test session."""
    tmp = Path(tempfile.mkdtemp(prefix="medcloud-azurite-"))
    try:
        with azurite_server(tmp) as info:
            yield info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoInfo]:
    """A real moto S3 server for the whole test session."""
    with moto_server() as info:
        yield info
