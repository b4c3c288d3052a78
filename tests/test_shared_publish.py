"""Publishing bundles and checkpoints into the Ray shared folder: regular files only, once per content."""

from __future__ import annotations

import os

from medcloud.config import Settings
from medcloud.execution.shared import node_path, publish


def test_a_bundle_is_copied_once_without_following_links(tmp_path):
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"master secret")
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text('{"a": 1}')
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    os.symlink(secret, bundle / "models" / "leak.pt")  # left by model code, which owns the folder
    os.symlink(tmp_path, bundle / "up")
    first = publish(bundle, tmp_path / "shared" / "bundles" / "exp")
    published = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert published == ["configs/inference.json", "models/model.pt"]
    assert (first / "models" / "model.pt").read_bytes() == b"weights"
    assert not any(p.is_symlink() for p in first.rglob("*"))
    assert publish(bundle, tmp_path / "shared" / "bundles" / "exp") == first  # same content: same copy
    (bundle / "models" / "model.pt").write_bytes(b"trained weights")
    second = publish(bundle, tmp_path / "shared" / "bundles" / "exp")
    assert second != first and (second / "models" / "model.pt").read_bytes() == b"trained weights"
    assert not list((tmp_path / "shared" / "bundles" / "exp").glob(".*"))  # no staging folder left


def test_node_path_is_the_path_itself_on_the_local_backend_else_a_shared_copy(tmp_path):
    checkpoint = tmp_path / "jobs" / "j1" / "model.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"ckpt")
    assert node_path(Settings(data_dir=tmp_path), checkpoint, kind="checkpoints", key="j1") == checkpoint
    shared = tmp_path / "shared"
    ray = Settings(data_dir=tmp_path, ray_address="127.0.0.1:1", ray_shared_dir=shared)
    copy = node_path(ray, checkpoint, kind="checkpoints", key="j1")
    assert copy.name == "model.pt" and copy.parent.parent == shared / "checkpoints" / "j1"
    assert copy.read_bytes() == b"ckpt"
    assert node_path(ray, copy, kind="checkpoints", key="j1") == copy  # already shared: used as it is
