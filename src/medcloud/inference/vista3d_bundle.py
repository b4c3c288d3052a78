"""Resolve `MEDCLOUD_VISTA3D_BUNDLE` (URL, zip/tar, or folder in the official layout) to a local bundle, once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from medcloud.bundles.fetch import BundleError, fetch_bundle
from medcloud.config import Settings
from medcloud.errors import Invalid

SETTING = "MEDCLOUD_VISTA3D_BUNDLE"
REQUIRED = ("configs/inference.json", "configs/metadata.json", "models/model.pt")


def ensure_vista3d_bundle(settings: Settings) -> Path:
    """The local copy of the configured VISTA-3D bundle, fetched/unpacked into `data_dir/vista3d` on first use.

    The cache is keyed by the setting's value (and, for a local file or folder, its size and modification
    time, so replaced weights are picked up). Any failure is an Invalid naming the setting and the reason.

    Example:
        >>> ensure_vista3d_bundle(Settings(vista3d_bundle="/models/vista3d.zip"))  # doctest: +SKIP
        PosixPath('data/vista3d/3f2a…')
    """
    value = (settings.vista3d_bundle or "").strip()
    if not value:
        raise Invalid(f"{SETTING} is not set: set it to the URL or path of a VISTA-3D bundle in the official layout.")
    root = settings.data_dir.expanduser().resolve() / "vista3d"
    dest = root / _cache_key(value)
    if _missing(dest):
        root.mkdir(parents=True, exist_ok=True)
        _fetch_into(value, dest, settings)
    return dest


def _cache_key(value: str) -> str:
    parsed = urlparse(value)
    fingerprint = ""
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else value).expanduser()
        weights = path / "models" / "model.pt" if path.is_dir() else path
        if weights.exists():
            stat = weights.stat()
            fingerprint = f"|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256((value + fingerprint).encode()).hexdigest()[:20]


def _missing(folder: Path) -> list[str]:
    return [name for name in REQUIRED if not (folder / name).is_file()]


def _fetch_into(value: str, dest: Path, settings: Settings) -> None:
    """Fetch into a private folder, check it, then rename it into place (atomic; a racing copy is dropped)."""
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        try:
            bundle = fetch_bundle(value, staging / "bundle", settings, trusted=True)  # the operator's setting
        except BundleError as exc:
            raise Invalid(f"{SETTING} ({value}) could not be used: {exc.detail}.") from None
        except Invalid as exc:
            raise Invalid(f"{SETTING} ({value}) could not be used: {exc.message}") from None
        _check_layout(bundle, value)
        try:
            os.rename(bundle, dest)
        except OSError:
            if _missing(dest):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_layout(bundle: Path, value: str) -> None:
    missing = _missing(bundle)
    if missing:
        raise Invalid(
            f"{SETTING} ({value}) could not be used: it is not a VISTA-3D bundle in the official layout "
            f"(missing {', '.join(missing)})."
        )
    try:
        config = json.loads((bundle / "configs" / "inference.json").read_text())
    except (OSError, ValueError) as exc:
        raise Invalid(f"{SETTING} ({value}) could not be used: configs/inference.json is not JSON ({exc}).") from None
    if "network_def" not in config:
        raise Invalid(f"{SETTING} ({value}) could not be used: configs/inference.json has no network_def.")
