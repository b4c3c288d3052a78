"""Start real storage servers (Azurite for Azure Blob, moto for S3, gcp-storage-emulator for GCS) on free local ports."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


# --- Google Cloud Storage: the gcp-storage-emulator's JSON API, with OAuth like the real service ---

GCS_PROJECT = "medcloud-test"
GOOGLE_TOKEN_URI = (
    "https://oauth2.googleapis.com/token"  # the audience google-auth signs for, whatever the key's token_uri
)


@dataclass
class GcsInfo:
    """How to reach a running GCS emulator, and its OAuth token endpoint (`{endpoint}/token`).

    Unlike the bare emulator, every storage request needs a bearer token this server issued, and a token
    is issued only for a JWT signed by a key registered with `service_account_key` (as Google checks a
    service-account key): a wrong key is refused at the token exchange, no key at all with a 401.
    """

    endpoint: str  # http://127.0.0.1:<port>
    admin_token: str  # for the tests' own uploads and reads
    public_keys: dict[str, Any] = field(default_factory=dict)  # client_email -> RSA public key
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> client_email
    grants: list[str] = field(default_factory=list)  # client_email of each token issued, in order

    @property
    def token_uri(self) -> str:
        return f"{self.endpoint}/token"

    def service_account_key(self, email: str, *, register: bool = True) -> str:
        """A fresh service-account JSON key (the key file's content); its public half registered unless told not."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if register:
            self.public_keys[email] = private.public_key()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": GCS_PROJECT,
                "private_key_id": uuid.uuid4().hex,
                "private_key": pem,
                "client_email": email,
                "client_id": str(uuid.uuid4().int)[:21],
                "token_uri": self.token_uri,
            }
        )

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> bytes:
        """One JSON-API request with the admin token; the response body."""
        headers = {"Authorization": f"Bearer {self.admin_token}"} | (
            {"Content-Type": content_type} if content_type else {}
        )
        req = urllib.request.Request(self.endpoint + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return bytes(resp.read())

    def create_bucket(self, bucket: str) -> None:
        self.request(
            "POST", f"/storage/v1/b?project={GCS_PROJECT}", json.dumps({"name": bucket}).encode(), "application/json"
        )

    def put(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self.request("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")

    def read(self, bucket: str, name: str) -> bytes:
        return self.request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name under `prefix`."""
        query = urllib.parse.urlencode({"prefix": prefix})
        listing = json.loads(self.request("GET", f"/storage/v1/b/{bucket}/o?{query}"))
        return sorted(item["name"] for item in listing.get("items", []))


def _gcs_handler(info: GcsInfo, storage: Any) -> type:
    """The emulator's request handler behind a token check, plus the OAuth JWT-bearer token endpoint."""
    import jwt
    from gcp_storage_emulator.server import RequestHandler

    class Handler(RequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _token(self) -> None:
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            assertion = (form.get("assertion") or [""])[0]
            try:
                email = jwt.decode(assertion, options={"verify_signature": False})["iss"]
                key = info.public_keys[email]
                jwt.decode(assertion, key, algorithms=["RS256"], audience=[info.token_uri, GOOGLE_TOKEN_URI])
            except (jwt.PyJWTError, KeyError):
                self._reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
                return
            token = uuid.uuid4().hex
            info.tokens[token] = email
            info.grants.append(email)
            self._reply(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

        def _authorized(self) -> bool:
            if self.path == "/":  # the emulator's health check
                return True
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if token == info.admin_token or token in info.tokens:
                return True
            message = "Anonymous caller does not have storage access." if not token else "Invalid Credentials"
            self._reply(401, {"error": {"code": 401, "message": message}})
            return False

        def do_GET(self) -> None:
            if self._authorized():
                super().do_GET()

        def do_POST(self) -> None:
            if self.path == "/token":
                self._token()
            elif self._authorized():
                super().do_POST()

        def do_PUT(self) -> None:
            if self._authorized():
                super().do_PUT()

        def do_DELETE(self) -> None:
            if self._authorized():
                super().do_DELETE()

        def do_PATCH(self) -> None:
            if self._authorized():
                super().do_PATCH()

    return functools.partial(Handler, storage)  # type: ignore[return-value]


@contextlib.contextmanager
def gcs_emulator_server(*, timeout_s: float = 30.0) -> Iterator[GcsInfo]:
    """Run gcp-storage-emulator (in memory) with token checks on a free 127.0.0.1 port; stop it on exit."""
    import http.server
    import threading

    from gcp_storage_emulator.storage import Storage

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    info = GcsInfo(endpoint=f"http://127.0.0.1:{free_port()}", admin_token=uuid.uuid4().hex)
    port = int(info.endpoint.rsplit(":", 1)[1])
    httpd = http.server.HTTPServer(("127.0.0.1", port), _gcs_handler(info, Storage(use_memory_fs=True)))
    thread = threading.Thread(target=httpd.serve_forever, name="gcs-emulator", daemon=True)
    thread.start()
    try:
        wait_until(lambda: http_answers(info.endpoint + "/"), timeout_s=timeout_s, what="GCS emulator")
        yield info
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def upload_folder_to_gcs(info: GcsInfo, folder: Path, bucket: str, prefix: str = "") -> None:
    """Create `bucket` if needed and upload every file below `folder` under `prefix`."""
    try:
        info.create_bucket(bucket)
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: it exists already
            raise
    for path, rel in _local_files(folder):
        info.put(bucket, f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel, path.read_bytes())


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsInfo]:
    """A real GCS emulator (JSON API, OAuth token checks) for the whole test session."""
    with gcs_emulator_server() as info:
        yield info
