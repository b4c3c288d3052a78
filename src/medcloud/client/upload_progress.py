"""How `datasets upload` shows its progress: a bar redrawn with `\\r` on a terminal, one line per file otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from fsspec.callbacks import Callback

BAR_WIDTH = 24


class Progress(Protocol):
    """Receives an upload's progress: totals once, then per file and per chunk of bytes sent."""

    def start(self, files: int, total_bytes: int) -> None: ...

    def file_started(self, rel: str, size: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def file_done(self, rel: str, size: int, *, skipped: bool) -> None: ...

    def finish(self) -> None: ...


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class LineProgress:
    """Plain lines for logs and pipes: `[3/10] uploaded imagesTr/a.nii.gz (1.2 MB)`, flushed at once."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.files = 0
        self.done = 0

    def start(self, files: int, total_bytes: int) -> None:
        """Say how much there is to look at."""
        self.files = files
        print(f"{files} files, {_size(total_bytes)}", file=self.out, flush=True)

    def file_started(self, rel: str, size: int) -> None:
        """Nothing: a line per finished file is enough."""

    def advance(self, nbytes: int) -> None:
        """Nothing: bytes are not shown line by line."""

    def file_done(self, rel: str, size: int, *, skipped: bool) -> None:
        """One line per file, uploaded or skipped."""
        self.done += 1
        what = "skipped (already there)" if skipped else "uploaded"
        print(f"[{self.done}/{self.files}] {what} {rel} ({_size(size)})", file=self.out, flush=True)

    def finish(self) -> None:
        """Nothing more to say: the command prints its summary."""


class TerminalProgress:
    """One line redrawn in place: bar, percent of bytes, files done, rate and the current file."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.files = self.done = 0
        self.total = self.sent = 0
        self.current = ""
        self.started = time.monotonic()

    def start(self, files: int, total_bytes: int) -> None:
        """Remember the totals and draw the empty bar."""
        self.files, self.total, self.started = files, total_bytes, time.monotonic()
        self._draw()

    def file_started(self, rel: str, size: int) -> None:
        """Show the file being sent."""
        self.current = rel
        self._draw()

    def advance(self, nbytes: int) -> None:
        """Count bytes sent."""
        self.sent += nbytes
        self._draw()

    def file_done(self, rel: str, size: int, *, skipped: bool) -> None:
        """Count the file (a skipped one counts its bytes as done)."""
        self.done += 1
        if skipped:
            self.sent += size
        self._draw()

    def finish(self) -> None:
        """End the redrawn line."""
        self._draw()
        print(file=self.out, flush=True)

    def _draw(self) -> None:
        fraction = min(1.0, self.sent / self.total) if self.total else 1.0
        filled = int(round(fraction * BAR_WIDTH))
        rate = self.sent / max(time.monotonic() - self.started, 1e-3)
        line = (
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}% "
            f"{self.done}/{self.files} files {_size(self.sent)}/{_size(self.total)} {_size(rate)}/s {self.current[-40:]}"
        )
        self.out.write(line.ljust(110)[:110])
        self.out.flush()


class _BytesCallback(Callback):  # type: ignore[misc]
    """fsspec's per-file callback, forwarding the bytes sent to a `Progress`."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.reported = 0

    def call(self, *args: Any, **kwargs: Any) -> None:
        delta = int(self.value or 0) - self.reported
        if delta > 0:
            self.reported += delta
            self.progress.advance(delta)


def bytes_callback(progress: Progress | None) -> Callback:
    """An fsspec callback for one `put_file` that reports to `progress` (a no-op one without it)."""
    return _BytesCallback(progress) if progress is not None else Callback()
