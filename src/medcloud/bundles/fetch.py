"""Fetch a bundle (`http(s)://`, `file://`, a path, a zip/tar/tar.gz or a folder) into a folder.

A bundle is code. A client's URL is fetched only from hosts the operator allows
(`MEDCLOUD_BUNDLE_ALLOWED_HOSTS`) under the egress policy (`medcloud/egress.py`), on every redirect
hop; a local path only when `MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS`. A client may pin the archive by
sha256 (`bundle_sha256`). What the operator configured (`MEDCLOUD_VISTA3D_BUNDLE`,
`MEDCLOUD_BUNDLE_MIRROR`) is trusted. Downloads are cached by URL: one download per URL at a time,
least recently used archives evicted past `MEDCLOUD_BUNDLE_CACHE_MAX_BYTES`. Archives are unpacked by
`medcloud/archives.py`; a folder is copied only once it is known to be a bundle, without following
links out of it, and both stop at the size and file caps.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from medcloud import egress
from medcloud.archives import ArchiveError, safe_extract
from medcloud.config import Settings
from medcloud.errors import Invalid

BAD_BUNDLE = "Failed to download base experiment, or the provided bundle does not follow MONAI bundle format."
HOSTS_HINT = "; an operator can allow it with MEDCLOUD_BUNDLE_ALLOWED_HOSTS (a bundle is code)"
_STALE_PART_S = 3600  # a .part this old was left by a crashed process (live ones are written continuously)
_MAX_DEPTH = 64
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class BundleError(Invalid):
    """The bundle could not be fetched or is not a MONAI bundle; `detail` says why (for logs)."""

    def __init__(self, detail: str) -> None:
        super().__init__(BAD_BUNDLE)
        self.detail = detail


def fetch_bundle(url: str, dest: Path, settings: Settings, *, sha256: str | None = None, trusted: bool = False) -> Path:
    """Put the bundle named by `url` at `dest` (a new folder whose parent exists) and return it.

    `trusted` is for the operator's own settings: no host, address or local-path policy applies.
    """
    text = (url or "").strip()
    scheme = egress.scheme_of(text, what="bundle_url")
    if scheme in egress.REMOTE_SCHEMES:
        with _cached_download(text, settings, trusted=trusted, sha256=sha256) as archive:
            _unpack(archive, dest, settings)
        return dest
    if scheme not in ("", "file"):
        raise BundleError(f"unsupported bundle_url scheme {scheme!r}")
    if not trusted and not settings.bundle_allow_local_paths:
        raise Invalid("Local bundle paths are not allowed on this server (MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS).")
    path = _local_path(text, scheme)
    try:
        kind = path.lstat().st_mode if path.is_absolute() or trusted else None
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist") from None
    except OSError as exc:  # a name too long, a folder we may not enter: the client's mistake, not a 500
        raise BundleError(f"{path}: {exc.strerror}") from None
    if kind is None:
        raise BundleError(f"{text} is not an absolute path")
    if path.is_dir():
        if sha256:
            raise Invalid("bundle_sha256 pins an archive (zip, tar, tar.gz); the bundle_url names a folder.")
        _copy_folder(path, dest, settings, follow_links=trusted)
    elif path.is_file():
        _check_sha256(path, sha256)
        _unpack(path, dest, settings)
    elif path.exists():
        raise BundleError(f"{path} is neither a regular file nor a folder")
    else:
        raise BundleError(f"{path} does not exist")
    return dest


def bundle_root_in(folder: Path) -> Path:
    """The folder holding `configs/metadata.json`: `folder` itself or one of its top-level folders."""
    if (folder / "configs" / "metadata.json").is_file():
        return folder
    try:
        children = sorted(c for c in folder.iterdir() if not c.name.startswith(("__MACOSX", ".")))
    except OSError as exc:
        raise BundleError(f"{folder} cannot be listed: {exc.strerror}") from None
    for child in children:
        try:
            if child.is_dir() and (child / "configs" / "metadata.json").is_file():
                return child
        except OSError:
            continue
    raise BundleError("no configs/metadata.json in the bundle")


def _local_path(text: str, scheme: str) -> Path:
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise BundleError(f"the file:// URL {text} names a remote host")
        return Path(unquote(parts.path))
    return Path(text).expanduser()


def _policy(settings: Settings, *, trusted: bool) -> egress.Policy:
    if trusted:
        return egress.Policy(
            allow_private=True, max_bytes=settings.bundle_max_bytes, deadline_s=settings.egress_deadline_s
        )
    return egress.Policy.from_settings(
        settings, hosts=settings.bundle_allowed_hosts, hosts_hint=HOSTS_HINT, max_bytes=settings.bundle_max_bytes
    )


def _download(url: str, dest: Path, policy: egress.Policy) -> None:
    try:
        egress.download(url, dest, policy, what="bundle_url")
    except egress.DownloadFailed as exc:
        raise BundleError(exc.message) from None


def _from_mirror(url: str, settings: Settings, dest: Path) -> bool:
    """Copy the URL's file from the operator's mirror if it is there."""
    if not settings.bundle_mirror:
        return False
    name = Path(unquote(urlsplit(url).path)).name
    mirror = settings.bundle_mirror.rstrip("/")
    if not name:
        return False
    if "://" in mirror and not mirror.startswith("file://"):
        try:
            _download(f"{mirror}/{name}", dest, _policy(settings, trusted=True))
            return True
        except Invalid:
            return False
    candidate = Path(mirror.removeprefix("file://")) / name
    if candidate.is_file():
        shutil.copyfile(candidate, dest)
        return True
    return False


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


@contextmanager
def _cached_download(url: str, settings: Settings, *, trusted: bool, sha256: str | None) -> Iterator[Path]:
    """The URL's archive in the download cache, fetched once; the URL's lock is held until the block ends.

    A second caller of the same URL waits for the first (single flight) and then finds the file; each
    download writes its own temporary file, renamed into place only when complete (and matching `sha256`).
    """
    downloads = settings.data_dir / "bundles" / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(unquote(urlsplit(url).path)).name or "bundle")[-100:]
    target = downloads / f"{key}-{name}"
    with _lock(str(target)):
        _remove_stale_parts(downloads)
        if target.is_file():
            os.utime(target)  # the mtime is the last use, for eviction
            _check_sha256(target, sha256, cached=True)
        else:
            fd, tmp = tempfile.mkstemp(dir=downloads, prefix=f".{key}-", suffix=".part")
            os.close(fd)
            part = Path(tmp)
            try:
                if not _from_mirror(url, settings, part):
                    _download(url, part, _policy(settings, trusted=trusted))
                _check_sha256(part, sha256)  # a download that does not match never enters the cache
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
            _evict(downloads, settings.bundle_cache_max_bytes, keep=target)
        yield target


def _remove_stale_parts(downloads: Path) -> None:
    now = time.time()
    for part in downloads.glob("*.part"):
        try:
            if now - part.stat().st_mtime > _STALE_PART_S:
                part.unlink()
        except OSError:
            continue


def _evict(downloads: Path, max_bytes: int, *, keep: Path) -> None:
    """Remove least recently used archives until the cache fits `max_bytes` (never `keep`, nor one in use)."""
    files = []
    for path in downloads.iterdir():
        if path.name.startswith(".") or path == keep:
            continue
        try:
            info = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            files.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in files) + (keep.stat().st_size if keep.exists() else 0)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        lock = _lock(str(path))
        if not lock.acquire(blocking=False):
            continue  # being unpacked right now
        try:
            path.unlink(missing_ok=True)
            total -= size
        finally:
            lock.release()


def _check_sha256(path: Path, expected: str | None, *, cached: bool = False) -> None:
    """`Invalid` when a pinned archive does not match; a cached copy that does not match is dropped."""
    if not expected:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        if cached:
            path.unlink(missing_ok=True)
        raise Invalid(f"The bundle's SHA-256 is {digest.hexdigest()}, not the bundle_sha256 given; nothing was kept.")


def _unpack(archive: Path, dest: Path, settings: Settings) -> None:
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        unpacked = Path(tmp) / "unpacked"
        try:
            safe_extract(
                archive,
                unpacked,
                max_bytes=settings.archive_max_unpacked_bytes,
                max_members=min(settings.archive_max_members, settings.bundle_max_files),
            )
        except ArchiveError as exc:
            raise BundleError(str(exc)) from None
        shutil.move(str(bundle_root_in(unpacked)), dest)


def _copy_folder(source: Path, dest: Path, settings: Settings, *, follow_links: bool) -> None:
    """Copy the bundle in `source` (checked first: `file:///` is refused before a byte is read)."""
    root = bundle_root_in(source)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".copy-") as tmp:
        staged = Path(tmp) / "bundle"
        _FolderCopy(root, settings.bundle_max_bytes, settings.bundle_max_files, follow_links).copy_dir(
            root.resolve(), staged, 0
        )
        shutil.move(str(staged), dest)


class _FolderCopy:
    """A capped copy of a bundle folder; links pointing outside it are refused unless `follow_links`."""

    def __init__(self, root: Path, max_bytes: int, max_files: int, follow_links: bool) -> None:
        self.root, self.max_bytes, self.max_files, self.follow_links = (
            root.resolve(),
            max_bytes,
            max_files,
            follow_links,
        )
        self.bytes = self.files = 0

    def copy_dir(self, src: Path, dest: Path, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise BundleError(f"the bundle folder is nested more than {_MAX_DEPTH} levels deep")
        dest.mkdir()
        with os.scandir(src) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                self._copy_entry(Path(entry.path), dest / entry.name, depth)

    def _copy_entry(self, src: Path, dest: Path, depth: int) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise BundleError(f"the bundle folder holds more than {self.max_files} files")
        if src.is_symlink():
            real = src.resolve()
            if not self.follow_links and not real.is_relative_to(self.root):
                raise BundleError(f"{src.relative_to(self.root)} is a link to outside the bundle folder")
            src = real  # inside the bundle: copy what it points to
        try:
            mode = src.stat().st_mode
        except OSError as exc:
            raise BundleError(f"{src.name} cannot be read: {exc.strerror}") from None
        if stat.S_ISDIR(mode):
            self.copy_dir(src, dest, depth + 1)
        elif stat.S_ISREG(mode):
            with open(src, "rb") as handle, open(dest, "wb") as out:
                while chunk := handle.read(1 << 20):
                    self.bytes += len(chunk)
                    if self.bytes > self.max_bytes:
                        raise BundleError(f"the bundle folder is larger than {self.max_bytes} bytes")
                    out.write(chunk)
        else:
            raise BundleError(f"{src.name} is neither a regular file nor a folder")
