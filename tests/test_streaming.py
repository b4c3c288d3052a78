"""Logs, result downloads and inference outputs are streamed (never whole in memory); manifests are read once."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import FakeHosts, tiny_bundle, tiny_dataset
from helpers import multipart_parts, wait_for
from requests_toolbelt.multipart.encoder import MultipartEncoder
from sqlalchemy import update

from medcloud.experiments.orm import Experiment
from medcloud.jobs import files
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.sources import objectstore
from medcloud.sources.manifest_cache import MANIFESTS


@dataclass
class Reply:
    """What a raw ASGI call answered: the body's chunks are counted and hashed, and kept only when asked."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    size: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)
    body: bytearray | None = None


def asgi_get(app: Any, path: str, headers: dict[str, str], *, keep: bool = False) -> Reply:
    """GET `path` straight through the ASGI app: no client buffers the body, so memory is the server's alone."""
    reply = Reply(body=bytearray() if keep else None)

    async def call() -> None:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client never goes away
            return {}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                reply.status = message["status"]
                reply.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            elif message["type"] == "http.response.body" and message.get("body"):
                reply.chunks += 1
                reply.size += len(message["body"])
                reply.sha256.update(message["body"])
                if reply.body is not None:
                    reply.body += message["body"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)

    asyncio.run(call())
    return reply


def _experiment_with_job(api: Any, status: str = "Done") -> tuple[str, str]:
    """An experiment of alice's (no bundle) with one job in `status`, written straight to the database."""
    alice = api.client.post("/api/v1/login", json={"ngc_api_key": api.keys["alice"]}).json()["user_id"]
    with api.ctx.db.session() as session:
        exp = Experiment(org="acme", user_id=alice, name="e", network_arch="monai_custom")
        session.add(exp)
        session.flush()
        job = jobs.create(session, org="acme", user_id=alice, experiment_id=exp.id, action="annotation", specs={})
        session.execute(update(Job).where(Job.id == job.id).values(status=status))
        return exp.id, job.id


