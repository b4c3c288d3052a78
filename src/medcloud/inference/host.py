"""The model-host process: loads one experiment's model once and answers requests over a local socket.

Started by `hosts.ModelHost` as `python -m medcloud.inference.host --fd N --spec FILE`. It speaks
pickled dicts over a `multiprocessing.connection.Connection` on an inherited socket:
`{"op": "infer", "image", "params", "out_dir"}` → `{"ok": True, "files": [...]}` or
`{"ok": False, "error": "..."}`; `{"op": "swap", "weights"}`; `{"op": "stop"}`. It exits when the
parent goes away.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

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


def handle(predictor: Predictor, msg: dict[str, Any]) -> dict[str, Any]:
    op = msg.get("op")
    started = time.perf_counter()
    try:
        if op == "infer":
            files = predictor.predict(msg["image"], msg.get("params") or {}, Path(msg["out_dir"]))
            return {
                "ok": True,
                "files": [str(f) for f in files],
                "seconds": time.perf_counter() - started,
                "inference": inference_report(predictor),
            }
        if op == "swap":
            predictor.swap_weights(Path(msg["weights"]))
            return {"ok": True, "seconds": time.perf_counter() - started}
        return {"ok": False, "error": f"unknown operation {op!r}"}
    except Exception as exc:
        return {"ok": False, "error": describe(exc)}


def serve(conn: Connection, spec: dict[str, Any]) -> int:
    try:
        predictor = build_predictor(spec)
        predictor.load()
    except Exception as exc:
        conn.send({"ok": False, "error": describe(exc)})
        return 1
    conn.send({"ok": True})
    log.info("Model host ready for experiment %s", spec.get("experiment_id"))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return 0  # the server went away
        if msg.get("op") == "stop":
            conn.send({"ok": True})
            return 0
        conn.send(handle(predictor, msg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(args.spec.read_text())
    return serve(Connection(args.fd), spec)


if __name__ == "__main__":
    sys.exit(main())
