"""Fetch a bundle (`http(s)://`, `file://`, a path, a zip/tar/tar.gz or a folder) into a folder.

A bundle is code, so URLs are fetched only from hosts the operator allows
(`MEDCLOUD_BUNDLE_ALLOWED_HOSTS`), and local paths only when `MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS`.
Offline sites set `MEDCLOUD_BUNDLE_MIRROR`: a folder (or URL prefix) where a URL's file name is
looked up first. Downloads are cached by URL; archives are unpacked without letting members escape.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from medcloud.archives import ArchiveError, safe_extract
from medcloud.config import Settings
from medcloud.errors import Invalid

BAD_BUNDLE = "Failed to download base experiment, or the provided bundle does not follow MONAI bundle format."


class BundleError(Invalid):
    """The bundle could not be fetched or is not a MONAI bundle; `detail` says why (for logs)."""

    def __init__(self, detail: str) -> None:
        super().__init__(BAD_BUNDLE)
        self.detail = detail


def _host_allowed(host: str, allowed: list[str]) -> bool:
    return "*" in allowed or any(host == a or host.endswith("." + a) for a in allowed)


def _download(url: str, dest: Path, max_bytes: int) -> None:
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=httpx.Timeout(30, connect=10)) as resp:
            if resp.status_code != 200:
                raise BundleError(f"GET {url} answered {resp.status_code}")
            size = 0
            with open(dest, "wb") as out:
                for chunk in resp.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise BundleError(f"{url} is larger than {max_bytes} bytes")
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise BundleError(f"could not download {url}: {exc}") from None


def _from_mirror(url: str, settings: Settings, dest: Path) -> bool:
    """Copy the URL's file from the mirror if it is there."""
    if not settings.bundle_mirror:
        return False
    name = Path(unquote(urlparse(url).path)).name
    mirror = settings.bundle_mirror.rstrip("/")
    if "://" in mirror and not mirror.startswith("file://"):
        try:
            _download(f"{mirror}/{name}", dest, settings.bundle_max_bytes)
            return True
        except BundleError:
            return False
    candidate = Path(mirror.removeprefix("file://")) / name
    if candidate.exists():
        shutil.copyfile(candidate, dest)
        return True
    return False


def locate(url: str, settings: Settings) -> Path:
    """A local file or folder holding the bundle named by `url` (downloaded and cached if remote)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        host = parsed.hostname or ""
        if not _host_allowed(host, settings.bundle_allowed_hosts):
            raise Invalid(
                f"bundle_url host {host!r} is not allowed on this server; an operator can allow it with "
                "MEDCLOUD_BUNDLE_ALLOWED_HOSTS (a bundle is code)."
            )
        downloads = settings.data_dir / "bundles" / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        name = Path(unquote(parsed.path)).name or "bundle"
        target = downloads / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
        if not target.exists():
            partial = target.with_suffix(target.suffix + ".part")
            if not _from_mirror(url, settings, partial):
                _download(url, partial, settings.bundle_max_bytes)
            partial.replace(target)
        return target
    if parsed.scheme not in ("", "file"):
        raise BundleError(f"unsupported bundle_url scheme {parsed.scheme!r}")
    if not settings.bundle_allow_local_paths:
        raise Invalid("Local bundle paths are not allowed on this server (MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS).")
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser()
    if not path.exists():
        raise BundleError(f"{path} does not exist")
    return path


def bundle_root_in(folder: Path) -> Path:
    """The folder holding `configs/metadata.json`: `folder` itself or its single top-level folder."""
    if (folder / "configs" / "metadata.json").is_file():
        return folder
    children = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(("__MACOSX", "."))]
    for child in children:
        if (child / "configs" / "metadata.json").is_file():
            return child
    raise BundleError("no configs/metadata.json in the bundle")


def fetch_bundle(url: str, dest: Path, settings: Settings) -> Path:
    """Put the bundle named by `url` at `dest` (a new folder) and return it."""
    source = locate(url, settings)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        unpacked = Path(tmp) / "unpacked"
        if source.is_dir():
            shutil.copytree(source, unpacked, symlinks=False)
        else:
            try:
                safe_extract(source, unpacked)
            except ArchiveError as exc:
                raise BundleError(str(exc)) from None
        shutil.move(str(bundle_root_in(unpacked)), dest)
    return dest
