"""Label saves under load: a cap on how many run at once in one API process, and locks that serialize
the saves of one image (and the manifest rewrites of one dataset) across every API process sharing the
data dir (several `medcloud serve` workers, or a Ray deployment's API processes on PostgreSQL).

The locks are `flock`s on files in `data/locks/labels/`, a folder only the server uses. `flock` belongs
to an open file, so two threads of one process exclude each other as two processes do, and the kernel
drops the lock of a process that dies. On a data dir shared between machines the file system must
support locks (NFSv4 does; Linux maps `flock` onto its byte-range locks there).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FOLDER = Path("locks") / "labels"
RETRY_AFTER_S = 2
SETTING = "MEDCLOUD_MAX_LABEL_SAVES"


class SaveGate:
    """At most `limit` label saves at once. Used from the event loop only: taking a slot never waits, it
    succeeds or fails at once (a save waiting for a slot would hold its body in memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    def try_acquire(self) -> bool:
        if self.running >= self.limit:
            return False
        self.running += 1
        return True

    def release(self) -> None:
        self.running -= 1

    def busy_message(self) -> str:
        return (
            f"The server is saving {self.limit} label(s) already, as many as it saves at once ({SETTING}); "
            f"try again in {RETRY_AFTER_S} seconds."
        )


def lock_path(data_dir: Path, dataset_id: str, image_id: str | None = None) -> Path:
    """The lock file of one image's label (or, without an image, of the dataset's manifest)."""
    key = dataset_id if image_id is None else f"{dataset_id}\n{image_id}"
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return data_dir / LOCK_FOLDER / (f"{name}.image.lock" if image_id is not None else f"{name}.manifest.lock")


@contextlib.contextmanager
def exclusive(data_dir: Path, dataset_id: str, image_id: str | None = None) -> Iterator[None]:
    """Hold the lock of an image's label (or of a dataset's manifest) for the block, across processes.

    Blocking: waits for the holder, so call it from a worker thread, never the event loop. Take an
    image's lock before its dataset's, never the other way round.
    """
    path = lock_path(data_dir, dataset_id, image_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock
