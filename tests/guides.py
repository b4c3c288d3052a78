"""Run a user guide's code cells as written: extract them from the seed text and exec them in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcloud.devserver import create_key, medcloud_serve  # noqa: F401  (re-exported for the guide tests)

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
CELL_MARK = "In [None]:"
NO_GUIDES = f"the user guides are read from {SEEDS}, which this checkout does not have (../shared/seeds)"
# A newcomer's clone has no ../shared: the guide tests skip, saying so.
requires_guides = pytest.mark.skipif(not SEEDS.is_dir(), reason=NO_GUIDES)


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
