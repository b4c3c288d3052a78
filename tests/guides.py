"""Run a user guide's code cells as written: extract them from the seed text and exec them in order; the org
the guides name, and guide 000's bundle served over HTTP (the fixture `bundle_server`)."""

from __future__ import annotations

import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest

from medcloud.devserver import create_key, medcloud_serve  # noqa: F401  (re-exported for the guide tests)

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
CELL_MARK = "In [None]:"
NO_GUIDES = f"the user guides are read from {SEEDS}, which this checkout does not have (../shared/seeds)"
# A newcomer's clone has no ../shared: the guide tests skip, saying so.
requires_guides = pytest.mark.skipif(not SEEDS.is_dir(), reason=NO_GUIDES)
ORG = "iasixjqzw1hj"  # the org written in the guides


def guide_cells(name_prefix: str) -> list[str]:
    """The code cells of `shared/seeds/<prefix>_*.txt`, in order.

    A cell starts after an `In [None]:` line and is the longest run of following lines that
    compiles as Python (the prose after it does not).
    """
    if not SEEDS.is_dir():
        pytest.skip(NO_GUIDES)
    path = next(SEEDS.glob(f"{name_prefix}_*.txt"))
    chunks = path.read_text().split(CELL_MARK)[1:]
    cells = []
    for chunk in chunks:
        # IPython shell lines (`!pip install ...`) are not Python: the server needs nothing installed.
        lines = [line for line in chunk.strip("\n").splitlines() if not line.startswith("!")]
        best = ""
        for end in range(1, len(lines) + 1):
            candidate = "\n".join(lines[:end])
            try:
                compile(candidate, "cell", "exec")
            except SyntaxError:
                continue
            best = candidate
        cells.append(best)
    return cells


def substitute(cell: str, replacements: dict[str, str]) -> str:
    """Replace whole assignment lines `name = ...` with our values (host, storage, bundle)."""
    out = []
    for line in cell.splitlines():
        name = line.split("=", 1)[0].strip() if "=" in line and not line.startswith((" ", "\t")) else None
        out.append(f"{name} = {replacements[name]!r}" if name in replacements else line)
    return "\n".join(out)


def guide_snippet(name_prefix: str, contains: str) -> str:
    """A ```python block of the guide's prose (not a cell) that contains `contains`."""
    text = next(SEEDS.glob(f"{name_prefix}_*.txt")).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python")[1:]]
    return next(b for b in blocks if contains in b)


@pytest.fixture(name="bundle_server")
def bundle_server_fixture(demo_zips, tmp_path):
    """Serves the demo classification bundle under the model zoo's file name: guide 000's `bundle_url`."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(demo_zips["classification"], root / "endoscopic_inbody_classification_v0.4.6.zip")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/endoscopic_inbody_classification_v0.4.6.zip"
    server.shutdown()
