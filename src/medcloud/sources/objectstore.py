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

import os
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec

from medcloud.errors import Invalid, MedcloudError, Unavailable
from medcloud.sources.local_roots import is_inside
from medcloud.sources.locations import (  # noqa: F401  (re-exported: callers import them from here)
    CONNECT_TIMEOUT_S,
    MAX_MANIFEST_BYTES,
    READ_TIMEOUT_S,
    StoreLocation,
    parse_client_url,
    resolve_root,
)
from medcloud.sources.manifest import Manifest, ManifestImage, check_relative_path, parse_manifest
from medcloud.sources.manifest_cache import MANIFESTS, stamp_of


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
    if "HttpError" in names and isinstance(getattr(exc, "code", None), int):
        status = exc.code  # type: ignore[attr-defined]  # gcsfs: a refused key or token is HttpError(401)
    response = getattr(exc, "response", None) if "ClientError" in names else None  # botocore's dict
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    if names & {"ResourceNotFoundError", "NoSuchKey", "NoSuchBucket"} or status == 404:
        return "missing"
    if (
        isinstance(exc, PermissionError)
        or names & {"ClientAuthenticationError", "RefreshError"}
        or (type(exc) is OSError and str(exc).startswith("Forbidden:"))  # gcsfs's 403
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
        cache_key: str | None = None,
    ) -> ObjectStoreSource:
        """Connect, read and validate the manifest and (unless told not to) check every listed file exists.

        With `cache_key` (a dataset id) the parsed manifest is reused while the file's stamp is unchanged:
        one metadata request instead of reading and parsing it again.
        """
        location = parse_client_url(client_url, client_id, client_secret, endpoint_url=endpoint_url)
        fs = location.filesystem()
        manifest_url = (
            location.url if location.url.lower().endswith(".json") else (f"{location.url.rstrip('/')}/manifest.json")
        )
        manifest = _cached_manifest(fs, location, manifest_url, cache_key)
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

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The dataset's filesystem (writers of labels use it: `datasets/labels.py`)."""
        return self._fs

    def read_manifest_bytes(self) -> bytes:
        """The manifest's bytes as they are in the store now (no cached listing or parse)."""
        self._fs.invalidate_cache(self.location.manifest_path)
        return _read_manifest(self._fs, self.location)

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
        if self.location.protocol == "file":
            self._check_inside(pairs)
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

    def _check_inside(self, pairs: Sequence[tuple[str, str]]) -> None:
        """A local dataset reads only its own folder: `Invalid` for a listed file that is a link out of it."""
        for remote, rel in pairs:
            if not is_inside(remote, self.location.root):
                raise Invalid(
                    f"File {rel} listed in the manifest leads out of the dataset's folder (a link); "
                    "a local dataset's files must be inside its own folder."
                )

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


def _cached_manifest(
    fs: fsspec.AbstractFileSystem, location: StoreLocation, manifest_url: str, cache_key: str | None
) -> Manifest:
    """The parsed manifest, from `MANIFESTS` when its stamp is the one cached under `cache_key`."""
    if cache_key is None:
        return parse_manifest(_read_manifest(fs, location), source=manifest_url)
    try:  # taken before the read: a change in between only costs one more read later
        stamp = stamp_of(fs.info(location.manifest_path))
    except Exception:  # noqa: BLE001 - the read below reports what is wrong, in words
        stamp = None
    where = (location.url, location.manifest_path)
    if stamp is not None and (hit := MANIFESTS.get(cache_key, where, stamp)) is not None:
        return hit
    manifest = parse_manifest(_read_manifest(fs, location), source=manifest_url)
    if stamp is not None:
        MANIFESTS.put(cache_key, where, stamp, manifest)
    return manifest


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
