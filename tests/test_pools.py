"""Slow blocking work (bundle downloads) runs in bounded pools: it never delays auth, listing or health."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import Api, make_api
from helpers import wait_for

from medcloud.bundles.fetch import BAD_BUNDLE
from medcloud.config import Settings
from medcloud.errors import Unavailable
from medcloud.pools import Pools

SLOW = 50
BUNDLE_THREADS = 4


@dataclass
class HangingServer:
    """An HTTP server whose every answer waits until `release` is set: `body` (200) when given, else 404."""

    url: str
    release: threading.Event
    seen: list[str] = field(default_factory=list)
    body: bytes | None = None


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    release = threading.Event()
    state = HangingServer(url="", release=release)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook
            state.seen.append(self.path)
            release.wait(60)
            if state.body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def _tiny_bundle() -> bytes:
    """A zip holding the least a bundle needs when it is not served in real time."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("tiny/configs/metadata.json", json.dumps({"version": "0.1"}))
    return out.getvalue()


def _slow_api(data_dir: Path, **settings: object):  # type: ignore[no-untyped-def]
    # Loopback bundle URLs must pass the bundle host list and the egress policy.
    return make_api(
        data_dir,
        bundle_allowed_hosts=["127.0.0.1"],
        egress_allow_private=True,
        pool_bundle_threads=BUNDLE_THREADS,
        **settings,
    )


def _create(api: Api, url: str):  # type: ignore[no-untyped-def]
    return api.post("experiments", json={"name": "slow", "network_arch": "monai_custom", "bundle_url": url})


def _timed(call):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    resp = call()
    return resp, time.monotonic() - start


def _queued(api: Api) -> int:
    return api.ctx.pools.executor("bundle")._work_queue.qsize()  # type: ignore[attr-defined]


def test_fifty_hung_bundle_downloads_leave_auth_listing_and_health_fast(tmp_path, hanging):
    with _slow_api(tmp_path / "data") as api, ThreadPoolExecutor(SLOW) as clients:
        slow = [clients.submit(_create, api, f"{hanging.url}/bundle{i}.zip") for i in range(SLOW)]
        # Every slow request is inside the server: as many downloads hang as the bundle pool has threads,
        # the others wait in its queue.
        wait_for(lambda: len(hanging.seen) == BUNDLE_THREADS and _queued(api) == SLOW - BUNDLE_THREADS, 30, "queue")

        listing, listing_s = _timed(lambda: api.get("datasets"))
        login, login_s = _timed(lambda: api.client.post("/api/v1/login", json={"ngc_api_key": api.keys["bob"]}))
        health, health_s = _timed(lambda: api.client.get("/api/v1/health/liveness"))
        experiments, experiments_s = _timed(lambda: api.get("experiments", user="eve", org="other"))
        assert listing.status_code == 200 and listing_s < 2, (listing.text, listing_s)
        assert login.status_code == 201 and login_s < 2, (login.text, login_s)
        assert health.status_code == 200 and health_s < 2, health_s
        assert experiments.status_code == 200 and experiments_s < 2, experiments_s
        assert not any(f.done() for f in slow)  # the slow ones were really still waiting

        hanging.release.set()
        answers = [f.result(timeout=120) for f in slow]
    assert [a.status_code for a in answers] == [400] * SLOW
    assert {a.json()["error_desc"] for a in answers} == {BAD_BUNDLE}
    assert len(hanging.seen) == SLOW
    assert not list((tmp_path / "data" / "experiments").glob("*"))  # nothing half-made is left


def test_downloads_past_the_deadline_answer_503_and_leave_nothing(tmp_path, hanging):
    hanging.body = _tiny_bundle()  # once released, the downloads succeed: nobody waits for them then
    with _slow_api(tmp_path / "data", pool_bundle_deadline_s=1.0) as api, ThreadPoolExecutor(6) as clients:
        slow = [clients.submit(_create, api, f"{hanging.url}/late{i}.zip") for i in range(6)]
        answers = [f.result(timeout=30) for f in slow]  # running and queued ones alike: the deadline counts both
        assert [a.status_code for a in answers] == [503] * 6
        assert all("took longer than 1 s" in a.json()["error_desc"] for a in answers)
        assert len(hanging.seen) == BUNDLE_THREADS  # the queued two never started
        hanging.release.set()
        # The abandoned downloads end; nothing of theirs is left, and the pool works again.
        wait_for(lambda: _queued(api) == 0, 30, "the pool to drain")
        wait_for(lambda: not list((api.ctx.settings.data_dir / "experiments").glob("*")), 30, "leftovers removed")
        again = _create(api, f"{hanging.url}/after.zip")
        assert again.status_code == 201, again.text
        assert [p.name for p in (api.ctx.settings.data_dir / "experiments").glob("*")] == [again.json()["id"]]


def test_work_past_its_deadline_is_undone_when_it_ends_and_queued_work_never_runs(tmp_path):
    pools = Pools(Settings(data_dir=tmp_path, pool_bundle_threads=1, pool_bundle_deadline_s=0.3))
    release, undone = threading.Event(), threading.Event()
    made, started = tmp_path / "made", []

    def slow() -> str:
        started.append("slow")
        release.wait(30)
        made.write_text("left behind")
        return "too late"

    def queued() -> None:
        started.append("queued")

    def undo() -> None:
        made.unlink()
        undone.set()

    async def requests() -> list[BaseException | object]:
        return await asyncio.gather(
            pools.run_abandoning("bundle", undo, slow), pools.run("bundle", queued), return_exceptions=True
        )

    try:
        results = asyncio.run(requests())
        assert [type(r) for r in results] == [Unavailable, Unavailable]
        release.set()
        assert undone.wait(30)
        assert not made.exists()
        assert started == ["slow"]
    finally:
        release.set()
        pools.shutdown()
