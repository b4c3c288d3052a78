"""How `watch` shows a job: a one-line progress bar redrawn with `\\r` on a terminal, plain lines otherwise."""

from __future__ import annotations

from typing import TextIO

from medcloud.client.types import Job

BAR_WIDTH = 24


def eta_text(seconds: float | None) -> str:
    """`1:02:03` / `2:03` for seconds left; `-` when unknown."""
    if seconds is None:
        return "-"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(job: Job) -> str:
    """The job's state in words: status, epoch/max_epoch, key metric, ETA (what is known of them)."""
    progress = job.progress
    words = [job.status]
    if progress.max_epoch:
        words.append(f"epoch {progress.epoch or 0}/{progress.max_epoch}")
    if progress.key_metric is not None:
        words.append(f"key_metric {progress.key_metric:.4f}")
    if progress.eta is not None and not job.ended:
        words.append(f"ETA {eta_text(progress.eta)}")
    if job.ended and progress.message:
        words.append(f"- {progress.message}")
    return "  ".join(words)


class JobDisplay:
    """Draws successive states of one job on `out`; `tty` decides bar or lines (default: `out.isatty()`)."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._last = ""
        self._width = 0

    def update(self, job: Job) -> None:
        """Show `job` if something changed since the last call."""
        text = describe(job)
        if self.tty:
            fraction = job.progress.fraction or (1.0 if job.status == "Done" else 0.0)
            filled = int(round(fraction * BAR_WIDTH))
            line = f"{job.action} {job.id[:8]} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"
            self.out.write("\r" + line.ljust(self._width))
            self._width = len(line)
            if job.ended:
                self.out.write("\n")
        elif text != self._last:
            self.out.write(f"job {job.id} {text}\n")
        self._last = text
        self.out.flush()
