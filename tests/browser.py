"""A real browser for the viewer tests: Debian's chromium driven by playwright, software WebGL.

playwright cannot download its own browser here, so it is pointed at the system binary that
scripts/setup.sh --test installs. SwiftShader gives WebGL2 without a GPU.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_ARGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--no-sandbox",  # the suite runs as root in CI; chromium refuses its sandbox there
]


def chromium_binary() -> str:
    """The real chromium binary (Debian's /usr/bin/chromium is a wrapper script)."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("Debian's chromium is not installed: run scripts/setup.sh --test (apt-get install chromium)")


@contextlib.contextmanager
def browser() -> Iterator[object]:
    """A headless chromium, closed at the end of the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_binary(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def new_page(instance, base_url: str, width: int = 1400, height: int = 860):  # type: ignore[no-untyped-def]
    """A page at 1:1 device pixels that records console errors and page errors on `page.errors`."""
    context = instance.new_context(
        viewport={"width": width, "height": height}, device_scale_factor=1, base_url=base_url
    )
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # type: ignore[attr-defined]
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))  # type: ignore[attr-defined]
    return page
