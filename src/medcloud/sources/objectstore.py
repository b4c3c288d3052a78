"""Object-storage datasets (S3, Azure Blob, GCS, local folders): a manifest plus files, read through fsspec.

`client_url` forms: `s3://bucket/prefix`, `https://<bucket>.s3[.<region>].amazonaws.com/prefix`,
`https://<account>.blob.core.windows.net/<container>/prefix`, `az://<container>/prefix` (account =
client_id), `gs://bucket/prefix`, `https://storage.googleapis.com/<bucket>/prefix`, a local path or
`file://` URL. Any other `http(s)://host[:port]/...` is a self-hosted store: when its first path
segment equals `client_id` it is Azure Blob in path style (Azurite:
`http://127.0.0.1:10000/devstoreaccount1/<container>/prefix`, client_id = account, client_secret =
key); otherwise it is an S3-compatible endpoint (MinIO, moto) in path style,
`http://host:port/<bucket>/prefix`. A URL ending in `.json` is the manifest, else `<url>/manifest.json`.
Credentials are only ever the ones given: without them access is anonymous, never the server's own.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import posixpath
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

import fsspec

from medcloud.errors import Invalid, MedcloudError, Unavailable
from medcloud.sources.manifest import Manifest, ManifestImage, check_relative_path, parse_manifest

CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 60
MAX_MANIFEST_BYTES = 256 * 1024**2
_SECRET_OPTIONS = {"key", "secret", "account_key", "sas_token", "connection_string", "token", "credential"}
_S3_HOST = re.compile(r"^(?:(?P<bucket>.+)\.)?s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com(?:\.cn)?$")
_AZURE_HOST = re.compile(r"^(?P<account>[a-z0-9]+)\.blob\.core\.windows\.net$")
_GCS_HOST = re.compile(r"^(?:(?P<bucket>.+)\.)?storage\.googleapis\.com$")


@dataclass(frozen=True)
class StoreLocation:
    """Where a dataset lives: an fsspec protocol, its options (secrets inside) and the manifest's paths."""

    protocol: str  # "s3", "abfs", "gcs" or "file"
    storage_options: dict[str, Any] = field(hash=False)  # fsspec.filesystem(protocol, **storage_options)
    root: str  # fsspec path of the manifest's folder, no trailing slash
    manifest_path: str
    url: str = ""  # the client URL without secrets, for messages
    store: str | None = None  # identity of the store (endpoint/account); None = any of this protocol

    def __repr__(self) -> str:
        options = {k: ("***" if k in _SECRET_OPTIONS else v) for k, v in self.storage_options.items()}
        return (
            f"StoreLocation(protocol={self.protocol!r}, url={self.url!r}, root={self.root!r}, "
            f"manifest_path={self.manifest_path!r}, storage_options={options!r})"
        )

    __str__ = __repr__

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """A fresh filesystem for this location (never shared with another dataset), failing fast."""
        fs = fsspec.filesystem(self.protocol, **self.storage_options)
        if self.protocol in ("s3", "gcs"):
            fs.retries = 2  # s3fs/gcsfs own retry loops (class default 5-6)
        if self.protocol == "abfs":  # adlfs takes no retry settings: the SDK default backs off for a minute
            from azure.storage.blob.aio import BlobServiceClient
            from fsspec.asyn import sync

            old = fs.service_client
            fs.service_client = BlobServiceClient.from_connection_string(
                self.storage_options["connection_string"],
                retry_total=1,
                initial_backoff=0.3,
                increment_base=1,
                random_jitter_range=0.2,
                connection_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
            )
            sync(fs.loop, old.close)
        return fs

    def secrets(self) -> list[str]:
        """The secret strings inside `storage_options`, to scrub from any text shown or logged."""
        values: list[str] = []
        for key in _SECRET_OPTIONS & self.storage_options.keys():
            value = self.storage_options[key]
            if isinstance(value, dict):
                values += [v for v in value.values() if isinstance(v, str) and len(v) > 16]
            elif key == "connection_string":
                values += re.findall(r"(?:AccountKey|SharedAccessSignature)=([^;]+)", value)
            elif isinstance(value, str):
                values.append(value)
        return [v for v in values if v]