def _log_bytes(size: int) -> bytes:
    """Log lines as jobs write them: CRLF, progress bars' lone CR, non-ASCII text and a few bytes that are not UTF-8."""
    block = "epoch 3/10 loss=0.1234 dice=0.87 naïve ✓\r\n".encode() + b"progress 42%\r" + b"bad \xff\xfe byte\n"
    return (block * (size // len(block) + 1))[:size]


def test_a_50_mb_log_streams_in_chunks_with_bounded_memory_and_unchanged_bytes(api, tmp_path):
    eid, jid = _experiment_with_job(api)
    log = files.job_dir(api.ctx.settings.data_dir, jid) / files.LOG
    log.parent.mkdir(parents=True)
    log.write_bytes(_log_bytes(50 * 1024**2))
    # What the route always answered: the text read whole (bad bytes replaced, newlines made \n), as UTF-8.
    expected = log.read_text(encoding="utf-8", errors="replace").encode()
    expected_sha, expected_size = hashlib.sha256(expected).hexdigest(), len(expected)
    del expected

    path = f"/api/v1/orgs/acme/experiments/{eid}/jobs/{jid}/logs"
    tracemalloc.start()
    try:
        reply = asgi_get(api.client.app, path, api.headers("alice"))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert (reply.sha256.hexdigest(), reply.size) == (expected_sha, expected_size)
    assert reply.chunks >= 40
    assert peak < 16 * 1024**2, f"peak {peak / 1024**2:.1f} MiB while streaming a 50 MiB log"


def test_logs_before_the_job_starts_or_without_a_file_are_400(api):
    for status in ("Pending", "Running"):
        eid, jid = _experiment_with_job(api, status)
        resp = api.get(f"experiments/{eid}/jobs/{jid}/logs")
        assert resp.status_code == 400
        assert resp.json()["error_desc"] == "Logs for the job are not available yet."


def test_a_log_planted_as_a_link_is_not_followed(api):
    eid, jid = _experiment_with_job(api)
    folder = files.job_dir(api.ctx.settings.data_dir, jid)
    folder.mkdir(parents=True)
    (folder / files.LOG).symlink_to(api.ctx.settings.data_dir / "secret.key")
    resp = api.get(f"experiments/{eid}/jobs/{jid}/logs")
    assert resp.status_code == 400
    assert api.ctx.settings.data_dir.joinpath("secret.key").read_text() not in resp.text


def test_the_results_download_streams_a_tar_gz_with_every_file(api):
    eid, jid = _experiment_with_job(api)
    folder = files.job_dir(api.ctx.settings.data_dir, jid)
    (folder / files.RESULTS / "models").mkdir(parents=True)
    model = os.urandom(3 * 1024**2)  # incompressible: the archive is several chunks long
    (folder / files.RESULTS / "models" / "model.pt").write_bytes(model)
    (folder / files.RESULTS / "metrics.json").write_text('{"dice": 0.9}')
    (folder / files.LOG).write_text("trained\n")

    reply = asgi_get(
        api.client.app, f"/api/v1/orgs/acme/experiments/{eid}/jobs/{jid}:download", api.headers(), keep=True
    )
    assert reply.status == 200 and reply.chunks > 1
    assert reply.headers["content-type"] == "application/gzip"
    assert reply.headers["content-disposition"] == f'attachment; filename="{jid}.tar.gz"'
    assert int(reply.headers["content-length"]) == reply.size
    with tarfile.open(fileobj=io.BytesIO(bytes(reply.body or b"")), mode="r:gz") as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert names == [f"{jid}/logs.txt", f"{jid}/results/metrics.json", f"{jid}/results/models/model.pt"]
        assert tar.extractfile(f"{jid}/results/models/model.pt").read() == model  # type: ignore[union-attr]
        assert tar.extractfile(f"{jid}/logs.txt").read() == b"trained\n"  # type: ignore[union-attr]
    assert (
        api.client.get(api.url(f"experiments/{eid}/jobs/{jid}:download"), headers=api.headers("bob")).status_code == 404
    )


@pytest.fixture
def realtime_experiment(tmp_path):  # type: ignore[no-untyped-def]
    """A real-time experiment of alice's on a tiny dataset, its model hosts faked."""
    from conftest import make_api

    with make_api(tmp_path / "data", bundle_allow_local_paths=True) as api:
        root = tiny_dataset(tmp_path / "dataset", {"scan": b"a scan"})
        body = {"name": "d", "type": "semantic_segmentation", "format": "monai", "client_url": str(root)}
        dataset = api.post("datasets", json=body).json()["id"]
        body = {
            "name": "rt",
            "network_arch": "monai_custom",
            "train_datasets": [dataset],
            "realtime_infer": True,
            "bundle_url": str(tiny_bundle(tmp_path / "bundle")),
        }
        hosts = FakeHosts(tmp_path / "requests").install(api.ctx)
        exp = api.post("experiments", json=body)
        assert exp.status_code == 201, exp.text
        yield api, hosts, exp.json()["id"]


def test_inference_outputs_stream_as_the_exact_multipart_bytes_of_before(realtime_experiment):
    api, hosts, exp_id = realtime_experiment
    hosts.outputs = {"scan_seg.nrrd": os.urandom(3 * 1024**2 + 7), "report/scores.csv": b"label,score\n1,0.9\n"}

    resp = api.post(f"experiments/{exp_id}/jobs", json={"action": "inference", "specs": {"image": "scan"}})
    assert resp.status_code == 201, resp.text
    content_type = resp.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    boundary = content_type.split("boundary=", 1)[1]
    before = MultipartEncoder(fields=list(hosts.outputs.items()), boundary=boundary)  # what was sent whole
    assert resp.content == before.to_string()
    assert resp.headers["content-length"] == str(len(resp.content))
    assert multipart_parts(resp) == hosts.outputs
    # The request's output folder is removed once sent.
    wait_for(lambda: not any(folder.exists() for folder in hosts.folders), 10, "output folders removed")


def test_inference_outputs_are_sent_in_chunks(realtime_experiment):
    api, hosts, exp_id = realtime_experiment
    hosts.outputs = {"scan_seg.nrrd": os.urandom(3 * 1024**2)}

    async def post() -> list[int]:
        sizes: list[int] = []
        body = b'{"action": "inference", "specs": {"image": "scan"}}'
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()
            return {}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                sizes.append(len(message["body"]))

        headers = [(b"authorization", api.headers()["Authorization"].encode()), (b"content-type", b"application/json")]
        path = f"/api/v1/orgs/acme/experiments/{exp_id}/jobs"
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http"}
        scope |= {"path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers}
        await api.client.app(scope | {"client": ("127.0.0.1", 1), "server": ("testserver", 80)}, receive, send)
        return sizes

    sizes = asyncio.run(post())
    assert len(sizes) >= 3 and max(sizes) <= 1024**2


def test_a_manifest_is_read_once_for_many_requests_and_again_after_it_changes(api, tmp_path, monkeypatch):
    reads: list[str] = []
    real_read = objectstore._read_manifest

    def counting(fs, location):  # type: ignore[no-untyped-def]
        reads.append(location.manifest_path)
        return real_read(fs, location)

    root = tiny_dataset(tmp_path / "dataset", {f"img{i}": b"x" for i in range(3)})
    body = {"name": "d", "type": "semantic_segmentation", "format": "monai", "client_url": str(root)}
    dataset = api.post("datasets", json=body).json()["id"]
    monkeypatch.setattr(objectstore, "_read_manifest", counting)

    def nextimage() -> str:
        resp = api.post(f"datasets/{dataset}/jobs", json={"action": "nextimage"})
        assert resp.status_code == 201, resp.text
        return resp.json()["image"]

    served = {nextimage() for _ in range(6)}
    assert served == {"img0", "img1", "img2"}
    assert len(reads) == 1

    manifest = root / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"img2"', '"img9"').replace("img2.bin", "img0.bin"))
    assert {nextimage() for _ in range(3)} == {"img0", "img1", "img9"}
    assert len(reads) == 2  # changed on disk: read again, once

    assert api.patch(f"datasets/{dataset}", json={"description": "renamed"}).status_code == 200
    nextimage()
    assert len(reads) == 3  # a PATCH starts afresh

    assert dataset in MANIFESTS._entries
    assert api.delete(f"datasets/{dataset}").status_code == 200
    assert dataset not in MANIFESTS._entries
