"""Where model code runs: a scrubbed environment and, on a root server, an unprivileged user per experiment.

A MONAI bundle is code. Model hosts and the model process of a job get:
- an environment built from an allow-list (`PATH`, locale, thread counts...), never the server's
  (`MEDCLOUD_SECRET_KEY`, `MEDCLOUD_DATABASE_URL`, cloud credentials stay out);
- when the server runs as root and `MEDCLOUD_MODEL_SANDBOX` is `auto` or `uid`, their own uid (one per
  experiment, from `MEDCLOUD_SANDBOX_UID_BASE`) in the `MEDCLOUD_SANDBOX_GROUP` group. The data dir is
  then `0710 root:<group>`: members may pass through it to their own folders (`experiments/<id>`,
  `hosts/<id>`, `jobs/<job>`, each `0700` and owned by the experiment's uid) but cannot list it, and
  the master key, the database, the image cache and downloaded bundles are root's alone.

Inputs reach a sandbox as hard links to cached files (made readable) inside its own folder; outputs
come back through that folder. What crosses is files the sandbox owns, never a path into the server's.
"""

from __future__ import annotations

import fcntl
import grp
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcloud.config import Settings

log = logging.getLogger(__name__)

# Variables model code may see; everything else in the server's environment stays out.
ENV_ALLOWED = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
)
SHARED_ROOTS = ("experiments", "hosts", "jobs")
PRIVATE_ROOTS = ("cache", "bundles")
UIDS_FILE = "sandbox-uids.json"
_SHARED: dict[tuple[Path, str], Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def sandbox_for(settings: Settings) -> Sandbox:
    """The one sandbox of a data dir in this process (it probes the machine once)."""
    key = (settings.data_dir, settings.model_sandbox)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Sandbox(settings)
        return _SHARED[key]


@dataclass(frozen=True)
class Identity:
    """The uid/gid model code runs as; `None` means the server's own (no uid sandbox)."""

    uid: int | None = None
    gid: int | None = None


class Sandbox:
    """Decides who model code runs as, prepares its folders, and builds its process arguments.

    Args:
        settings: the resolved server settings (`data_dir` absolute).

    Example:
        >>> box = Sandbox(settings)
        >>> folder = box.prepare(settings.data_dir / "hosts" / exp_id, experiment_id=exp_id)
        >>> subprocess.Popen(cmd, **box.popen_kwargs(experiment_id=exp_id, home=folder))
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.gid = self._group_id() if self._wants_uids() else None
        self.active = False
        if self.gid is not None:
            self._open_data_dir()
            self.active = self._probe()
        if settings.model_sandbox == "uid" and not self.active:
            raise RuntimeError(
                "MEDCLOUD_MODEL_SANDBOX=uid but model code cannot run as an unprivileged user here: the server "
                f"must run as root, the group {settings.sandbox_group!r} must exist (scripts/setup.sh creates "
                "it) and the Python environment and data dir must be reachable by other users."
            )
        if self._wants_uids() and not self.active:
            log.warning(
                "Model code runs as the server's own user: it can read the master key and the database. "
                "Create the group %r (scripts/setup.sh does) and keep the Python environment and the data dir's "
                "parents world-traversable to run each experiment's code as its own user.",
                settings.sandbox_group,
            )
        self._secure_data_dir()

    # -- who model code runs as -------------------------------------------------------------------------

    def _wants_uids(self) -> bool:
        return self.settings.model_sandbox != "off" and os.geteuid() == 0

    def _group_id(self) -> int | None:
        try:
            return grp.getgrnam(self.settings.sandbox_group).gr_gid
        except KeyError:
            return None

    def _probe(self) -> bool:
        """True if an unprivileged uid of our group can start our Python and reach the data dir."""
        try:
            proc = subprocess.run(
                [sys.executable, "-c", f"import os, medcloud; os.stat({str(self.data_dir / 'jobs')!r})"],
                user=self.settings.sandbox_uid_base,
                group=self.gid,
                extra_groups=[],
                env=self.env(home=Path("/")),
                cwd="/",
                capture_output=True,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("Sandbox probe could not run: %s", exc)
            return False
        if proc.returncode != 0:
            log.warning("Sandbox probe failed: %s", proc.stderr.decode(errors="replace")[-500:])
        return proc.returncode == 0

    def identity(self, experiment_id: str) -> Identity:
        """The experiment's own uid (allocated once, never shared), or the server's when inactive."""
        if not self.active:
            return Identity()
        return Identity(uid=self._allocate_uid(experiment_id), gid=self.gid)

    def _allocate_uid(self, experiment_id: str) -> int:
        path = self.data_dir / UIDS_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # several server processes may allocate at once
            text = handle.read()
            table: dict[str, int] = json.loads(text) if text.strip() else {}
            if experiment_id not in table:
                # base itself is the probe's uid; experiments start above it
                table[experiment_id] = max(table.values(), default=self.settings.sandbox_uid_base) + 1
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(table))
                handle.flush()
                os.fsync(handle.fileno())
            return table[experiment_id]

    # -- folders ----------------------------------------------------------------------------------------

    def _open_data_dir(self) -> None:
        """Only the sandbox group may pass through the data dir (not list it), to reach its own folders."""
        os.chown(self.data_dir, 0, self.gid)  # type: ignore[arg-type]
        os.chmod(self.data_dir, 0o710)
        self._chmod_shared_roots()

    def _secure_data_dir(self) -> None:
        """The data dir's private parts are root's alone; without an active sandbox, all of it is."""
        if not self.active:
            os.chmod(self.data_dir, 0o700)
        for name in PRIVATE_ROOTS:
            (self.data_dir / name).mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.data_dir / name, 0o700)

    def _chmod_shared_roots(self) -> None:
        if self.gid is None:
            return
        for name in SHARED_ROOTS:
            folder = self.data_dir / name
            folder.mkdir(exist_ok=True)
            os.chown(folder, 0, self.gid)
            os.chmod(folder, 0o710)

    def prepare(self, folder: Path, *, experiment_id: str) -> Path:
        """Create `folder` (if needed) and give it, and what is in it, to the experiment's identity."""
        folder.mkdir(parents=True, exist_ok=True)
        who = self.identity(experiment_id)
        if who.uid is None:
            return folder
        for path in [folder, *folder.rglob("*")]:
            _give(path, who)
        os.chmod(folder, 0o700)
        return folder

    def stage(self, source: Path, target: Path, *, experiment_id: str) -> Path:
        """Hard-link a file or folder of the server's (the image cache) into a sandbox folder, readable there.

        A link keeps the data when the cache evicts its copy, and costs no copy of a volume.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    self.stage(path, target / path.relative_to(source), experiment_id=experiment_id)
            target.mkdir(parents=True, exist_ok=True)
        else:
            if target.exists():
                target.unlink()
            try:
                os.link(source, target)
                if self.active:
                    # shared inode: readable by anyone who can reach a name of it; the cache's name is root-only
                    os.chmod(target, 0o644)
            except OSError:
                shutil.copyfile(source, target)
        return target

    # -- the process ------------------------------------------------------------------------------------

    def env(self, *, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The whole environment of a model process: the allow-list, a private home, and `extra`."""
        env = {k: os.environ[k] for k in (*ENV_ALLOWED, *self.settings.sandbox_env_passthrough) if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        tmp = home / "tmp"
        env.update(
            {
                "HOME": str(home),
                # sandbox uids have no passwd entry; getpass.getuser() (MONAI calls it at import) reads these
                "USER": self.settings.sandbox_group,
                "LOGNAME": self.settings.sandbox_group,
                "TMPDIR": str(tmp),
                "XDG_CACHE_HOME": str(home / ".cache"),
                "MPLCONFIGDIR": str(home / ".cache" / "matplotlib"),
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(extra or {})
        return env

    def popen_kwargs(
        self, *, experiment_id: str, home: Path, extra_env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """`subprocess.Popen` arguments that run a model process as the experiment's identity."""
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        self.prepare(home, experiment_id=experiment_id)
        kwargs: dict[str, Any] = {"env": self.env(home=home, extra=extra_env), "cwd": str(home), "umask": 0o077}
        who = self.identity(experiment_id)
        if who.uid is not None:
            kwargs.update(user=who.uid, group=who.gid, extra_groups=[])
        return kwargs


def _give(path: Path, who: Identity) -> None:
    """chown one path to `who`; a file with several links is shared (a cached image, a base bundle's weights)
    and stays root's, readable."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        os.lchown(path, who.uid, who.gid)  # type: ignore[arg-type]
        return
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        os.chmod(path, info.st_mode | 0o444)
        return
    os.chown(path, who.uid, who.gid)  # type: ignore[arg-type]


def grant_traversal(path: Path, group: str) -> None:
    """Let `group` pass through (not list) every folder above `path` that others cannot pass: the Python
    install and the data dir may sit under `/root`. Needs `setfacl` (Debian's `acl`); set-up and tests call it."""
    for folder in [path, *path.parents]:
        if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH:
            subprocess.run(["setfacl", "-m", f"g:{group}:x", str(folder)], check=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m medcloud.sandbox PATH...`: grant the sandbox group traversal to each path (set-up)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--group", default="medcloud-model")
    args = parser.parse_args(argv)
    for path in args.paths:
        grant_traversal(path.resolve(), args.group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