@dataclass(frozen=True)
class _Parsed:
    protocol: str
    options: dict[str, Any]
    path: str
    store: str | None
    display: str


def parse_client_url(
    client_url: str, client_id: str | None, client_secret: str | None, *, endpoint_url: str | None = None
) -> StoreLocation:
    """Map a dataset's `client_url` and credentials to a `StoreLocation`; `Invalid` if unsupported."""
    parsed = _parse_store_url(client_url.strip(), client_id or None, client_secret or None, endpoint_url)
    path = parsed.path.rstrip("/") if parsed.path not in ("/", "") else parsed.path
    if path.lower().endswith(".json"):
        root, manifest_path = posixpath.dirname(path), path
    else:
        root, manifest_path = path, f"{path}/manifest.json" if path != "/" else "/manifest.json"
    if not root or (parsed.protocol != "file" and root.startswith("/")):
        raise Invalid(f"The client_url {parsed.display} names no bucket or container.")
    return StoreLocation(
        protocol=parsed.protocol,
        storage_options=parsed.options,
        root=root,
        manifest_path=manifest_path,
        url=parsed.display,
        store=parsed.store,
    )


def _parse_store_url(url: str, cid: str | None, secret: str | None, endpoint_url: str | None) -> _Parsed:
    parts = urlsplit(url)
    scheme, display = parts.scheme.lower(), _display(url)
    bucket_path = f"{parts.netloc}{parts.path}"
    if scheme in ("s3", "s3a"):
        return _s3(bucket_path, cid, secret, endpoint_url, None, display)
    if scheme in ("gs", "gcs"):
        return _gcs(bucket_path, secret, endpoint_url, display)
    if scheme in ("az", "abfs", "abfss"):
        if not cid:
            raise Invalid(f"An {scheme}:// client_url needs the storage account name as client_id.")
        endpoint = endpoint_url or f"https://{cid}.blob.core.windows.net"
        return _azure(bucket_path, cid, secret, endpoint.rstrip("/"), "", display)
    if scheme in ("", "file"):
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise Invalid(f"The client_url {display} names a remote host; a file:// URL must be local.")
        local = url2pathname(unquote(parts.path)) if scheme else url
        path = Path(local).expanduser().absolute().as_posix()
        return _Parsed("file", {"skip_instance_cache": True}, posixpath.normpath(path), "file", display)
    if scheme in ("http", "https"):
        return _parse_http(parts, cid, secret, display)
    raise Invalid(f"The client_url {display} is not supported: use s3://, gs://, https://, a local path or file://.")


def _parse_http(parts: Any, cid: str | None, secret: str | None, display: str) -> _Parsed:
    host = (parts.hostname or "").lower()
    path = unquote(parts.path).lstrip("/")
    if m := _AZURE_HOST.match(host):
        return _azure(path, m["account"], secret, f"https://{host}", parts.query, display)
    if m := _S3_HOST.match(host):
        return _s3(f"{m['bucket']}/{path}" if m["bucket"] else path, cid, secret, None, m["region"], display)
    if m := _GCS_HOST.match(host):
        return _gcs(f"{m['bucket']}/{path}" if m["bucket"] else path, secret, None, display)
    base = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    first, _, rest = path.partition("/")
    if cid and first == cid:
        return _azure(rest, cid, secret, f"{base}/{first}", parts.query, display)
    return _s3(path, cid, secret, base, None, display)


def _s3(
    path: str, cid: str | None, secret: str | None, endpoint: str | None, region: str | None, display: str
) -> _Parsed:
    if bool(cid) != bool(secret):
        raise Invalid(
            "Give both client_id and client_secret (access key and secret key), or neither for a public bucket."
        )
    options: dict[str, Any] = {"key": cid, "secret": secret} if cid else {"anon": True}
    client_kwargs = {k: v for k, v in (("endpoint_url", endpoint), ("region_name", region)) if v}
    options |= {
        "client_kwargs": client_kwargs,
        "skip_instance_cache": True,
        "config_kwargs": {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": 2, "mode": "standard"},
        },
    }
    return _Parsed("s3", options, path, f"s3:{endpoint}" if endpoint else None, display)


