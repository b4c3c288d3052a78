"""`medcloud datasets upload` to real Azurite and moto S3: bytes equal, resumable, a dataset made from it, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from builders import REPO, make_dataset_folder, server_image_ids
from services import AZURITE_ACCOUNT, AzuriteInfo, MotoInfo, s3_client

from medcloud.client.manifest import build_manifest
from medcloud.client.upload import Credentials, UploadInputError, upload_folder
from medcloud.client.upload_progress import LineProgress

pytest_plugins = ["services"]  # the session fixture `gcs_server`


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: no storage variables of this machine, a private cache (the resume state)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_", "GOOGLE_"))}
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def _cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medcloud.cli", "datasets", "upload", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def _s3_env(tmp_path: Path, s3: MotoInfo) -> dict[str, str]:
    return _env(tmp_path, AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret, AWS_ENDPOINT_URL=s3.endpoint_url)


def _s3_objects(s3: MotoInfo, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3_client(s3)
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        for o in page.get("Contents", [])
    ]
    return {k[len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _azure_blobs(azurite: AzuriteInfo, container: str, prefix: str) -> dict[str, bytes]:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    return {
        b.name[len(prefix) + 1 :]: client.download_blob(b.name).readall()
        for b in client.list_blobs(name_starts_with=prefix + "/")
    }


def _local(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_dataset_serves(api, body: dict, manifest: dict) -> None:  # noqa: ANN001
    """A dataset created from `body` lists exactly the manifest's images and reads its DICOM series."""
    resp = api.post("datasets", json={"name": "uploaded", **body})
    assert resp.status_code == 201, resp.text
    dataset_id = resp.json()["id"]
    assert server_image_ids(api, dataset_id) == {e["image"]["id"] for e in manifest["data"]}
    ct1 = next(e["image"]["id"] for e in manifest["data"] if e["image"]["path"][0].startswith("imagesTr/ct1/"))
    volume = api.get(f"datasets/{dataset_id}/images/{ct1}/volume")
    assert volume.status_code == 200, volume.text
    assert b"sizes: 16 16 6" in volume.content[:400]


def test_upload_to_s3_gives_equal_bytes_and_a_dataset_the_server_reads(
    tmp_path: Path, s3_server: MotoInfo, api
) -> None:  # noqa: ANN001
    folder = make_dataset_folder(tmp_path / "ds")
    manifest = build_manifest(folder)
    bucket = f"up-{uuid.uuid4().hex[:8]}"  # does not exist yet: the upload creates it
    result = _cli([str(folder), f"s3://{bucket}/spleen", "--json"], _s3_env(tmp_path, s3_server))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["uploaded"][-1] == "manifest.json" and report["skipped"] == []
    assert _s3_objects(s3_server, bucket, "spleen") == _local(folder)
    assert s3_server.secret not in result.stdout + result.stderr

    _assert_dataset_serves(
        api,
        {
            "client_url": f"{s3_server.endpoint_url}/{bucket}/spleen",
            "client_id": s3_server.key,
            "client_secret": s3_server.secret,
        },
        manifest,
    )


def test_upload_to_azurite_and_a_second_run_skips_everything(tmp_path: Path, azurite: AzuriteInfo, api) -> None:  # noqa: ANN001
    folder = make_dataset_folder(tmp_path / "ds")
    manifest = build_manifest(folder)
    container = f"up{uuid.uuid4().hex[:8]}"
    env = _env(tmp_path, AZURE_STORAGE_ACCOUNT=AZURITE_ACCOUNT, AZURE_STORAGE_KEY=azurite.key)
    args = [str(folder), f"az://{container}/study", "--endpoint-url", azurite.endpoint]
    first = _cli(args, env)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()  # not a terminal: one plain line per file, manifest last
    assert lines[0].startswith(f"{len(_local(folder))} files")
    assert lines[-1].startswith(f"[{len(_local(folder))}/{len(_local(folder))}] uploaded manifest.json")
    assert _azure_blobs(azurite, container, "study") == _local(folder)
    assert azurite.key not in first.stdout + first.stderr

    (tmp_path / "cache").rename(tmp_path / "cache-gone")  # no state file: sizes and Content-MD5 decide alone
    second = _cli([*args, "--json"], env)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["uploaded"] == [] and sorted(report["skipped"]) == sorted(_local(folder))

    _assert_dataset_serves(
        api,
        {
            "client_url": f"{azurite.endpoint}/{container}/study",
            "client_id": AZURITE_ACCOUNT,
            "client_secret": azurite.key,
        },
        manifest,
    )


