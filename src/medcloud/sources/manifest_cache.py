"""Parsed manifests kept between requests, each valid while its file's stamp (size, mtime or etag) holds."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

from medcloud.sources.manifest import Manifest

# What object stores and local files report that changes whenever the content does (one or more of them).
_VERSION_KEYS = ("mtime", "ino", "ETag", "etag", "LastModified", "last_modified", "generation", "updated", "md5Hash")


def stamp_of(info: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A version stamp from `fs.info()` of the manifest; None when it has nothing that tells versions apart."""
    versions = tuple(f"{key}={info[key]}" for key in _VERSION_KEYS if info.get(key) is not None)
    return (f"size={info.get('size')}", *versions) if versions else None


class ManifestCache:
    """At most `max_entries` parsed manifests by dataset id (least recently used go first), thread-safe."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Hashable, tuple[str, ...], Manifest]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, dataset_id: str, where: Hashable, stamp: tuple[str, ...]) -> Manifest | None:
        """The manifest cached for the dataset if it was read from `where` with this same stamp."""
        with self._lock:
            entry = self._entries.get(dataset_id)
            if entry is None or entry[0] != where or entry[1] != stamp:
                return None
            self._entries.move_to_end(dataset_id)
            return entry[2]

    def put(self, dataset_id: str, where: Hashable, stamp: tuple[str, ...], manifest: Manifest) -> None:
        with self._lock:
            self._entries[dataset_id] = (where, stamp, manifest)
            self._entries.move_to_end(dataset_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, dataset_id: str) -> None:
        """Drop the dataset's entry (its row changed or is gone)."""
        with self._lock:
            self._entries.pop(dataset_id, None)


MANIFESTS = ManifestCache()  # one per process: datasets are the same whichever request opens them
