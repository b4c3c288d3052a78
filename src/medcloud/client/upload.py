"""Copy a dataset folder with its manifest to S3, Azure Blob or GCS, resumably (`medcloud datasets upload`).

Resume and atomicity:
    * Before copying, the destination is listed once. A local file is skipped when the object under its
      name has the same size and the same MD5 (S3's ETag of a single-part upload, Azure's Content-MD5,
      GCS's md5Hash); when the store reports no MD5 (an S3 multipart upload) it is skipped when the state
      file says this run's file was uploaded there (same local size and mtime, same remote ETag).
    * The state file lives in the user's cache (`$XDG_CACHE_HOME/medcloud/uploads/`), one per folder and
      destination, rewritten atomically after each file; it also keeps each file's MD5 so a resume does
      not read unchanged files twice.
    * Each file is sent with one fsspec `put_file`, which these stores commit atomically: a single PUT, or
      a multipart/block upload that becomes visible only when it is completed (S3 CompleteMultipartUpload,
      Azure Put Block List, GCS's last chunk). An interrupted upload leaves nothing under the real name,
      so no temporary name and rename (a copy and a delete on object stores) is needed.
    * `manifest.json` goes last, after every other file is there: a dataset never sees a manifest naming
      files that are not uploaded yet.

Credentials come from `Credentials` (options) or the usual environment variables (see `Credentials.resolve`);
they are never printed, and every storage error is reworded without them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcloud.client.upload_progress import LineProgress, Progress, TerminalProgress, bytes_callback
from medcloud.errors import Invalid, Unavailable
from medcloud.sources.locations import StoreLocation, parse_client_url
from medcloud.sources.manifest import parse_manifest
from medcloud.sources.objectstore import storage_errors

__all__ = [
    "Credentials",
    "LineProgress",
    "StorageError",
    "TerminalProgress",
    "UploadInputError",
    "UploadReport",
    "upload_folder",
]

MANIFEST_NAME = "manifest.json"
_CHUNK = 1024 * 1024


class UploadInputError(ValueError):
    """The local side is wrong: no manifest, a listed file missing, an unreadable file, a malformed URL."""


class StorageError(RuntimeError):
    """The store could not be reached or refused the request; the message names the URL, never a secret."""


@dataclass(frozen=True)
class Credentials:
    """What the user gave on the command line; `resolve` fills the rest from the environment.

    `key_id` is an S3 access key id or an Azure account name; `secret` an S3 secret key or an Azure
    account key or SAS token; `key_file` a GCS service-account JSON key file.
    """

    key_id: str | None = None
    secret: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    endpoint_url: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        key_id: str | None = None,
        secret: str | None = None,
        key_file: Path | None = None,
        endpoint_url: str | None = None,
    ) -> Credentials:
        """Credentials from the command line's options (None = not given)."""
        return cls(key_id=key_id or None, secret=secret or None, key_file=key_file, endpoint_url=endpoint_url or None)

    def resolve(self, scheme: str, env: dict[str, str] | None = None) -> tuple[str | None, str | None, str | None]:
        """(client_id, client_secret, endpoint_url) for a URL of `scheme`, options first, then variables:

        s3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL.
        az: AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or
            AZURE_STORAGE_SAS_TOKEN, and AZURE_STORAGE_BLOB_ENDPOINT.
        gs: GOOGLE_APPLICATION_CREDENTIALS (the key file's path).
        """
        env = dict(os.environ) if env is None else env
        key_id, secret, endpoint = self.key_id, self.secret, self.endpoint_url
        if scheme in ("s3", "s3a", "http", "https"):
            key_id = key_id or env.get("AWS_ACCESS_KEY_ID")
            secret = secret or env.get("AWS_SECRET_ACCESS_KEY")
            endpoint = endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        elif scheme in ("az", "abfs", "abfss"):
            conn = dict(re.findall(r"([A-Za-z]+)=([^;]+)", env.get("AZURE_STORAGE_CONNECTION_STRING", "")))
            key_id = key_id or env.get("AZURE_STORAGE_ACCOUNT") or conn.get("AccountName")
            secret = (
                secret
                or env.get("AZURE_STORAGE_KEY")
                or env.get("AZURE_STORAGE_SAS_TOKEN")
                or conn.get("AccountKey")
                or conn.get("SharedAccessSignature")
            )
            endpoint = endpoint or env.get("AZURE_STORAGE_BLOB_ENDPOINT") or conn.get("BlobEndpoint")
        elif scheme in ("gs", "gcs"):
            key_file = self.key_file or (
                Path(env["GOOGLE_APPLICATION_CREDENTIALS"]) if env.get("GOOGLE_APPLICATION_CREDENTIALS") else None
            )
            if key_file is not None:
                try:
                    secret = key_file.read_text(encoding="utf-8")
                except OSError as exc:
                    raise UploadInputError(f"Cannot read the key file {key_file}: {exc.strerror or exc}.") from None
        return key_id, secret, endpoint


