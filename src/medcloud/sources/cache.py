"""A thread-safe on-disk cache of fetched images, keyed by (dataset id, image id), expiring after a TTL and
kept under a byte quota (least recently used entries go first)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from medcloud.errors import Invalid

_INDEX = "entry.json"
_FILES = "files"
_STALE_TMP_S = 6 * 3600  # a fetch folder this old (real time) belongs to a crashed process


@dataclass
class _Entry:
    files: list[str]  # relative to the entry's files/ folder
    ttl_s: float
    last_access: float
    size: int | None = None  # bytes below files/ (None: an entry written before sizes were recorded)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class ImageCache:
    """Local cache of fetched images, keyed by (dataset_id, image_id), with a TTL counted from last access.

    Layout: `<root>/<hash(dataset)>/<hash(image)>/{entry.json, files/...}`; an entry appears atomically
    (fetched into `<root>/.tmp/`, then renamed), so it survives restarts and is never seen half-written.

    `max_bytes` (`MEDCLOUD_IMAGE_CACHE_MAX_BYTES`; None: no quota): after each new entry, and at each sweep,
    the least recently used entries of any dataset are removed until the rest fits; the entry just fetched
    always stays, even alone over the quota. Eviction is safe for running work: a job or a model request
    uses hard links of cached files in its own folder, which keep the data.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_ttl_s: int = 3600,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_ttl_s <= 0:
            raise ValueError("max_ttl_s must be positive")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.root = Path(root)
        self.max_ttl_s = max_ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str], Future[list[Path]]] = {}
        self._generation: dict[str, int] = {}  # bumped by drop_dataset so in-flight fetches are discarded
        for sub in (".tmp", ".trash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def get_or_fetch(
        self, dataset_id: str, image_id: str, fetch: Callable[[Path], list[Path]], *, ttl_s: float | None = None
    ) -> list[Path]:
        """Cached files (touched), or `fetch(dest_dir)` run once however many threads ask at the same time."""
        ttl = self._ttl(ttl_s)
        key = (dataset_id, image_id)
        with self._lock:
            files = self._hit(key, ttl if ttl_s is not None else None)
            if files is not None:
                return files
            future = self._inflight.get(key)
            leader = future is None
            if future is None:
                future = self._inflight[key] = Future()
                generation = self._generation.get(dataset_id, 0)
        if not leader:
            return future.result()
        try:
            files = self._fill(key, fetch, ttl, generation)
            future.set_result(files)
            return files
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def lookup(self, dataset_id: str, image_id: str, *, ttl_s: float | None = None) -> list[Path] | None:
        """The cached files (last access moved to now, and the ttl set when given), or None."""
        ttl = self._ttl(ttl_s) if ttl_s is not None else None
        with self._lock:
            return self._hit((dataset_id, image_id), ttl)

    def forget(self, dataset_id: str, image_id: str) -> None:
        """Drop one entry (its source changed under the same id, as a label saved again does)."""
        with self._lock:
            self._remove(self._dir((dataset_id, image_id)))
        self._empty_trash_and_stale_tmp()

    def sweep(self) -> int:
        """Remove expired entries (also those written by an earlier process); how many were removed."""
        removed = 0
        with self._lock:
            for index in self.root.glob(f"*/*/{_INDEX}"):
                if index.parent.parent.name.startswith("."):  # .tmp and .trash hold no live entries
                    continue
                entry = self._read(index.parent)
                if entry is None or self._expired(entry):
                    self._remove(index.parent)
                    removed += 1
        removed += self._enforce_quota(keep=None)
        self._empty_trash_and_stale_tmp()
        return removed

    def drop_dataset(self, dataset_id: str) -> None:
        """Forget every entry of a dataset (a fetch still running for it is discarded when it ends)."""
        with self._lock:
            self._generation[dataset_id] = self._generation.get(dataset_id, 0) + 1
            self._remove(self.root / _digest(dataset_id))
        self._empty_trash_and_stale_tmp()

    def trim(self, dataset_id: str, max_bytes: int, *, keep: str | None = None) -> int:
        """Remove the least recently used entries of `dataset_id` until its files fit `max_bytes` (never
        `keep`, the image just served); how many were removed. Caps namespaces anyone can fill (image URLs)."""
        removed = 0
        with self._lock:
            entries = []
            for index in (self.root / _digest(dataset_id)).glob(f"*/{_INDEX}"):
                entry = self._read(index.parent)
                if entry is None or (keep is not None and index.parent == self._dir((dataset_id, keep))):
                    continue
                size = sum(p.stat().st_size for p in (index.parent / _FILES).rglob("*") if p.is_file())
                entries.append((entry.last_access, size, index.parent))
            kept = self._dir((dataset_id, keep)) if keep is not None else None
            total = sum(size for _, size, _ in entries)
            if kept is not None and kept.exists():
                total += sum(p.stat().st_size for p in (kept / _FILES).rglob("*") if p.is_file())
            for _, size, folder in sorted(entries, key=lambda e: e[0]):
                if total <= max_bytes:
                    break
                self._remove(folder)
                total -= size
                removed += 1
        if removed:
            self._empty_trash_and_stale_tmp()
        return removed

    def usage(self) -> int:
        """Bytes the live entries hold (what the quota counts)."""
        with self._lock:
            return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        """Under the lock: (last access, bytes, folder) of every live entry."""
        out = []
        for index in self.root.glob(f"*/*/{_INDEX}"):
            folder = index.parent
            if folder.parent.name.startswith("."):  # .tmp and .trash hold no live entries
                continue
            entry = self._read(folder)
            if entry is not None:
                size = entry.size if entry.size is not None else _bytes_below(folder / _FILES)
                out.append((entry.last_access, size, folder))
        return out

    def _enforce_quota(self, keep: Path | None) -> int:
        """Remove the least recently used entries until the cache fits `max_bytes` (never `keep`); how many."""
        if self.max_bytes is None:
            return 0
        removed = 0
        with self._lock:
            entries = self._entries()
            total = sum(size for _, size, _ in entries)
            for _, size, folder in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                if folder == keep:
                    continue
                self._remove(folder)
                total -= size
                removed += 1
        return removed

    def _ttl(self, ttl_s: float | None) -> float:
        if ttl_s is None:
            return float(self.max_ttl_s)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or ttl_s <= 0:
            raise Invalid("The ttl must be a positive number of seconds.")
        return float(min(ttl_s, self.max_ttl_s))

    def _dir(self, key: tuple[str, str]) -> Path:
        return self.root / _digest(key[0]) / _digest(key[1])

    def _hit(self, key: tuple[str, str], ttl: float | None) -> list[Path] | None:
        """Under the lock: the entry's files after touching it (and setting its ttl if given), or None."""
        folder = self._dir(key)
        entry = self._read(folder)
        if entry is None:
            return None
        files = [folder / _FILES / rel for rel in entry.files]
        if self._expired(entry) or not all(path.is_file() for path in files):
            self._remove(folder)
            return None
        entry.last_access = self._clock()
        entry.ttl_s = ttl if ttl is not None else entry.ttl_s
        self._write(folder, key, entry)
        return files

    def _fill(
        self, key: tuple[str, str], fetch: Callable[[Path], list[Path]], ttl: float, generation: int
    ) -> list[Path]:
        """Fetch into a private temp folder, then move it into place as the entry."""
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        dest = tmp / _FILES
        dest.mkdir(parents=True)
        try:
            fetched = fetch(dest)
            rels = [_relative(Path(path), dest) for path in fetched]
            entry = _Entry(files=rels, ttl_s=ttl, last_access=self._clock(), size=_bytes_below(dest))
            self._write(tmp, key, entry)
            with self._lock:
                if self._generation.get(key[0], 0) != generation:
                    raise Invalid(f"Dataset {key[0]} was removed while image {key[1]} was being fetched.")
                folder = self._dir(key)
                self._remove(folder)
                folder.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self._enforce_quota(keep=folder):
            self._empty_trash_and_stale_tmp()
        return [folder / _FILES / rel for rel in rels]

    def _expired(self, entry: _Entry) -> bool:
        return self._clock() >= entry.last_access + entry.ttl_s

    @staticmethod
    def _read(folder: Path) -> _Entry | None:
        try:
            raw = json.loads((folder / _INDEX).read_text("utf-8"))
            size = raw.get("bytes")
            return _Entry(
                files=[str(f) for f in raw["files"]],
                ttl_s=float(raw["ttl_s"]),
                last_access=float(raw["last_access"]),
                size=int(size) if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def _write(folder: Path, key: tuple[str, str], entry: _Entry) -> None:
        """Write the index atomically (temp file, then rename)."""
        doc = {
            "dataset_id": key[0],
            "image_id": key[1],
            "files": entry.files,
            "ttl_s": entry.ttl_s,
            "last_access": entry.last_access,
            **({"bytes": entry.size} if entry.size is not None else {}),
        }
        tmp = folder / f".{_INDEX}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(doc), "utf-8")
        os.replace(tmp, folder / _INDEX)

    def _remove(self, folder: Path) -> None:
        """Move a folder out of the way at once (the trash is emptied later, outside hot paths)."""
        if folder.exists():
            os.replace(folder, self.root / ".trash" / uuid.uuid4().hex)

    def _empty_trash_and_stale_tmp(self) -> None:
        """Delete what `_remove` moved aside and fetch folders left by a crashed process (no lock held)."""
        for path in (self.root / ".trash").iterdir():
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.root / ".tmp").iterdir():
            try:
                stale = time.time() - path.stat().st_mtime > _STALE_TMP_S
            except OSError:
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)


def _bytes_below(folder: Path) -> int:
    """Bytes of the regular files below `folder` (links are not followed; one vanishing meanwhile counts 0)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _relative(path: Path, dest: Path) -> str:
    """`path` relative to `dest`; a fetch that wrote elsewhere is a programming error."""
    resolved, base = path.resolve(), dest.resolve()
    if not resolved.is_relative_to(base) or not resolved.is_file():
        raise ValueError(f"fetch returned {path}, which is not a file inside {dest}")
    return resolved.relative_to(base).as_posix()