class _StopAfter(LineProgress):
    """Plain-line progress that presses Ctrl-C after `n` files were uploaded."""

    def __init__(self, n: int) -> None:
        super().__init__(out=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
        self.n, self.uploaded = n, 0

    def file_done(self, rel: str, size: int, *, skipped: bool) -> None:
        super().file_done(rel, size, skipped=skipped)
        self.uploaded += not skipped
        if self.uploaded == self.n:
            raise KeyboardInterrupt


def test_an_interrupted_upload_resumes_with_only_the_missing_files(
    tmp_path: Path, s3_server: MotoInfo, monkeypatch
) -> None:  # noqa: ANN001
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = make_dataset_folder(tmp_path / "ds")
    build_manifest(folder)
    local = _local(folder)
    bucket = f"resume-{uuid.uuid4().hex[:8]}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    credentials = Credentials(key_id=s3_server.key, secret=s3_server.secret, endpoint_url=s3_server.endpoint_url)
    with pytest.raises(KeyboardInterrupt):
        upload_folder(folder, f"s3://{bucket}/ds", credentials=credentials, progress=_StopAfter(4))
    there = _s3_objects(s3_server, bucket, "ds")
    assert len(there) == 4 and "manifest.json" not in there  # the manifest goes last
    assert all(local[name] == data for name, data in there.items())  # no half file under a real name

    report = upload_folder(folder, f"s3://{bucket}/ds", credentials=credentials)
    assert sorted(report.skipped) == sorted(there)
    assert sorted(report.uploaded) == sorted(set(local) - set(there))
    assert report.uploaded[-1] == "manifest.json"
    assert _s3_objects(s3_server, bucket, "ds") == local


def test_a_killed_cli_upload_resumes_and_completes(tmp_path: Path, azurite: AzuriteInfo) -> None:
    folder = make_dataset_folder(tmp_path / "ds")
    for k in range(30):  # enough files that the kill lands before the end
        (folder / "photos" / f"extra{k:02d}.png").write_bytes((folder / "photos" / "p2.png").read_bytes() + bytes([k]))
    build_manifest(folder)
    local = _local(folder)
    container = f"kill{uuid.uuid4().hex[:8]}"
    env = _env(tmp_path, AZURE_STORAGE_ACCOUNT=AZURITE_ACCOUNT, AZURE_STORAGE_KEY=azurite.key)
    args = [str(folder), f"az://{container}/ds", "--endpoint-url", azurite.endpoint]
    proc = subprocess.Popen(
        [sys.executable, "-m", "medcloud.cli", "datasets", "upload", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        uploaded = 0
        for line in proc.stderr:
            uploaded += " uploaded " in line
            if uploaded == 3:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert uploaded == 3, "the upload ended before three files were uploaded"
    before = _azure_blobs(azurite, container, "ds")
    assert all(local[name] == data for name, data in before.items())  # whatever is there is whole

    result = _cli([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["uploaded"]) == sorted(set(local) - set(before))
    assert sorted(report["skipped"]) == sorted(before)
    assert _azure_blobs(azurite, container, "ds") == local


def test_a_wrong_key_exits_3_with_a_clear_message_and_never_shows_the_key(tmp_path: Path, azurite: AzuriteInfo) -> None:
    folder = make_dataset_folder(tmp_path / "ds")
    build_manifest(folder)
    wrong = "B" * 86 + "=="
    env = _env(tmp_path, AZURE_STORAGE_ACCOUNT=AZURITE_ACCOUNT, WRONG_KEY=wrong)
    for how in (["--secret", wrong], ["--secret-env", "WRONG_KEY"]):
        result = _cli([str(folder), "az://nope/ds", "--endpoint-url", azurite.endpoint, *how], env)
        assert result.returncode == 3, result.stderr
        assert result.stderr.strip() == "error: The storage credentials were rejected by az://nope/ds."
        assert wrong not in result.stdout + result.stderr


def test_a_terminal_gets_a_progress_bar(tmp_path: Path, s3_server: MotoInfo) -> None:
    import pty

    folder = make_dataset_folder(tmp_path / "ds")
    build_manifest(folder)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "medcloud.cli", "datasets", "upload", str(folder), "s3://bar/ds"],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            cwd=REPO,
            env=_s3_env(tmp_path, s3_server),
            timeout=180,
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0
    text = shown.decode()
    assert "\r[" in text and "100% 22/22 files" in text and "[" + "#" * 24 + "]" in text
    assert "uploaded imagesTr" not in text  # no plain lines on a terminal
    assert proc.stdout.startswith("Uploaded 22 files")


def test_an_unreachable_store_exits_3(tmp_path: Path, s3_server: MotoInfo) -> None:
    from services import free_port

    folder = make_dataset_folder(tmp_path / "ds")
    build_manifest(folder)
    env = {**_s3_env(tmp_path, s3_server), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    result = _cli([str(folder), "s3://b/ds"], env)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: Could not reach s3://b/ds")
    assert s3_server.secret not in result.stderr


def test_bad_input_exits_1(tmp_path: Path, s3_server: MotoInfo) -> None:
    folder = make_dataset_folder(tmp_path / "ds")
    env = _s3_env(tmp_path, s3_server)
    no_manifest = _cli([str(folder), "s3://b/ds"], env)
    assert no_manifest.returncode == 1
    assert "No manifest.json in" in no_manifest.stderr and "build-manifest" in no_manifest.stderr

    build_manifest(folder)
    (folder / "imagesTr" / "b.nii.gz").unlink()
    missing = _cli([str(folder), "s3://b/ds"], env)
    assert missing.returncode == 1 and "imagesTr/b.nii.gz, listed in manifest.json, is not in" in missing.stderr

    with pytest.raises(UploadInputError, match="not 'ftp://x/y'"):
        upload_folder(folder, "ftp://x/y")


def test_upload_to_a_gcs_emulator_with_a_service_account_key(tmp_path: Path, gcs_server) -> None:  # noqa: ANN001
    folder = make_dataset_folder(tmp_path / "ds")
    build_manifest(folder)
    key_file = tmp_path / "sa.json"
    key_file.write_text(gcs_server.service_account_key("medcloud-uploader@medcloud-test.iam.gserviceaccount.com"))
    bucket = f"gcs-{uuid.uuid4().hex[:8]}"
    gcs_server.create_bucket(bucket)
    credentials = Credentials(key_file=key_file, endpoint_url=gcs_server.endpoint)
    report = upload_folder(folder, f"gs://{bucket}/ds", credentials=credentials)
    local = _local(folder)
    assert report.uploaded[-1] == "manifest.json" and sorted(report.uploaded) == sorted(local)
    assert sorted(gcs_server.names(bucket, "ds/")) == sorted(f"ds/{name}" for name in local)
    assert all(gcs_server.read(bucket, f"ds/{name}") == data for name, data in local.items())
    again = upload_folder(folder, f"gs://{bucket}/ds", credentials=credentials)
    assert again.uploaded == [] and sorted(again.skipped) == sorted(local)
