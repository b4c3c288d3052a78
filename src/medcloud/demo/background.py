"""The demo, prepared while the server already answers (`medcloud serve` on a fresh data dir).

Training the small demo networks takes minutes on a CPU. `medcloud serve` answers `/health`, `/login` and
every route at once and prepares the demo in the background, in order:

1. the demo bundles, the small VISTA-3D and DeepEdit, trained in a child process (`python -m
   medcloud.demo.background DATA_DIR`) that ends with the server, so stopping it never waits on training;
2. guide 000's key and dataset, then its printout (as `medcloud demo` prints it);
3. the annotation demo (`medcloud.demo.annotation`).

Each step is logged and shown under `demo` in `GET /api/v1/health/readiness` (`DemoProgress.report`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from medcloud.context import Context

log = logging.getLogger(__name__)

STEP_PREFIX = "medcloud demo step: "


@dataclass
class DemoProgress:
    """Where the background demo preparation stands: what `/health` shows and the families consult."""

    state: Literal["preparing", "ready", "failed"] = "preparing"
    step: str = "waiting for the server to start"
    done: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def preparing(self) -> bool:
        return self.state == "preparing"

    def begin(self, step: str) -> None:
        if self.step and self.step != DemoProgress.step:
            self.done.append(self.step)
        self.step = step
        log.info("Demo: %s… (%.0f s since start)", step, time.monotonic() - self.started)

    def finish(self, ok: bool) -> None:
        if ok:
            self.done.append(self.step)
            self.step = ""
        self.state = "ready" if ok else "failed"
        log.info("Demo: %s after %.0f s", self.state, time.monotonic() - self.started)

    def report(self) -> dict[str, object]:
        """For the unauthenticated health route: step names only, never an error text or a path."""
        return {"state": self.state, "step": self.step, "done": list(self.done)}


async def prepare_demo_in_background(ctx: Context) -> None:
    """A `create_app` start-up task: train the demo models, then guide 000's set-up, then the annotation demo."""
    from medcloud.demo.annotation import serve_annotation_demo
    from medcloud.demo.setup import prepare_demo, with_demo_models

    progress = ctx.demo
    assert progress is not None, "Context.demo is set by `medcloud serve` with the demo"
    try:
        progress.begin("training the demo bundles, the small VISTA-3D and DeepEdit")
        await _train_in_child(ctx.settings.data_dir, progress)
        ctx.settings = await asyncio.to_thread(with_demo_models, ctx.settings)  # cached now: instant
        progress.begin("guide 000's key and dataset")
        await asyncio.to_thread(prepare_demo, ctx, sys.stdout)
    except Exception:
        log.exception("Demo: preparation failed; the server serves on without the demo")
        progress.finish(ok=False)
        return
    progress.begin("the annotation demo (datasets demo-ct and demo-ct-eval, experiment demo-vista3d)")
    progress.finish(ok=await serve_annotation_demo(ctx))


async def _train_in_child(data_dir: Path, progress: DemoProgress) -> None:
    """Run `main` in a child process (killed if the server stops first); its step lines become the progress."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "medcloud.demo.background", str(data_dir), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        async for raw in child.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(STEP_PREFIX):
                progress.begin(line.removeprefix(STEP_PREFIX))
        if await child.wait() != 0:
            raise RuntimeError(f"training the demo models exited with {child.returncode}")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


def main(argv: list[str] | None = None) -> int:
    """The child: build every demo model the server lacks into `DATA_DIR/demo/bundles` (each cached once)."""
    from medcloud.config import Settings

    parser = argparse.ArgumentParser(prog="python -m medcloud.demo.background")
    parser.add_argument("data_dir", type=Path)
    settings = Settings(data_dir=parser.parse_args(argv).data_dir)
    folder = settings.data_dir / "demo" / "bundles"

    def step(name: str) -> None:
        print(STEP_PREFIX + name, flush=True)

    from medcloud.demo.bundles import ensure_demo_bundles

    step("training the demo bundles (segmentation, classification)")
    ensure_demo_bundles(folder)
    if not settings.vista3d_bundle:
        from medcloud.families.vista3d.demo import ensure_demo_vista3d

        step("training the small VISTA-3D")
        ensure_demo_vista3d(folder)
    if not settings.deepedit_bundle:
        from medcloud.families.deepedit.demo import ensure_demo_deepedit

        step("training the small DeepEdit")
        ensure_demo_deepedit(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
