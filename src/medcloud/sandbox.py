"""Where model code runs: a bubblewrap sandbox that sees the system read-only, its inputs, one folder of its own.

A MONAI bundle is code, and an attacker towards the server. Every process that runs model code — the
model host of a real-time experiment (`inference/host.py`), the model inside a Ray replica, the model
process of a train or batch job (`modelrun/main.py`) — is started through `Sandbox.launch`, which wraps
it in Debian's `bwrap` (bubblewrap, the namespace tool Flatpak uses):

- its own mount namespace holding only `/usr` (and the usual links to it), a few files of `/etc`, the
  Python installation and medcloud's code, all read-only; its bundle and inputs read-only; **one**
  writable folder of its own; a private `/tmp` and `/dev/shm`;
- an empty network namespace (no network at all, loopback only), its own pid namespace (every process it
  starts dies with it: `--die-with-parent`, and the namespace ends with its first process), its own IPC
  and UTS namespaces, a new session (no terminal injection);
- on a root server, the experiment's own unprivileged uid and gid (allocated once, `sandbox-uids.json`),
  no capabilities and `no_new_privs` (`setpriv`); as another user, a user namespace (uid 65534 inside);
- resource limits (`prlimit`): address space, processes of its uid, CPU seconds, file size, core dumps;
  the CPUs it may use (`taskset`); its environment from an allow-list (never `MEDCLOUD_*`, never a key).

The server never opens, creates, chowns or chmods by name anything inside the writable folder while
model code may hold it: the folder is made afresh (the old one removed with `shutil.rmtree`, which does
not follow links) and handed over by an fd; what comes back is read through `confined.py`.

`MEDCLOUD_MODEL_SANDBOX`: `auto` (bwrap where it can create namespaces; where it cannot, model code is
refused), `bwrap` (the server refuses to start without it), `unsafe` (the operator runs model code with a
scrubbed environment only: for a machine where bwrap cannot run and every bundle is trusted).
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import resource
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcloud.config import Settings
from medcloud.errors import Unavailable

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
# The system as model code sees it: read-only, and nothing of /etc but what programs need to start.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/mime.types",
    "/etc/fonts",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
)
# CPU topology: torch and OpenVINO read it to size their thread pools.
SYS_READABLE = ("/sys/devices/system/cpu",)
UIDS_FILE = "sandbox-uids.json"
NOBODY = 65534
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
    """The uid/gid model code runs as outside its namespaces; `None`: the server's own (not root)."""

    uid: int | None = None
    gid: int | None = None