@dataclass
class UploadReport:
    """What one run did: files uploaded and skipped (relative paths), bytes sent."""

    url: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (`medcloud datasets upload --json`)."""
        return {
            "url": self.url,
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "uploaded_bytes": self.uploaded_bytes,
        }


@dataclass(frozen=True)
class _Local:
    rel: str
    path: Path
    size: int
    mtime_ns: int


def upload_folder(
    folder: str | Path,
    url: str,
    *,
    credentials: Credentials | None = None,
    progress: Progress | None = None,
) -> UploadReport:
    """Copy `folder` (every file but hidden ones; `manifest.json` last) to `url`, skipping what is already there.

    Args:
        folder: a dataset folder with `manifest.json` (see `medcloud.client.manifest.build_manifest`).
        url: `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`, or a store's http(s) URL.
        credentials: options; missing ones come from the environment (`Credentials.resolve`).
        progress: receives per-file and per-byte progress (`LineProgress`, `TerminalProgress`), or None.

    Returns:
        An `UploadReport`; its `url` (without the manifest name) is the dataset's `client_url`.

    Raises:
        UploadInputError: no manifest, a file it lists missing, an unreadable file, a malformed URL.
        StorageError: the store is unreachable or refused (wrong key, no permission).

    Example:
        >>> upload_folder("spleen", "s3://datasets/spleen", credentials=Credentials(endpoint_url="http://minio:9000"))
        UploadReport(url='s3://datasets/spleen', uploaded=[...], skipped=[], uploaded_bytes=...)
    """
    root = Path(folder)
    location = _location(url, credentials or Credentials())
    files = _local_files(root)
    report = UploadReport(url=location.url)
    state = _State.load(root, location)
    fs = _filesystem(location)
    remote = _remote_listing(fs, location)
    total = sum(f.size for f in files)
    if progress is not None:
        progress.start(len(files), total)
    for local in files:
        target = f"{location.root}/{local.rel}"
        if _already_there(local, remote.get(target), state):
            report.skipped.append(local.rel)
            if progress is not None:
                progress.file_done(local.rel, local.size, skipped=True)
            continue
        md5 = _local_md5(local, state)  # reads it: an unreadable file is named before anything is sent
        if progress is not None:
            progress.file_started(local.rel, local.size)
        with _storage(location):
            fs.put_file(str(local.path), target, callback=bytes_callback(progress))
            info = fs.info(target)
        state.record(local, _etag(info), md5)
        report.uploaded.append(local.rel)
        report.uploaded_bytes += local.size
        if progress is not None:
            progress.file_done(local.rel, local.size, skipped=False)
    if progress is not None:
        progress.finish()
    return report


def _local_files(root: Path) -> list[_Local]:
    """Every non-hidden file below `root`, sorted, `manifest.json` last; checks the manifest first."""
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise UploadInputError(f"{root} is not a folder.")
    if not manifest_path.is_file():
        raise UploadInputError(f"No {MANIFEST_NAME} in {root}: run `medcloud datasets build-manifest {root}` first.")
    try:
        manifest = parse_manifest(manifest_path.read_bytes(), source=str(manifest_path))
    except Invalid as exc:
        raise UploadInputError(exc.message) from None
    except OSError as exc:
        raise UploadInputError(f"Cannot read {manifest_path}: {exc.strerror or exc}.") from None
    files: list[_Local] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            try:
                stat = path.stat()
            except OSError as exc:
                raise UploadInputError(f"Cannot read {rel}: {exc.strerror or exc}.") from None
            files.append(_Local(rel, path, stat.st_size, stat.st_mtime_ns))
    names = {f.rel for f in files}
    folders = {rel.rsplit("/", k)[0] for rel in names for k in range(1, rel.count("/") + 1)}
    for image in manifest.images:
        for rel in (*image.paths, *image.label_paths):
            if rel not in names and rel not in folders:
                raise UploadInputError(f"{rel}, listed in {MANIFEST_NAME}, is not in {root}.")
    return sorted(files, key=lambda f: (f.rel == MANIFEST_NAME, f.rel))


def _location(url: str, credentials: Credentials) -> StoreLocation:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("s3", "s3a", "az", "abfs", "abfss", "gs", "gcs", "http", "https"):
        raise UploadInputError(f"Upload to s3://, az:// or gs:// (or a store's http(s) URL), not {url!r}.")
    key_id, secret, endpoint = credentials.resolve(scheme)
    try:
        location = parse_client_url(url, key_id, secret, endpoint_url=endpoint)
    except Invalid as exc:
        raise UploadInputError(exc.message) from None
    if location.manifest_path != f"{location.root}/{MANIFEST_NAME}":
        raise UploadInputError(f"Upload to a folder URL (the manifest becomes <url>/{MANIFEST_NAME}), not {url!r}.")
    return location


@contextlib.contextmanager
def _storage(location: StoreLocation) -> Iterator[None]:
    """Storage-library errors as `StorageError` (wording from `sources.objectstore`, secrets scrubbed)."""
    try:
        with storage_errors(location, fault=Unavailable):
            yield
    except (Invalid, Unavailable) as exc:
        raise StorageError(exc.message) from None
    except FileNotFoundError as exc:
        raise StorageError(f"{location.url}: {exc}.") from None


def _filesystem(location: StoreLocation) -> Any:
    """The store's filesystem, its bucket/container created when missing (refused → `StorageError`)."""
    with _storage(location):
        fs = location.filesystem()
    bucket = location.root.split("/", 1)[0]
    try:
        with storage_errors(location, fault=Unavailable):
            fs.ls(bucket, detail=False)
    except FileNotFoundError:
        with _storage(location):
            fs.mkdir(bucket)
    except (Invalid, Unavailable) as exc:
        raise StorageError(exc.message) from None
    return fs


