"""Named connection profiles (host, org, API key) in `profiles.json`, and where a client's settings come from.

The file lives in `$MEDCLOUD_CONFIG_DIR`, else `$XDG_CONFIG_HOME/medcloud`, else `~/.config/medcloud`;
it is written atomically with mode 0600 (the folder 0700), because it holds API keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from medcloud.client.errors import ClientError

DEFAULT_HOST = "http://127.0.0.1:8000"  # `medcloud serve`'s default address
DEFAULT_ORG = "iasixjqzw1hj"  # the hosted service's default org (and medcloud's demo org)
DEFAULT_PROFILE = "default"
FILE_NAME = "profiles.json"


@dataclass(frozen=True)
class Profile:
    """One named set of connection settings; `api_key` is never shown by `repr`."""

    host: str | None = None
    org: str | None = None
    api_key: str | None = None

    def __repr__(self) -> str:
        return f"Profile(host={self.host!r}, org={self.org!r}, api_key={'***' if self.api_key else None})"


def config_dir() -> Path:
    """The folder of `profiles.json`."""
    if os.environ.get("MEDCLOUD_CONFIG_DIR"):
        return Path(os.environ["MEDCLOUD_CONFIG_DIR"])
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "medcloud"
    return Path.home() / ".config" / "medcloud"


def profiles_path() -> Path:
    """The full path of the profiles file."""
    return config_dir() / FILE_NAME


def _read() -> dict:
    path = profiles_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"profiles": {}}
    except (OSError, ValueError) as err:
        raise ClientError(f"Cannot read the profiles file {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ClientError(f"The profiles file {path} is not a medcloud profiles file.")
    return data


def load_profile(name: str | None = None) -> Profile | None:
    """The profile `name` (else `$MEDCLOUD_PROFILE`, else the file's default); None when there is none."""
    data = _read()
    name = name or os.environ.get("MEDCLOUD_PROFILE") or data.get("default") or DEFAULT_PROFILE
    entry = data["profiles"].get(name)
    if entry is None:
        return None
    return Profile(host=entry.get("host"), org=entry.get("org"), api_key=entry.get("api_key"))


def save_profile(profile: Profile, name: str = DEFAULT_PROFILE, *, make_default: bool = True) -> Path:
    """Store `profile` under `name` (other profiles kept) and return the file's path (mode 0600)."""
    data = _read()
    data["profiles"][name] = {k: v for k, v in asdict(profile).items() if v is not None}
    if make_default or "default" not in data:
        data["default"] = name
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".profiles-", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, folder / FILE_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return folder / FILE_NAME


@dataclass(frozen=True)
class Settings:
    """What a `Client` connects with, resolved from its arguments, a profile and the environment."""

    host: str
    org: str
    api_key: str

    def __repr__(self) -> str:
        return f"Settings(host={self.host!r}, org={self.org!r}, api_key='***')"


def resolve(host: str | None, api_key: str | None, org: str | None, profile: str | None) -> Settings:
    """Arguments first; then a profile named explicitly (argument or `$MEDCLOUD_PROFILE`); then the
    environment (`MEDCLOUD_HOST`, `MEDCLOUD_ORG`, `MEDCLOUD_API_KEY`, `MONAI_API_KEY`); then the
    default profile; then `http://127.0.0.1:8000` and the org `iasixjqzw1hj`."""
    named = profile or os.environ.get("MEDCLOUD_PROFILE")
    chosen = load_profile(named)
    if named and chosen is None:
        raise ClientError(f"No profile named {named!r} in {profiles_path()}; run `medcloud login --profile {named}`.")
    env = Profile(
        host=os.environ.get("MEDCLOUD_HOST"),
        org=os.environ.get("MEDCLOUD_ORG"),
        api_key=os.environ.get("MEDCLOUD_API_KEY") or os.environ.get("MONAI_API_KEY"),
    )
    empty = Profile()
    layers = [Profile(host=host, org=org, api_key=api_key)]
    layers += [chosen or empty, env] if named else [env, chosen or empty]
    pick = {f: next((getattr(p, f) for p in layers if getattr(p, f)), None) for f in ("host", "org", "api_key")}
    if not pick["api_key"]:
        raise ClientError("No API key: pass api_key, set MEDCLOUD_API_KEY (or MONAI_API_KEY), or run `medcloud login`.")
    return Settings(
        host=(pick["host"] or DEFAULT_HOST).rstrip("/"), org=pick["org"] or DEFAULT_ORG, api_key=pick["api_key"]
    )
