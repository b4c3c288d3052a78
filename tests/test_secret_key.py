"""The generated master secret: written atomically (complete or absent), private, and never too short."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from medcloud.secrets import load_master_secret


def test_first_start_writes_a_private_key_and_leaves_no_temporary_file(tmp_path):
    key = load_master_secret(tmp_path, None)
    assert len(key) >= 32
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]
    assert load_master_secret(tmp_path, None) == key  # read back, not made again


@pytest.mark.parametrize("content", ["", "\n", "0123456789abcdef"])
def test_an_empty_or_short_key_file_is_refused_with_what_to_do(tmp_path, content):
    (tmp_path / "secret.key").write_text(content)
    with pytest.raises(ValueError) as refused:
        load_master_secret(tmp_path, None)
    message = str(refused.value)
    assert "secret.key" in message and "32 bytes" in message
    assert "backup" in message and "MEDCLOUD_SECRET_KEY" in message and "delete the file" in message
    assert (tmp_path / "secret.key").read_text() == content  # never replaced: stored secrets may depend on it


def test_a_short_configured_secret_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_master_secret(tmp_path, "short")


def test_concurrent_first_starts_in_threads_all_get_the_same_key(tmp_path):
    start = threading.Barrier(16)
    keys: list[bytes] = []

    def first_start() -> None:
        start.wait()
        keys.append(load_master_secret(tmp_path, None))

    threads = [threading.Thread(target=first_start) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(keys) == 16 and len(set(keys)) == 1
    assert keys[0] == (tmp_path / "secret.key").read_text().strip().encode()
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_concurrent_first_starts_in_processes_all_get_the_same_key(tmp_path):
    code = (
        "import sys, pathlib\n"
        "from medcloud.secrets import load_master_secret\n"
        "sys.stdin.read()\n"  # every process waits here until all are started
        "print(load_master_secret(pathlib.Path(sys.argv[1]), None).decode())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    for proc in procs:
        proc.stdin.close()  # type: ignore[union-attr]  # go
    keys = {proc.stdout.read().strip() for proc in procs}  # type: ignore[union-attr]
    assert [proc.wait(60) for proc in procs] == [0] * len(procs)
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "secret.key").st_mode) == 0o600