def _remote_listing(fs: Any, location: StoreLocation) -> dict[str, dict[str, Any]]:
    """Every object below the destination, by fsspec path, with its details (size, ETag, MD5)."""
    with _storage(location):
        fs.invalidate_cache()
        try:
            found = fs.find(location.root, detail=True)
        except FileNotFoundError:
            found = {}
    return {fs._strip_protocol(path): info for path, info in found.items() if info.get("type") != "directory"}


def _etag(info: dict[str, Any]) -> str:
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


def _remote_md5(info: dict[str, Any]) -> str | None:
    """The object's MD5 as hex when the store reports one (never an S3 multipart ETag)."""
    etag = str(info.get("ETag") or "").strip('"')
    if re.fullmatch(r"[0-9a-f]{32}", etag):
        return etag  # S3 single-part: the ETag is the MD5
    settings = info.get("content_settings")
    md5 = settings.get("content_md5") if isinstance(settings, dict) else getattr(settings, "content_md5", None)
    if md5:
        return bytes(md5).hex()  # Azure's Content-MD5
    if isinstance(info.get("md5Hash"), str):
        with contextlib.suppress(binascii.Error, ValueError):
            return base64.b64decode(info["md5Hash"]).hex()  # GCS
    return None


def _already_there(local: _Local, info: dict[str, Any] | None, state: _State) -> bool:
    """Whether the object under `local`'s name is this file (see the module's resume rules)."""
    if info is None or int(info.get("size") or -1) != local.size:
        return False
    remote_md5 = _remote_md5(info)
    if remote_md5 is not None:
        return remote_md5 == _local_md5(local, state)
    record = state.files.get(local.rel)
    return bool(
        record
        and record.get("size") == local.size
        and record.get("mtime_ns") == local.mtime_ns
        and record.get("etag")
        and record.get("etag") == _etag(info)
    )


def _local_md5(local: _Local, state: _State) -> str:
    """The file's MD5, from the state file when size and mtime are unchanged, else read."""
    record = state.files.get(local.rel)
    if record and record.get("size") == local.size and record.get("mtime_ns") == local.mtime_ns and record.get("md5"):
        return str(record["md5"])
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with local.path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise UploadInputError(f"Cannot read {local.rel}: {exc.strerror or exc}.") from None
    state.files[local.rel] = {"size": local.size, "mtime_ns": local.mtime_ns, "md5": digest.hexdigest()}
    return digest.hexdigest()


@dataclass
class _State:
    """The sidecar state of one (folder, destination) pair: per file size, mtime, MD5 and remote ETag."""

    path: Path
    files: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, root: Path, location: StoreLocation) -> _State:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medcloud" / "uploads"
        key = hashlib.sha256(f"{root.resolve()}\n{location.url}\n{location.store}".encode()).hexdigest()[:32]
        path = cache / f"{key}.json"
        try:
            files = json.loads(path.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            files = {}
        return cls(path=path, files=files if isinstance(files, dict) else {})

    def record(self, local: _Local, etag: str, md5: str) -> None:
        """Remember that `local` is uploaded as the object with `etag`; written at once (atomically)."""
        self.files[local.rel] = {"size": local.size, "mtime_ns": local.mtime_ns, "md5": md5, "etag": etag}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"files": self.files}), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache only costs a re-upload of multipart objects on resume