@dataclass
class Launch:
    """A model process ready for `subprocess.Popen(launch.argv, pass_fds=launch.pass_fds, env=..., cwd=...)`."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    pass_fds: tuple[int, ...] = ()

    def popen_kwargs(self) -> dict[str, Any]:
        return {"env": self.env, "cwd": self.cwd, "pass_fds": self.pass_fds, "close_fds": True}


class Sandbox:
    """Decides how model code runs here, prepares its writable folder, and builds its command line.

    Example:
        >>> box = sandbox_for(settings)
        >>> out = box.fresh_folder(settings.data_dir / "hosts" / exp_id / "out", experiment_id=exp_id)
        >>> launch = box.launch(["-m", "medcloud.inference.host", "--fd", "3"], experiment_id=exp_id,
        ...                     readable=[bundle_dir, in_dir], writable=out, keep_fds=[3])
        >>> proc = subprocess.Popen(launch.argv, **launch.popen_kwargs())
    """

    def __init__(self, settings: Settings, *, fixed_uid: int | None = None) -> None:
        self.settings = settings
        self.fixed_uid = fixed_uid  # a Ray replica's: derived from the experiment, no table on its node
        self.data_dir = settings.data_dir
        self.root = os.geteuid() == 0
        self.bwrap = shutil.which("bwrap")
        self.python = settings.host_python or sys.executable
        self.problem: str | None = None
        wanted = settings.model_sandbox
        if wanted == "unsafe":
            self.mode = "unsafe"
            log.warning(
                "MEDCLOUD_MODEL_SANDBOX=unsafe: model code runs with a scrubbed environment only; it can reach "
                "the network, the master key and the database. Use it only where every bundle is trusted."
            )
        else:
            self.mode = "bwrap"  # what the probe tries
            self.problem = self._probe()
            self.mode = "bwrap" if self.problem is None else "refused"
            if self.problem is not None:
                message = (
                    f"Model code cannot run sandboxed here: {self.problem}. Install Debian's `bubblewrap` "
                    "(scripts/setup.sh does) on a kernel that allows namespaces, or set "
                    "MEDCLOUD_MODEL_SANDBOX=unsafe where every bundle is trusted."
                )
                if wanted == "bwrap":
                    raise RuntimeError(message)
                log.error("%s Model hosts and jobs are refused until then.", message)
        log.info("Model sandbox: %s", self.describe())
        self._secure_data_dir()

    # -- what runs here ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """For `/health` and the log: the mode, and what isolates model code in it."""
        isolation = {
            "bwrap": "namespaces (mount, pid, network, ipc, uts) and resource limits",
            "unsafe": "scrubbed environment only (MEDCLOUD_MODEL_SANDBOX=unsafe)",
            "refused": "none: model code is refused",
        }[self.mode]
        described: dict[str, Any] = {"mode": self.mode, "isolation": isolation, "limits": "rlimit"}
        if self.problem and self.mode == "refused":
            described["problem"] = self.problem
        return described

    def require(self) -> None:
        """Raise Unavailable (503) when model code may not run here."""
        if self.mode == "refused":
            raise Unavailable(
                "Error: model code cannot run on this server: bubblewrap cannot create its sandbox "
                f"({self.problem}). The operator installs bubblewrap or sets MEDCLOUD_MODEL_SANDBOX=unsafe."
            )

    def _probe(self) -> str | None:
        """None when a sandboxed process starts here, else why not."""
        if self.bwrap is None:
            return "the `bwrap` command is not installed"
        try:
            launch = self.launch([], experiment_id=None, readable=[], writable=None, command=["/bin/true"])
            proc = subprocess.run(launch.argv, capture_output=True, timeout=60, **launch.popen_kwargs())
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bwrap could not start ({exc})"
        if proc.returncode != 0:
            return "bwrap failed: " + proc.stderr.decode(errors="replace").strip()[-300:]
        return None

    def _secure_data_dir(self) -> None:
        """The data dir is the server's alone: model code sees none of it but what is bound in."""
        os.chmod(self.data_dir, 0o700)

    # -- who model code runs as -------------------------------------------------------------------------

    def identity(self, experiment_id: str | None) -> Identity:
        """On a root server: the experiment's own uid and gid (allocated once, never shared)."""
        if not self.root or self.mode == "unsafe":
            return Identity()
        if experiment_id is None:
            return Identity(uid=self.settings.sandbox_uid_base, gid=self.settings.sandbox_uid_base)
        if self.fixed_uid is not None:
            return Identity(uid=self.fixed_uid, gid=self.fixed_uid)
        uid = self._allocate_uid(experiment_id)
        return Identity(uid=uid, gid=uid)

    def _allocate_uid(self, experiment_id: str) -> int:
        path = self.data_dir / UIDS_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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

    def fresh_folder(self, folder: Path, *, experiment_id: str | None) -> Path:
        """Make `folder` anew (whatever model code left there is removed without following links) and give
        it to the experiment's identity through an fd. Its parent must be the server's."""
        if folder.is_symlink():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)  # never follows a link model code left inside
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(folder, 0o700)
        who = self.identity(experiment_id)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if who.uid is not None:
                os.fchown(fd, who.uid, who.gid)  # type: ignore[arg-type]
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        return folder

    def make_readable(self, folder: Path) -> None:
        """Let model code read a folder of the server's that it will see read-only (a bundle): folders 0755 and
        files 0644, owned by the server (a folder of an older layout may still be a sandbox uid's). Links are
        left alone; model code never writes here, so nothing changes under the walk."""
        me = os.geteuid()
        for path in [folder, *folder.rglob("*")]:
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue
            if info.st_uid != me and self.root:
                os.lchown(path, me, os.getegid())
            os.chmod(path, 0o755 if stat.S_ISDIR(info.st_mode) else 0o644)

    def stage(self, source: Path, target: Path) -> Path:
        """Put a file or folder of the server's (the image cache) at `target`, in a read-only input folder of
        the server's, readable by model code: hard links where possible (no copy of a volume, and the data
        stays if the cache evicts its copy), else copies. Folders made here are 0755 whatever the umask."""
        _readable_dirs(target.parent)
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    self.stage(path, target / path.relative_to(source))
            _readable_dirs(target)
            return target
        if target.is_symlink() or target.exists():
            target.unlink()
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError:
            shutil.copyfile(source, target, follow_symlinks=False)
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o644)  # the inode is the server's own cached file
        finally:
            os.close(fd)
        return target

    # -- the process ------------------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None, *, home: str = "/tmp") -> dict[str, str]:
        """The whole environment of a model process: the allow-list, a private home, and `extra`."""
        env = {k: os.environ[k] for k in (*ENV_ALLOWED, *self.settings.sandbox_env_passthrough) if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            {
                "HOME": home,
                "USER": "medcloud-model",  # getpass.getuser() (MONAI calls it at import) reads these
                "LOGNAME": "medcloud-model",
                "TMPDIR": f"{home}/tmp" if home != "/tmp" else "/tmp",
                "XDG_CACHE_HOME": f"{home}/.cache",
                "MPLCONFIGDIR": f"{home}/.cache/matplotlib",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(extra or {})
        return env

    def launch(
        self,
        python_args: Sequence[str],
        *,
        experiment_id: str | None,
        readable: Sequence[Path],
        writable: Path | None,
        keep_fds: Sequence[int] = (),
        extra_env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> Launch:
        """The command line of a model process: `python <python_args>` (or `command`, for the probe) in the
        sandbox, seeing `readable` read-only and `writable` (made by `fresh_folder`) as its only writable
        folder, both at their own paths. `keep_fds` are inherited (the host's socket). Unavailable where
        model code is refused."""
        self.require()
        argv = list(command) if command is not None else [self.python, *python_args]
        cwd = str(writable) if writable is not None else "/"
        if self.mode == "unsafe":
            env = self.env(extra_env, home=str(writable) if writable else "/tmp")
            if writable is not None:
                (writable / "tmp").mkdir(exist_ok=True)
            return Launch(argv=[*self._limits(), *argv], env=env, cwd=cwd, pass_fds=tuple(keep_fds))
        who = self.identity(experiment_id)
        wrapped: list[str] = [*self._limits(), self.bwrap or "bwrap", *self._namespaces(who)]
        wrapped += self._system_binds()
        binds: list[tuple[str, Path]] = [("--ro-bind", path) for path in self._python_paths()]
        binds += [("--ro-bind", Path(p)) for p in readable]
        if writable is not None:
            binds.append(("--bind", writable))
        wrapped += _parent_dirs([path for _flag, path in binds])
        for flag, path in binds:
            wrapped += [flag, str(path), str(path)]
        wrapped += ["--chdir", cwd]
        if who.uid is not None:
            wrapped += [
                "--",
                "setpriv",
                f"--reuid={who.uid}",
                f"--regid={who.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
            ]
        wrapped += ["--", *argv]
        return Launch(argv=wrapped, env=self.env(extra_env), cwd="/", pass_fds=tuple(keep_fds))

    def _namespaces(self, who: Identity) -> list[str]:
        common = [
            "--die-with-parent",
            "--new-session",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
        ]
        common += ["--unshare-cgroup-try", "--hostname", "medcloud-model"]
        if who.uid is not None:
            return common  # root: namespaces without a user namespace; setpriv drops to the experiment's uid
        return [*common, "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]

    def _system_binds(self) -> list[str]:
        args: list[str] = []
        for name in SYSTEM_DIRS:
            path = Path(name)
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                args += ["--ro-bind", name, name]
        for name in (*ETC_FILES, *SYS_READABLE):
            if os.path.exists(name):
                args += ["--ro-bind", name, name]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(self.settings.sandbox_tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
        args += ["--size", str(self.settings.sandbox_tmp_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
        args += self._gpu_binds()
        return args

    @staticmethod
    def _gpu_binds() -> list[str]:
        """NVIDIA's device nodes and driver files, when this machine has them (CUDA then works inside)."""
        devices = sorted(glob.glob("/dev/nvidia*"))
        if not devices:
            return []
        args: list[str] = []
        for device in devices:
            args += ["--dev-bind", device, device]
        for name in ("/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices", "/sys/module/nvidia"):
            if os.path.exists(name):
                args += ["--ro-bind", name, name]
        return args

    def _python_paths(self) -> list[Path]:
        """The Python installation and medcloud's own code, wherever they are (e.g. under /root)."""
        import medcloud

        candidates = [Path(sys.base_prefix), Path(sys.prefix), Path(medcloud.__file__).resolve().parents[1]]
        if self.settings.host_python:
            candidates.append(Path(self.settings.host_python).resolve().parents[1])
        candidates += [Path(p) for p in self.settings.sandbox_readable_paths]
        paths: list[Path] = []
        for path in candidates:
            if not path.exists() or any(path.is_relative_to(s) for s in SYSTEM_DIRS if s != "/"):
                continue
            if not any(path.is_relative_to(p) for p in paths):
                paths = [p for p in paths if not p.is_relative_to(path)] + [path]
        return paths

    def _limits(self) -> list[str]:
        """`prlimit` (and `taskset`) in front of the command: the caps of `MEDCLOUD_SANDBOX_*`."""
        s = self.settings
        nproc = _at_most(resource.RLIMIT_NPROC, s.sandbox_max_processes)
        nofile = _at_most(resource.RLIMIT_NOFILE, s.sandbox_max_open_files)
        limits = ["prlimit", f"--nproc={nproc}", "--core=0", f"--nofile={nofile}"]
        if s.sandbox_memory_bytes and not glob.glob("/dev/nvidia*"):  # CUDA maps far more address space than it uses
            limits.append(f"--as={s.sandbox_memory_bytes}")
        if s.sandbox_cpu_seconds:
            limits.append(f"--cpu={s.sandbox_cpu_seconds}")
        if s.sandbox_file_bytes:
            limits.append(f"--fsize={s.sandbox_file_bytes}")
        limits.append("--")
        if s.sandbox_cpus:
            cpus = sorted(os.sched_getaffinity(0))[: s.sandbox_cpus]
            limits += ["taskset", "--cpu-list", ",".join(map(str, cpus))]
        return limits


def _readable_dirs(folder: Path) -> None:
    """Make `folder` and its missing parents, each 0755 (model code reads through them; the umask may be 077)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o755)


def _at_most(which: int, wanted: int) -> int:
    """`wanted`, or this process's hard limit where that is lower (a limit can only be lowered)."""
    hard = resource.getrlimit(which)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _parent_dirs(paths: Sequence[Path]) -> list[str]:
    """`--dir` for every folder above the bind targets, world-traversable (bwrap makes them 0700 otherwise)."""
    seen: list[str] = []
    for path in paths:
        for parent in reversed(Path(path).parents):
            name = str(parent)
            if name != "/" and name not in seen and name not in SYSTEM_DIRS:
                seen.append(name)
    args: list[str] = []
    for name in seen:
        args += ["--perms", "0755", "--dir", name]
    return args
