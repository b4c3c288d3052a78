"""Resolve a bundle the operator configured (`MEDCLOUD_VISTA3D_BUNDLE`, `MEDCLOUD_DEEPEDIT_BUNDLE`: a URL, a zip/tar
or a folder in the official layout) to a local bundle, fetched once and cached under `data_dir/<folder>`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from medcloud.bundles.fetch import BundleError, fetch_bundle
from medcloud.config import Settings
from medcloud.errors import Invalid, MedcloudError, Unavailable

if TYPE_CHECKING:
    from medcloud.context import Context

REQUIRED = ("configs/inference.json", "configs/metadata.json", "models/model.pt")


@dataclass(frozen=True)
class ConfiguredBundle:
    """One family's operator-configured bundle: which setting names it, where it is cached, what it is."""

    setting: str  # the environment variable, e.g. MEDCLOUD_VISTA3D_BUNDLE
    field: str  # the Settings field, e.g. vista3d_bundle
    folder: str  # cache folder under data_dir
    what: str  # e.g. "a VISTA-3D bundle"
    weights: str  # e.g. "VISTA-3D weights"

    def not_configured(self, ctx: Context) -> MedcloudError:
        """Why a real-time experiment of this family cannot be made yet: the demo still trains, or no setting."""
        if ctx.demo is not None and ctx.demo.preparing:
            return Unavailable(
                f"The demo's {self.weights} are still being prepared (GET /api/v1/health/readiness shows the "
                "progress): try again in a few minutes."
            )
        return Invalid(
            f"{self.weights} are not configured on this server: set {self.setting} to the URL or path of "
            f"{self.what} in the official layout (zip or folder) and restart medcloud."
        )


def ensure_configured_bundle(settings: Settings, bundle: ConfiguredBundle) -> Path:
    """The local copy of the configured bundle, fetched/unpacked into `data_dir/<folder>` on first use.

    The cache is keyed by the setting's value (and, for a local file or folder, its size and modification
    time, so replaced weights are picked up). Any failure is an Invalid naming the setting and the reason.

    Example:
        >>> ensure_configured_bundle(Settings(vista3d_bundle="/models/vista3d.zip"), VISTA3D)  # doctest: +SKIP
        PosixPath('data/vista3d/3f2a…')
    """
    value = (getattr(settings, bundle.field) or "").strip()
    if not value:
        raise Invalid(
            f"{bundle.setting} is not set: set it to the URL or path of {bundle.what} in the official layout."
        )
    root = settings.data_dir.expanduser().resolve() / bundle.folder
    dest = root / _cache_key(value)
    if _missing(dest):
        root.mkdir(parents=True, exist_ok=True)
        _fetch_into(value, dest, settings, bundle)
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


def _fetch_into(value: str, dest: Path, settings: Settings, configured: ConfiguredBundle) -> None:
    """Fetch into a private folder, check it, then rename it into place (atomic; a racing copy is dropped)."""
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        try:
            bundle = fetch_bundle(value, staging / "bundle", settings, trusted=True)  # the operator's setting
        except BundleError as exc:
            raise Invalid(f"{configured.setting} ({value}) could not be used: {exc.detail}.") from None
        except Invalid as exc:
            raise Invalid(f"{configured.setting} ({value}) could not be used: {exc.message}") from None
        _check_layout(bundle, value, configured)
        try:
            os.rename(bundle, dest)
        except OSError:
            if _missing(dest):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_layout(bundle: Path, value: str, configured: ConfiguredBundle) -> None:
    setting = configured.setting
    missing = _missing(bundle)
    if missing:
        raise Invalid(
            f"{setting} ({value}) could not be used: it is not {configured.what} in the official layout "
            f"(missing {', '.join(missing)})."
        )
    try:
        config = json.loads((bundle / "configs" / "inference.json").read_text())
    except (OSError, ValueError) as exc:
        raise Invalid(f"{setting} ({value}) could not be used: configs/inference.json is not JSON ({exc}).") from None
    if "network_def" not in config:
        raise Invalid(f"{setting} ({value}) could not be used: configs/inference.json has no network_def.")


def experiment_copy(shared: Path, exp_dir: Path) -> Path:
    """The experiment's own copy of a configured bundle at `exp_dir/bundle`, the weights hard-linked.

    Continual learning replaces `models/model.pt` of this experiment only: the link is replaced, never
    written through, so the shared file stays as configured.
    """
    own = exp_dir / "bundle"
    shutil.copytree(shared, own, ignore=shutil.ignore_patterns("model.pt"), dirs_exist_ok=True)
    (own / "models").mkdir(exist_ok=True)
    try:
        os.link(shared / "models" / "model.pt", own / "models" / "model.pt")
    except OSError:
        shutil.copyfile(shared / "models" / "model.pt", own / "models" / "model.pt")
    return own
