"""The local image cache: single flight, TTL from last access (fake clock), persistence, dataset drop."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from medcloud.errors import Invalid
from medcloud.sources.cache import ImageCache


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def writer(files: dict[str, bytes], calls: list[Path] | None = None) -> Callable[[Path], list[Path]]:
    """A fetch function that writes `files` below the destination and records each call."""

    def fetch(dest: Path) -> list[Path]:
        if calls is not None:
            calls.append(dest)
        out = []
        for rel, data in files.items():
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            out.append(path)
        return out

    return fetch


def contents(paths: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths}


def test_miss_fetches_then_hit_serves_the_same_bytes(tmp_path: Path) -> None:
    cache, calls = ImageCache(tmp_path), []
    data = {"imagesTr/a.nii.gz": os.urandom(2048), "imagesTr/b.nii.gz": os.urandom(10)}
    first = cache.get_or_fetch("ds", "img", writer(data, calls))
    second = cache.get_or_fetch("ds", "img", writer({"x": b"never"}, calls))
    assert len(calls) == 1 and first == second
    assert contents(first) == {"a.nii.gz": data["imagesTr/a.nii.gz"], "b.nii.gz": data["imagesTr/b.nii.gz"]}
    assert all(p.is_relative_to(tmp_path) and p.parent.name == "imagesTr" for p in first)
    assert cache.lookup("ds", "other") is None and cache.lookup("other", "img") is None


def test_single_flight_under_eight_threads(tmp_path: Path) -> None:
    cache, calls = ImageCache(tmp_path), []
    release, started = threading.Event(), threading.Event()
    payload = os.urandom(4096)

    def slow_fetch(dest: Path) -> list[Path]:
        calls.append(dest)
        started.set()
        assert release.wait(10)  # hold the flight open until every thread has asked
        (dest / "img.bin").write_bytes(payload)
        return [dest / "img.bin"]

    results: list[list[Path]] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait(10)
        results.append(cache.get_or_fetch("ds", "img", slow_fetch))

    asked = threading.Semaphore(0)
    real_hit = cache._hit

    def counting_hit(*args: object) -> list[Path] | None:
        asked.release()  # called once per get_or_fetch, under the cache lock, before joining a flight
        return real_hit(*args)

    cache._hit = counting_hit  # type: ignore[method-assign]
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    assert started.wait(10)
    for _ in range(8):  # all 8 asked while the one fetch is still held open: 7 must be followers
        assert asked.acquire(timeout=10)
    with cache._lock:
        inflight = cache._inflight[("ds", "img")]
    release.set()
    for t in threads:
        t.join(10)
    assert inflight.done() and len(calls) == 1 and len(results) == 8
    assert all(r == results[0] and contents(r) == {"img.bin": payload} for r in results)


def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)

    def broken(dest: Path) -> list[Path]:
        raise Invalid("File a.bin listed in the manifest was not found.")

    with pytest.raises(Invalid, match="a.bin"):
        cache.get_or_fetch("ds", "img", broken)
    assert cache.lookup("ds", "img") is None
    assert contents(cache.get_or_fetch("ds", "img", writer({"a.bin": b"ok"}))) == {"a.bin": b"ok"}
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_ttl_counts_from_last_access_and_lookup_touches(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = ImageCache(tmp_path, clock=clock)
    cache.get_or_fetch("ds", "img", writer({"a.bin": b"1"}), ttl_s=60)
    clock.now += 50
    assert cache.lookup("ds", "img") is not None  # touched at +50: lives until +110
    clock.now += 50
    assert cache.sweep() == 0 and cache.lookup("ds", "img") is not None  # touched at +100
    clock.now += 60
    assert cache.sweep() == 1
    assert cache.lookup("ds", "img") is None
    calls: list[Path] = []
    cache.get_or_fetch("ds", "img", writer({"a.bin": b"2"}, calls))
    assert len(calls) == 1


def test_expired_entry_is_refetched_without_a_sweep(tmp_path: Path) -> None:
    clock, calls = FakeClock(), []
    cache = ImageCache(tmp_path, clock=clock)
    cache.get_or_fetch("ds", "img", writer({"a.bin": b"old"}, calls), ttl_s=10)
    clock.now += 10
    paths = cache.get_or_fetch("ds", "img", writer({"a.bin": b"new"}, calls), ttl_s=10)
    assert len(calls) == 2 and contents(paths) == {"a.bin": b"new"}


def test_ttl_is_clamped_and_must_be_positive(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = ImageCache(tmp_path, max_ttl_s=100, clock=clock)
    cache.get_or_fetch("ds", "img", writer({"a.bin": b"1"}), ttl_s=10_000)
    clock.now += 99
    assert cache.sweep() == 0
    clock.now += 101
    assert cache.sweep() == 1
    for bad in (0, -5):
        with pytest.raises(Invalid, match="The ttl must be a positive number of seconds."):
            cache.get_or_fetch("ds", "img", writer({"a.bin": b"1"}), ttl_s=bad)


def test_entries_persist_across_instances(tmp_path: Path) -> None:
    clock = FakeClock()
    data = {"dcm/1.dcm": os.urandom(100), "dcm/2.dcm": os.urandom(100)}
    ImageCache(tmp_path, clock=clock).get_or_fetch("ds", "1.2.840.1", writer(data), ttl_s=30)
    reopened = ImageCache(tmp_path, clock=clock)
    paths = reopened.get_or_fetch("ds", "1.2.840.1", writer({"x": b"must not be called"}))
    assert contents(paths) == {"1.dcm": data["dcm/1.dcm"], "2.dcm": data["dcm/2.dcm"]}
    clock.now += 29  # the hit above touched it and kept its 30 s ttl
    assert ImageCache(tmp_path, clock=clock).sweep() == 0
    clock.now += 30
    assert ImageCache(tmp_path, clock=clock).sweep() == 1


def test_missing_file_in_an_entry_means_a_miss(tmp_path: Path) -> None:
    cache, calls = ImageCache(tmp_path), []
    paths = cache.get_or_fetch("ds", "img", writer({"a.bin": b"1"}, calls))
    paths[0].unlink()
    assert cache.lookup("ds", "img") is None
    assert contents(cache.get_or_fetch("ds", "img", writer({"a.bin": b"2"}, calls))) == {"a.bin": b"2"}


def test_drop_dataset_removes_only_that_dataset(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    gone = cache.get_or_fetch("ds1", "img", writer({"a.bin": b"1"}))
    cache.get_or_fetch("ds2", "img", writer({"a.bin": b"2"}))
    cache.drop_dataset("ds1")
    assert cache.lookup("ds1", "img") is None and not gone[0].exists()
    assert contents(cache.lookup("ds2", "img") or []) == {"a.bin": b"2"}
    assert list((tmp_path / ".trash").iterdir()) == []


def test_drop_during_a_fetch_discards_its_result(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)

    def fetch_then_drop(dest: Path) -> list[Path]:
        (dest / "a.bin").write_bytes(b"1")
        cache.drop_dataset("ds")
        return [dest / "a.bin"]

    with pytest.raises(Invalid, match="was removed"):
        cache.get_or_fetch("ds", "img", fetch_then_drop)
    assert cache.lookup("ds", "img") is None


def test_fetch_returning_paths_outside_its_folder_is_an_error(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a file inside"):
        ImageCache(tmp_path / "cache").get_or_fetch("ds", "img", lambda dest: [outside])
