"""Byte caps on DICOMweb answers (a real Orthanc, and a server that lies about sizes) and the image cache's quota."""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import make_api
from dicom_data import store_ct
from tiny_datasets import ct, write_dataset

from medcloud.sources import capped_http
from medcloud.sources.cache import ImageCache

CAP = 100_000  # between the small series (about 15 KB from Orthanc) and the large one (about 300 KB)


def int16_voxels(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The voxels of an int16 raw NRRD answer, first axis fastest."""
    assert b"type: int16" in data[: data.index(b"\n\n")]
    count = int(np.prod(shape))
    return np.frombuffer(data[-2 * count :], dtype="<i2").reshape(shape, order="F")


def dicom_dataset(api, orthanc) -> str:  # type: ignore[no-untyped-def]
    body = {"name": "pacs", "client_url": orthanc.url, "client_id": orthanc.user, "client_secret": orthanc.password}
    resp = api.post("datasets", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def cache_files(api) -> list[Path]:  # type: ignore[no-untyped-def]
    return [p for p in (api.ctx.settings.data_dir / "cache").rglob("*") if p.is_file()]


def test_a_series_over_the_cap_is_refused_and_leaves_no_file(tmp_path: Path, empty_orthanc) -> None:  # type: ignore[no-untyped-def]
    small = store_ct(empty_orthanc, seed=21, shape=(16, 16, 8))
    large = store_ct(empty_orthanc, seed=22, shape=(64, 64, 32))
    with make_api(tmp_path / "data", wado_max_bytes=CAP) as api:
        dataset_id = dicom_dataset(api, empty_orthanc)
        resp = api.get(f"datasets/{dataset_id}/images/{large.uid}/volume")
        assert resp.status_code == 400, resp.text
        message = resp.json()["error_desc"]
        assert f"Series {large.uid}" in message and "100,000 bytes, MEDCLOUD_WADO_MAX_BYTES" in message
        assert api.ctx.cache.lookup(dataset_id, large.uid) is None
        assert cache_files(api) == []  # no instance of it left anywhere, not even in the fetch folder
        # under the cap the series is served, voxel for voxel
        ok = api.get(f"datasets/{dataset_id}/images/{small.uid}/volume")
        assert ok.status_code == 200, ok.text
        assert np.array_equal(int16_voxels(ok.content, small.hu.shape), small.hu)


class _Liar(BaseHTTPRequestHandler):
    """Answers `body` at any path: `/chunked` without a length, `/gzip` compressed (Content-Length of the
    compressed bytes), `/declared` with its true length."""

    body = b""
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        payload = gzip.compress(self.body) if self.path == "/gzip" else self.body
        if self.path == "/gzip":
            self.send_header("Content-Encoding", "gzip")
        if self.path != "/chunked":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for start in range(0, len(payload), 4096):
                self.wfile.write(payload[start : start + 4096])

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def liar(body: bytes) -> Iterator[str]:
    handler = type("Handler", (_Liar,), {"body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", ["/chunked", "/gzip", "/declared"])
def test_every_answer_is_capped_however_it_is_sent_or_read(path: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    with liar(body) as url, requests.Session() as session:
        capped_http.mount(session, 64 * 1024)
        with pytest.raises(capped_http.AnswerTooLarge, match="65,536 bytes, MEDCLOUD_WADO_MAX_BYTES"):
            session.get(url + path, timeout=10).content  # noqa: B018 - reading the body is the point
        with pytest.raises(capped_http.AnswerTooLarge):
            for _chunk in session.get(url + path, stream=True, timeout=10).iter_content(8192):
                pass
        capped_http.mount(session, len(body))  # exactly the cap: read whole
        assert session.get(url + path, timeout=10).content == body


def writer(size: int, marker: int):  # type: ignore[no-untyped-def]
    def fetch(dest: Path) -> list[Path]:
        path = dest / "image.nii.gz"
        path.write_bytes(bytes([marker]) * size)
        return [path]

    return fetch


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_the_cache_stays_under_its_quota_least_recently_used_first(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, max_bytes=3500, clock=Clock())
    for n in range(6):
        cache.get_or_fetch("ds", f"img{n}", writer(1000, n))
        assert cache.usage() <= 3500
        newest = cache.lookup("ds", f"img{n}")
        assert newest is not None and newest[0].read_bytes() == bytes([n]) * 1000
        if n == 2:
            assert cache.lookup("ds", "img0") is not None  # used again: now the most recent but one
    kept = {f"img{n}" for n in range(6) if cache.lookup("ds", f"img{n}") is not None}
    assert kept == {"img3", "img4", "img5"}, kept
    other = cache.get_or_fetch("other", "big", writer(5000, 9))  # alone over the quota: kept, the rest goes
    assert other[0].read_bytes() == bytes([9]) * 5000
    assert [cache.lookup("ds", f"img{n}") for n in range(6)] == [None] * 6
    assert cache.usage() == 5000


def test_a_lowered_quota_is_applied_by_the_sweep_to_entries_of_before(tmp_path: Path) -> None:
    clock = Clock()
    before = ImageCache(tmp_path, clock=clock)  # no quota
    for n in range(4):
        before.get_or_fetch("ds", f"img{n}", writer(1000, n))
    index = next(tmp_path.glob("*/*/entry.json"))
    index.write_text(index.read_text().replace('"bytes": 1000', '"old": 1'))  # an entry of an older version
    after = ImageCache(tmp_path, max_bytes=2000, clock=clock)
    assert after.usage() == 4000
    after.sweep()
    assert after.usage() <= 2000
    assert after.lookup("ds", "img3") is not None and after.lookup("ds", "img0") is None


def test_the_servers_cache_keeps_its_quota_and_serves_the_newest(tmp_path: Path) -> None:
    images = {f"i{n}": ct(n, (32, 32, 16)) for n in range(5)}
    root = write_dataset(tmp_path / "ds", images)
    size = (root / "images" / "i0.nii.gz").stat().st_size
    with make_api(tmp_path / "data", image_cache_max_bytes=int(size * 2.5)) as api:
        dataset_id = api.post("datasets", json={"name": "q", "client_url": str(root)}).json()["id"]
        for image_id, array in images.items():
            resp = api.get(f"datasets/{dataset_id}/images/{image_id}/volume")
            assert resp.status_code == 200 and np.array_equal(int16_voxels(resp.content, array.shape), array)
            assert api.ctx.cache.usage() <= size * 2.5
            assert api.ctx.cache.lookup(dataset_id, image_id) is not None
        assert api.ctx.cache.lookup(dataset_id, "i0") is None
