"""Label saves under load: a cap per process (503 with Retry-After), and one image's saves serialized across processes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_api
from helpers import wait_for
from tiny_datasets import ct, label_nrrd, put_label, write_dataset

from medcloud.datasets import label_locks

SHAPE = (16, 16, 8)


def stripes(value: int, axis: int) -> np.ndarray:
    """A label whose every other slab along `axis` is `value`: two of them differ in every slab."""
    volume = np.zeros(SHAPE, dtype=np.uint8)
    index = [slice(None)] * 3
    index[axis] = slice(0, None, 2)
    volume[tuple(index)] = value
    return volume


def label_on_disk(root: Path, image_id: str) -> np.ndarray:
    entry = next(e for e in json.loads((root / "manifest.json").read_text())["data"] if e["image"]["id"] == image_id)
    return np.asarray(nib.load(str(root / entry["label"]["path"][0])).dataobj)


def waiters_on(path: Path) -> int:
    """How many `flock`s wait for the lock of `path` (the `->` lines of /proc/locks on its inode)."""
    inode = f":{os.stat(path).st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line)


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """A local dataset of two unlabeled 16 x 16 x 8 CTs, `a` and `b`."""
    return write_dataset(tmp_path / "ds", {"a": ct(1, SHAPE), "b": ct(2, SHAPE)})


def test_concurrent_saves_of_one_image_end_as_one_of_them_whole(tmp_path: Path, local) -> None:  # type: ignore[no-untyped-def]
    root = local
    with make_api(tmp_path / "data", max_label_saves=8) as api:
        dataset_id = api.post("datasets", json={"name": "c", "client_url": str(root)}).json()["id"]
        for round_ in range(3):
            volumes = [stripes(1 + round_, 0), stripes(2 + round_, 1), stripes(3 + round_, 2)]
            answers: list = [None] * len(volumes)
            start = threading.Barrier(len(volumes))

            def save(
                i: int, volumes: list = volumes, answers: list = answers, start: threading.Barrier = start
            ) -> None:
                start.wait()
                answers[i] = put_label(api, dataset_id, "a", label_nrrd(volumes[i]))

            threads = [threading.Thread(target=save, args=(i,)) for i in range(len(volumes))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [a.status_code for a in answers] == [201] * len(volumes), [a.text for a in answers]
            assert len({a.json()["label"] for a in answers}) == 1  # one label id, saved over
            final = label_on_disk(root, "a")
            assert sum(np.array_equal(final, v) for v in volumes) == 1  # exactly one of them, byte for byte
            served = api.get(f"datasets/{dataset_id}/images/a/label")
            assert served.status_code == 200 and served.content.endswith(np.asfortranarray(final).tobytes("F"))


def test_saves_of_one_image_wait_for_another_process_holding_its_lock(tmp_path: Path, local) -> None:  # type: ignore[no-untyped-def]
    root = local
    data_dir = tmp_path / "data"
    with make_api(data_dir) as api:
        dataset_id = api.post("datasets", json={"name": "c", "client_url": str(root)}).json()["id"]
        resolved = api.ctx.settings.data_dir
        holder = subprocess.Popen(  # another API process, in the middle of saving image a
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from medcloud.datasets import label_locks\n"
                "with label_locks.exclusive(Path(sys.argv[1]), sys.argv[2], 'a'):\n"
                "    print('held', flush=True); sys.stdin.read()\n",
                str(resolved),
                dataset_id,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            lock = label_locks.lock_path(resolved, dataset_id, "a")
            answers: list = []
            ours = stripes(7, 1)
            saving = threading.Thread(target=lambda: answers.append(put_label(api, dataset_id, "a", label_nrrd(ours))))
            saving.start()
            wait_for(lambda: waiters_on(lock) == 1, timeout=30, what="the save to wait for the other process's lock")
            assert saving.is_alive() and not answers
            assert "label" not in json.loads((root / "manifest.json").read_text())["data"][0]  # nothing written yet
            # another image of the same dataset is not held up
            other = put_label(api, dataset_id, "b", label_nrrd(stripes(2, 0)))
            assert other.status_code == 201, other.text
        finally:
            holder.communicate(timeout=30)  # closing its stdin releases the lock
        saving.join(timeout=60)
        assert answers and answers[0].status_code == 201, answers
        assert np.array_equal(label_on_disk(root, "a"), ours)


def test_past_the_cap_a_save_gets_503_with_retry_after_and_changes_nothing(tmp_path: Path, local) -> None:  # type: ignore[no-untyped-def]
    root = local
    with make_api(tmp_path / "data", max_label_saves=1) as api:
        dataset_id = api.post("datasets", json={"name": "c", "client_url": str(root)}).json()["id"]
        lock = label_locks.lock_path(api.ctx.settings.data_dir, dataset_id, "a")
        answers: list = []
        first = stripes(1, 0)
        saving = threading.Thread(target=lambda: answers.append(put_label(api, dataset_id, "a", label_nrrd(first))))
        with label_locks.exclusive(api.ctx.settings.data_dir, dataset_id, "a"):  # this thread holds image a
            saving.start()
            wait_for(lambda: waiters_on(lock) == 1, timeout=30, what="the first save to wait for the lock")
            manifest = (root / "manifest.json").read_bytes()
            busy = put_label(api, dataset_id, "b", label_nrrd(stripes(2, 0)))
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"] == str(label_locks.RETRY_AFTER_S)
            assert "MEDCLOUD_MAX_LABEL_SAVES" in busy.json()["error_desc"]
            assert (root / "manifest.json").read_bytes() == manifest
            assert not list((root / "images").glob("*_label*"))
        saving.join(timeout=60)
        assert answers and answers[0].status_code == 201, answers
        assert np.array_equal(label_on_disk(root, "a"), first)
        # the slot is given back, after a failure too
        assert put_label(api, dataset_id, "b", b"not an nrrd").status_code == 400
        again = put_label(api, dataset_id, "b", label_nrrd(stripes(2, 0)))
        assert again.status_code == 201, again.text


def test_a_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from medcloud.datasets import label_locks\n"
            "with label_locks.exclusive(Path(sys.argv[1]), 'd', 'i'):\n"
            "    print('held', flush=True); sys.stdin.read()\n",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    path = label_locks.lock_path(tmp_path, "d", "i")
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # held by the other process
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.kill()
        holder.wait(timeout=30)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel dropped the dead holder's lock
    finally:
        os.close(fd)
    stdout = holder.stdout
    stdout.close()
    assert holder.stdin is not None
    holder.stdin.close()