def _azure(path: str, account: str, secret: str | None, endpoint: str, query: str, display: str) -> _Parsed:
    conn = f"BlobEndpoint={endpoint};"
    sas = secret if secret and "sig=" in secret else (query if "sig=" in query else None)
    if sas:
        conn += f"SharedAccessSignature={sas.lstrip('?')};"
    elif secret:
        try:
            base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("The client_secret is not a valid Azure account key or SAS token.") from None
        scheme = endpoint.split(":", 1)[0]
        conn = f"DefaultEndpointsProtocol={scheme};AccountName={account};AccountKey={secret};{conn}"
    options = {
        "connection_string": conn,
        "skip_instance_cache": True,
        "connection_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }
    return _Parsed("abfs", options, path, f"azure:{endpoint}", display)


def _gcs(path: str, secret: str | None, endpoint: str | None, display: str) -> _Parsed:
    token: Any = "anon"
    if secret:
        try:
            token = json.loads(secret)
        except ValueError:
            token = None
        if not isinstance(token, dict) or "type" not in token:
            raise Invalid("The client_secret for a Google Cloud Storage dataset must be a service-account JSON key.")
    options = {"token": token, "skip_instance_cache": True, "requests_timeout": READ_TIMEOUT_S}
    if endpoint:
        options["endpoint_url"] = endpoint
    return _Parsed("gcs", options, path, f"gcs:{endpoint}" if endpoint else None, display)


def _display(url: str) -> str:
    """The URL without user info, query (SAS tokens) or fragment."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_root(
    location: StoreLocation,
    root_path: str | None,
    client_id: str | None,
    client_secret: str | None,
    *,
    endpoint_url: str | None = None,
) -> str:
    """The fsspec path of a manifest's `root_path` (URL, absolute or relative) in `location`'s store."""
    text = (root_path or "").strip()
    if text in ("", ".", "./"):
        return location.root
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        try:  # credentials that cannot even apply to the URL's kind of store mean another store
            other = _parse_store_url(text, client_id or None, client_secret or None, endpoint_url)
        except Invalid:
            other = None
        if other is None or other.protocol != location.protocol or other.store not in (None, location.store):
            raise Invalid(f"The manifest's root_path {_display(text)} is not in the same storage as {location.url}.")
        path = other.path
    elif text.startswith("/"):
        path = text if location.protocol == "file" else text.lstrip("/")
    else:
        path = f"{location.root}/{text}"
    path = posixpath.normpath(path)
    if path.startswith("..") or path == "." or (location.protocol != "file" and path.startswith("/")):
        raise Invalid(f"The manifest's root_path {root_path!r} is outside the storage of {location.url}.")
    return path


@contextmanager
def storage_errors(location: StoreLocation, *, fault: type[MedcloudError] = Invalid) -> Iterator[None]:
    """Turn storage-library errors into domain errors that name `location.url` and hold no secret.

    `FileNotFoundError` passes through for the caller to word. `fault` is the class used for trouble
    that is not the credentials' (Invalid while a dataset is being created, Unavailable afterwards).
    """
    try:
        yield
    except (MedcloudError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - every library error becomes a sentence
        kind = _classify(exc)
        if kind == "missing":
            raise FileNotFoundError(_reason(exc, location)) from None
        if kind == "auth":
            hint = "" if location.secrets() else (" No credentials were given and anonymous access is not allowed.")
            raise Invalid(f"The storage credentials were rejected by {location.url}.{hint}") from None
        if kind == "unreachable":
            raise fault(f"Could not reach {location.url}: {_reason(exc, location)}.") from None
        raise fault(f"Reading from {location.url} failed: {_reason(exc, location)}.") from None


def _classify(exc: BaseException) -> str | None:
    """ "missing", "auth", "unreachable" or None, from the exception's class names and status."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    response = getattr(exc, "response", None) if "ClientError" in names else None  # botocore's dict
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    if names & {"ResourceNotFoundError", "NoSuchKey", "NoSuchBucket"} or status == 404:
        return "missing"
    if (
        isinstance(exc, PermissionError)
        or "ClientAuthenticationError" in names
        or status in (401, 403)
        or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")
    ):
        return "auth"
    if names & {
        "ConnectionError",
        "TimeoutError",
        "HTTPClientError",
        "ReadTimeoutError",
        "ServiceRequestError",
        "ServiceResponseError",
        "ClientConnectionError",
        "FSTimeoutError",
    }:
        return "unreachable"
    return None


def _reason(exc: BaseException, location: StoreLocation) -> str:
    """A one-line, secret-free description of `exc`."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
    for secret in location.secrets():
        if len(secret) >= 6:  # shorter ones are no real key, and scrubbing them would garble the text
            text = text.replace(secret, "***")
    return text or type(exc).__name__


class ObjectStoreSource:
    """Object-storage dataset: a manifest plus files, read through fsspec."""

    def __init__(self, location: StoreLocation, manifest: Manifest, root: str, fs: fsspec.AbstractFileSystem) -> None:
        self.location, self.root, self._manifest, self._fs = location, root, manifest, fs
        self._by_id = {image.id: image for image in manifest.images}
        self._dirs: set[str] = set()  # listed paths that are folders (e.g. a DICOM series), as learnt

    @classmethod
    def open(
        cls,
        client_url: str,
        client_id: str | None,
        client_secret: str | None,
        *,
        endpoint_url: str | None = None,
        check_files: bool = True,
    ) -> ObjectStoreSource:
        """Connect, read and validate the manifest and (unless told not to) check every listed file exists."""
        location = parse_client_url(client_url, client_id, client_secret, endpoint_url=endpoint_url)
        fs = location.filesystem()
        manifest_url = (
            location.url if location.url.lower().endswith(".json") else (f"{location.url.rstrip('/')}/manifest.json")
        )
        manifest = parse_manifest(_read_manifest(fs, location), source=manifest_url)
        root = resolve_root(location, manifest.root_path, client_id, client_secret, endpoint_url=endpoint_url)
        source = cls(location, manifest, root, fs)
        if check_files:
            source._check_files()
        return source

    @property
    def url(self) -> str:
        """The client URL without secrets."""
        return self.location.url

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def images(self) -> list[ManifestImage]:
        return list(self._manifest.images)

    def get(self, image_id: str) -> ManifestImage:
        """The manifest entry of `image_id`; `Invalid` when the dataset has no such image."""
        try:
            return self._by_id[image_id]
        except (KeyError, TypeError):
            raise Invalid(f"Image {image_id} is not in the dataset.") from None

    def image_ids(self) -> list[str]:
        """Every image of the manifest, labeled or not."""
        return [image.id for image in self._manifest.images]

    def unlabeled_ids(self) -> list[str]:
        """Ids of the images without a label, in manifest order (the `DataSource` protocol)."""
        return [image.id for image in self._manifest.images if image.label_id is None]

    def check_image(self, image_id: str) -> None:
        """Raise `Invalid` if the image is not in the dataset (the `DataSource` protocol)."""
        self.get(image_id)

    def meta(self, image_id: str) -> dict[str, Any]:
        """What `nextimage` returns beside an object-storage image id (API.md §3.1)."""
        self.get(image_id)
        return {"labels": []}

    def fetch(self, image_id: str, dest_dir: Path) -> list[Path]:
        """Download the image's files into `dest_dir` (layout below the root kept); the local paths."""
        return self.download(self.get(image_id).paths, dest_dir)

    def fetch_label(self, image_id: str, dest_dir: Path) -> list[Path]:
        """Download the label files of `image_id` (none when it is unlabeled) into `dest_dir`."""
        return self.download(self.get(image_id).label_paths, dest_dir)

    def download(self, rel_paths: Sequence[str], dest_dir: Path) -> list[Path]:
        """Download files or folders relative to the root; each file lands atomically (temp, then rename).

        Storage trouble raises `Unavailable`; a listed file that is gone raises `Invalid` naming it.
        """
        try:
            return self._download(rel_paths, Path(dest_dir))
        except FileNotFoundError:
            self._learn_folders(rel_paths)  # opened without check_files, or the store changed since
        try:
            return self._download(rel_paths, Path(dest_dir))
        except FileNotFoundError:
            raise Invalid(f"A file of {', '.join(rel_paths)} listed in the manifest was not found.") from None

    def _download(self, rel_paths: Sequence[str], dest_dir: Path) -> list[Path]:
        pairs = self._expand(rel_paths)
        targets = [dest_dir / rel for _, rel in pairs]
        temps = [t.with_name(f".{t.name}.{uuid.uuid4().hex}.part") for t in targets]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if pairs:
                with storage_errors(self.location, fault=Unavailable):
                    self._fs.get([remote for remote, _ in pairs], [str(t) for t in temps])
            for temp, target in zip(temps, targets, strict=True):
                os.replace(temp, target)
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
        return targets

    def _expand(self, rel_paths: Sequence[str]) -> list[tuple[str, str]]:
        """(remote file, local relative path) pairs; a listed folder becomes every file below it."""
        pairs: list[tuple[str, str]] = []
        for rel in rel_paths:
            remote = posixpath.join(self.root, rel)
            if rel not in self._dirs and not (self.location.protocol == "file" and os.path.isdir(remote)):
                pairs.append((remote, rel))
                continue
            with storage_errors(self.location, fault=Unavailable):
                self._fs.invalidate_cache(remote)
                found = sorted(self._fs.find(remote))
            for path in found:
                below = self._fs._strip_protocol(path)[len(remote) + 1 :]
                pairs.append((path, check_relative_path(f"{rel}/{below}", source=self.url)))
        return pairs

    def _learn_folders(self, rel_paths: Sequence[str]) -> None:
        """Mark listed paths that are folders; `Invalid` naming the first that is neither file nor folder."""
        self._fs.invalidate_cache()  # listings cached at open may be stale
        with storage_errors(self.location, fault=Unavailable):
            for rel in rel_paths:
                remote = posixpath.join(self.root, rel)
                if rel in self._dirs or self._fs.isfile(remote):
                    continue
                if not self._fs.find(remote):
                    raise Invalid(f"File {rel} listed in the manifest was not found.")
                self._dirs.add(rel)

    def _check_files(self) -> None:
        """Raise `Invalid` naming the first listed file (image or label) that is not in the store."""
        try:
            with storage_errors(self.location):
                found = self._fs.find(self.root)
        except FileNotFoundError:
            found = []
        files = {self._fs._strip_protocol(path) for path in found}
        folders: set[str] = set()
        for path in files:
            while (path := posixpath.dirname(path)) not in folders and len(path) > len(self.root):
                folders.add(path)
        for image in self._manifest.images:
            for rel in (*image.paths, *image.label_paths):
                remote = posixpath.join(self.root, rel)
                if remote in folders:
                    self._dirs.add(rel)
                elif remote not in files:
                    raise Invalid(f"File {rel} listed in the manifest was not found.")


def _read_manifest(fs: fsspec.AbstractFileSystem, location: StoreLocation) -> bytes:
    """The manifest's bytes; `Invalid` for a missing bucket/container or manifest, or an oversized one."""
    try:
        with storage_errors(location):
            info = fs.info(location.manifest_path)
            if info.get("type") == "file":
                if (info.get("size") or 0) > MAX_MANIFEST_BYTES:
                    raise Invalid(f"The manifest at {location.url} is larger than {MAX_MANIFEST_BYTES} bytes.")
                return bytes(fs.cat_file(location.manifest_path))
    except (FileNotFoundError, IsADirectoryError):
        pass
    if location.protocol != "file":
        bucket = location.root.split("/", 1)[0]
        try:
            with storage_errors(location):
                fs.info(bucket)
        except FileNotFoundError:
            kind = "container" if location.protocol == "abfs" else "bucket"
            raise Invalid(f"The {kind} {bucket} named in {location.url} does not exist.") from None
    if not location.url.lower().endswith(".json"):
        raise Invalid(f"No manifest.json found at {location.url}.")
    raise Invalid(f"No manifest found at {location.url}.")


def check_access(location: StoreLocation) -> None:
    """Connect and look at the location's bucket/container; `Invalid` with a sentence when that fails."""
    fs = location.filesystem()
    bucket = location.root if location.protocol == "file" else location.root.split("/", 1)[0]
    try:
        with storage_errors(location):
            fs.ls(bucket, detail=False)
    except FileNotFoundError:
        kind = {"abfs": "container", "file": "folder"}.get(location.protocol, "bucket")
        raise Invalid(f"The {kind} {bucket} named in {location.url} does not exist.") from None
