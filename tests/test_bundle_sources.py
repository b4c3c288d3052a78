"""Where bundles may come from: registries by default, every redirect hop checked, local folders checked before
copying, sha256 pinning, and a download cache that fetches once per URL and stays within its size."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import make_api
from fakes import tiny_bundle_zip
from local_http import http_server

from medcloud.bundles.fetch import BAD_BUNDLE, fetch_bundle
from medcloud.config import Settings
from medcloud.errors import Invalid

SECRET_TOKEN = "tok3n-SECRET-in-query"
SECRET_PASSWORD = "pa55-SECRET-in-userinfo"


def tiny_bundle_folder(path: Path) -> Path:
    (path / "configs").mkdir(parents=True)
    (path / "configs" / "metadata.json").write_text("{}")
    (path / "models").mkdir()
    (path / "models" / "weights.bin").write_bytes(b"w" * 1000)
    return path


def post_experiment(api, bundle_url: str, **extra):  # type: ignore[no-untyped-def]
    return api.post(
        "experiments", json={"name": "b", "network_arch": "monai_custom", "bundle_url": bundle_url, **extra}
    )


def experiments_left(api) -> list[str]:  # type: ignore[no-untyped-def]
    root = api.ctx.settings.data_dir / "experiments"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def downloads_of(settings: Settings) -> list[str]:
    folder = settings.data_dir / "bundles" / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_default_sources_are_registries_and_no_local_paths() -> None:
    settings = Settings()
    assert set(settings.bundle_allowed_hosts) == {"api.ngc.nvidia.com", "files.ngc.nvidia.com", "xfiles.ngc.nvidia.com"}
    assert settings.bundle_allow_local_paths is False
    assert settings.egress_allowed_networks == [] and settings.egress_allow_private is False


@pytest.mark.parametrize("form", ["file", "FILE", "path", "space", "relative"])
def test_local_bundle_paths_are_refused_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    archive = tiny_bundle_zip(tmp_path / "b.zip")
    monkeypatch.chdir(tmp_path)
    url = {
        "file": f"file://{archive}",
        "FILE": f"FILE://{archive}",
        "path": str(archive),
        "space": f" {archive}",
        "relative": "b.zip",
    }[form]
    settings = Settings(data_dir=tmp_path / "data")
    (tmp_path / "exp").mkdir()
    with pytest.raises(Invalid, match="Local bundle paths are not allowed"):
        fetch_bundle(url, tmp_path / "exp" / "bundle", settings.resolved())
    assert not (tmp_path / "exp" / "bundle").exists()


def test_redirect_to_an_address_outside_the_allowed_networks_is_refused(tmp_path: Path) -> None:
    archive = tiny_bundle_zip(tmp_path / "b.zip").read_bytes()
    with (
        http_server("127.0.0.2", files={"/b.zip": archive}) as refused,
        http_server("127.0.0.1", redirects={"/b.zip": f"{refused.url}/b.zip"}) as allowed,
        make_api(
            tmp_path / "data", egress_allowed_networks=["127.0.0.1/32"], bundle_allowed_hosts=["127.0.0.1", "127.0.0.2"]
        ) as api,
    ):
        resp = post_experiment(api, f"{allowed.url}/b.zip")
        assert resp.status_code == 400, resp.text
        assert "resolves to a private, loopback" in resp.json()["error_desc"]
        assert allowed.hits == ["/b.zip"] and refused.hits == []  # the second hop was never requested
        assert experiments_left(api) == []


def test_redirect_to_a_host_outside_the_bundle_hosts_is_refused(tmp_path: Path) -> None:
    archive = tiny_bundle_zip(tmp_path / "b.zip").read_bytes()
    with (
        http_server("127.0.0.2", files={"/b.zip": archive}) as other,
        http_server("127.0.0.1", redirects={"/b.zip": f"{other.url}/b.zip"}) as allowed,
        make_api(tmp_path / "data", bundle_allowed_hosts=["127.0.0.1"]) as api,
    ):
        resp = post_experiment(api, f"{allowed.url}/b.zip")
        assert resp.status_code == 400, resp.text
        assert "'127.0.0.2' is not allowed" in resp.json()["error_desc"]
        assert other.hits == []
        assert experiments_left(api) == []


def test_more_than_five_redirects_are_refused(tmp_path: Path) -> None:
    hops = {f"/{i}": f"/{i + 1}" for i in range(10)}
    with http_server(redirects=hops) as server, make_api(tmp_path / "data") as api:
        resp = post_experiment(api, f"{server.url}/0")
        assert resp.status_code == 400 and resp.json()["error_desc"] == BAD_BUNDLE
        assert len(server.hits) == 6


def test_file_root_is_refused_quickly_without_copying(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    for url in ("file:///", "/"):
        resp = post_experiment(api, url)
        assert resp.status_code == 400 and resp.json()["error_desc"] == BAD_BUNDLE
    assert time.monotonic() - start < 10
    assert experiments_left(api) == []


def test_a_link_out_of_a_bundle_folder_is_refused(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tiny_bundle_folder(tmp_path / "bundle")
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("server secret")
    (folder / "configs" / "leak.txt").symlink_to(secret)
    resp = post_experiment(api, str(folder))
    assert resp.status_code == 400 and resp.json()["error_desc"] == BAD_BUNDLE
    assert experiments_left(api) == []
    (folder / "configs" / "leak.txt").unlink()
    (folder / "configs" / "inside.json").symlink_to(folder / "configs" / "metadata.json")  # inside: copied
    resp = post_experiment(api, f"file://{folder}")
    assert resp.status_code == 201, resp.text
    copied = api.ctx.settings.data_dir / "experiments" / resp.json()["id"] / "bundle" / "configs" / "inside.json"
    assert copied.read_text() == "{}" and not copied.is_symlink()


@pytest.mark.parametrize(("setting", "value"), [("bundle_max_files", 3), ("bundle_max_bytes", 500)])
def test_bundle_folder_over_a_cap_is_refused(tmp_path: Path, setting: str, value: int) -> None:
    folder = tiny_bundle_folder(tmp_path / "bundle")
    with make_api(tmp_path / "data", **{setting: value}) as api:
        resp = post_experiment(api, str(folder))
        assert resp.status_code == 400 and resp.json()["error_desc"] == BAD_BUNDLE
        assert experiments_left(api) == []


def test_sha256_pin_that_matches_is_accepted(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = tiny_bundle_zip(tmp_path / "b.zip").read_bytes()
    digest = hashlib.sha256(archive).hexdigest()
    with http_server(files={"/b.zip": archive}) as server:
        resp = post_experiment(api, f"{server.url}/b.zip", bundle_sha256=digest.upper())
        assert resp.status_code == 201, resp.text
    local = post_experiment(api, str(tmp_path / "b.zip"), bundle_sha256=digest)
    assert local.status_code == 201, local.text


def test_sha256_pin_that_does_not_match_is_400_and_nothing_is_kept(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = tiny_bundle_zip(tmp_path / "b.zip").read_bytes()
    with http_server(files={"/b.zip": archive}) as server:
        resp = post_experiment(api, f"{server.url}/b.zip", bundle_sha256="0" * 64)
        assert resp.status_code == 400, resp.text
        assert "bundle_sha256" in resp.json()["error_desc"]
        assert downloads_of(api.ctx.settings) == []  # neither the archive nor a .part
        # A copy cached by an earlier, unpinned request is dropped when a pin says it is not the bundle.
        assert post_experiment(api, f"{server.url}/b.zip").status_code == 201
        assert len(downloads_of(api.ctx.settings)) == 1
        assert post_experiment(api, f"{server.url}/b.zip", bundle_sha256="1" * 64).status_code == 400
        assert downloads_of(api.ctx.settings) == []
    assert post_experiment(api, str(tmp_path / "b.zip"), bundle_sha256="0" * 64).status_code == 400
    bad = post_experiment(api, f"{server.url}/b.zip", bundle_sha256="not-hex")
    assert bad.status_code == 400 and "bundle_sha256" in bad.json()["error_desc"]
    assert len(experiments_left(api)) == 1  # only the unpinned one


def test_concurrent_fetches_of_one_url_download_once(tmp_path: Path) -> None:
    archive = tiny_bundle_zip(tmp_path / "b.zip").read_bytes()
    settings = Settings(
        data_dir=tmp_path / "data", egress_allowed_networks=["127.0.0.0/8"], bundle_allowed_hosts=["127.0.0.1"]
    ).resolved()
    results: list[object] = []
    with http_server(files={"/b.zip": archive}, delay_s=0.5) as server:

        def fetch(i: int) -> None:
            (tmp_path / f"exp{i}").mkdir()
            try:
                results.append(fetch_bundle(f"{server.url}/b.zip", tmp_path / f"exp{i}" / "bundle", settings))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results.append(exc)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(isinstance(r, Path) and (r / "configs" / "metadata.json").is_file() for r in results), results
    assert server.hits == ["/b.zip"]
    names = downloads_of(settings)
    assert len(names) == 1 and not [n for n in names if n.endswith(".part")]


def test_stale_parts_are_removed_and_the_cache_keeps_within_its_size(tmp_path: Path) -> None:
    archives = {f"/{n}.zip": tiny_bundle_zip(tmp_path / f"{n}.zip", n).read_bytes() for n in ("a", "b", "c")}
    size = max(len(data) for data in archives.values())
    settings = Settings(
        data_dir=tmp_path / "data",
        egress_allowed_networks=["127.0.0.0/8"],
        bundle_allowed_hosts=["127.0.0.1"],
        bundle_cache_max_bytes=2 * size,
    ).resolved()
    downloads = settings.data_dir / "bundles" / "downloads"
    downloads.mkdir(parents=True)
    stale = downloads / ".crashed-download.part"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    with http_server(files=archives) as server:
        for i, name in enumerate(("a", "b", "a", "c")):  # `a` used again: `b` is the least recently used
            (tmp_path / f"e{i}").mkdir()
            fetch_bundle(f"{server.url}/{name}.zip", tmp_path / f"e{i}" / "bundle", settings)
            time.sleep(0.05)  # distinct modification times
    names = downloads_of(settings)
    assert not stale.exists()
    assert sorted(n.split("-", 1)[1] for n in names) == ["a.zip", "c.zip"]


def test_bundle_url_secrets_are_not_returned_logged_or_stored(api, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    archive = tiny_bundle_zip(tmp_path / "b.zip").read_bytes()
    caplog.set_level(logging.DEBUG)
    with http_server(files={"/b.zip": archive}) as server:
        url = server.url.replace("http://", f"http://user:{SECRET_PASSWORD}@") + f"/b.zip?token={SECRET_TOKEN}"
        resp = post_experiment(api, url)
        assert resp.status_code == 201, resp.text
        failed = post_experiment(api, url.replace("/b.zip", "/missing.zip"))  # logged as a rejected bundle
        assert failed.status_code == 400
    exp_id = resp.json()["id"]
    shown = [
        resp.text,
        api.get(f"experiments/{exp_id}").text,
        api.get("experiments", params={"user_only": "true"}).text,
        failed.text,
        caplog.text,
        "\n".join(sqlite3.connect(api.ctx.settings.data_dir / "medcloud.db").iterdump()),
    ]
    for text in shown:
        assert SECRET_TOKEN not in text and SECRET_PASSWORD not in text
    assert resp.json()["bundle_url"].endswith("/b.zip?token=***") and "***@127.0.0.1" in resp.json()["bundle_url"]
