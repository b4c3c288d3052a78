"""The model-host process: loads one experiment's model once and answers requests over a local socket.

Started by `hosts.ModelHost` in the sandbox (`sandbox.py`) as `python -m medcloud.inference.host --fd N`.
It speaks length-prefixed JSON frames (`wire.py`) on the inherited socket: first `{"op": "load", "spec"}`
→ `{"ok": True}`; then `{"op": "infer", "image", "params", "out_dir"}` → `{"ok": True, "files": [names
relative to out_dir]}` or `{"ok": False, "error": "..."}`; `{"op": "swap", "weights"}`; `{"op": "stop"}`.
It exits when the server goes away. This module runs model code: it never imports the server's modules.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from medcloud import wire
from medcloud.inference.predictors import Predictor

log = logging.getLogger("medcloud.host")


def build_predictor(spec: dict[str, Any]) -> Predictor:
    """The predictor of the model family named by the host spec's `kind` (families/registry.py)."""
    from medcloud.families.registry import family_named
    from medcloud.inference import nrrd_writer

    nrrd_writer.register()
    predictor = family_named(spec["kind"]).predictor(spec)
    mode = spec.get("inference_mode") or "exact"
    if mode == "exact":
        return predictor
    from medcloud.inference.accel.checked import CheckedPredictor

    return CheckedPredictor(
        predictor, mode, float(spec.get("check_min_dice", 0.99)), float(spec.get("prepare_wait_s", 120.0))
    )


def inference_report(predictor: Predictor) -> dict[str, Any] | None:
    """The mode the predictor runs in and its check (`CheckedPredictor.report`); None for exact-only hosts."""
    report = getattr(predictor, "report", None)
    return report() if callable(report) else None


def describe(exc: BaseException) -> str:
    """A one-line reason for the client; the traceback goes to the host log."""
    log.error("%s", "".join(traceback.format_exception(exc)))
    return f"{type(exc).__name__}: {exc}".strip()


MAX_REQUEST_BYTES = 64 << 20  # the server's requests: a spec, prompts and parameters


def relative_outputs(files: list[Path], out_dir: Path) -> list[str]:
    names = []
    for path in files:
        path = Path(path)
        if not path.is_absolute() or not path.is_relative_to(out_dir):
            raise ValueError("the model named an output outside its output folder")
        names.append(path.relative_to(out_dir).as_posix())
    return names


def handle(predictor: Predictor, msg: dict[str, Any]) -> dict[str, Any]:
    op = msg.get("op")
    started = time.perf_counter()
    try:
        if op == "infer":
            out_dir = Path(msg["out_dir"])
            out_dir.mkdir(parents=True, exist_ok=True)
            files = predictor.predict(msg["image"], msg.get("params") or {}, out_dir)
            return {
                "ok": True,
                "files": relative_outputs(files, out_dir),
                "seconds": time.perf_counter() - started,
                "inference": inference_report(predictor),
            }
        if op == "swap":
            predictor.swap_weights(Path(msg["weights"]))
            return {"ok": True, "seconds": time.perf_counter() - started}
        return {"ok": False, "error": f"unknown operation {op!r}"}
    except Exception as exc:
        return {"ok": False, "error": describe(exc)}


def serve(sock: socket.socket) -> int:
    try:
        first = wire.receive(sock, max_bytes=MAX_REQUEST_BYTES)
        spec = first["spec"]
        predictor = build_predictor(spec)
        predictor.load()
    except (EOFError, OSError):
        return 0
    except Exception as exc:
        wire.send(sock, {"ok": False, "error": describe(exc)})
        return 1
    wire.send(sock, {"ok": True})
    log.info("Model host ready for experiment %s", spec.get("experiment_id"))
    while True:
        try:
            msg = wire.receive(sock, max_bytes=MAX_REQUEST_BYTES)
        except (EOFError, OSError):
            return 0  # the server went away
        if msg.get("op") == "stop":
            wire.send(sock, {"ok": True})
            return 0
        wire.send(sock, handle(predictor, msg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(socket.socket(fileno=args.fd))


if __name__ == "__main__":
    sys.exit(main())
