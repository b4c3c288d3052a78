"""Test doubles for API tests that need no model: a tiny bundle (a folder, or a zip of metadata only), a tiny
dataset, and model hosts that only record."""

from __future__ import annotations

import json
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcloud.inference.hosts import HostSpec, Outputs


def tiny_bundle(folder: Path) -> Path:
    """The least a bundle needs to pass the checks, real-time inference included (never run: hosts are fake)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    (folder / "configs" / "inference.json").write_text(json.dumps({"dataset": {}, "evaluator": {}}))
    return folder


def tiny_bundle_zip(path: Path, name: str = "tiny") -> Path:
    """A bundle with metadata only: enough for an experiment without real-time inference."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/configs/metadata.json", json.dumps({"name": name}))
    return path


def tiny_dataset(folder: Path, images: dict[str, bytes]) -> Path:
    """A local dataset: one file per image id, unlabeled, and its manifest.json."""
    folder.mkdir(parents=True)
    data = []
    for image_id, content in images.items():
        (folder / f"{image_id}.bin").write_bytes(content)
        data.append({"image": {"id": image_id, "path": [f"{image_id}.bin"]}})
    (folder / "manifest.json").write_text(json.dumps({"data": data}))
    return folder


@dataclass
class FakeHosts:
    """Stands in for `ctx.hosts.start/infer`: records the images asked for and answers `outputs` as files."""

    work_dir: Path
    outputs: dict[str, bytes] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)

    async def start(self, spec: HostSpec, timeout: float) -> None:
        return None

    async def infer(self, spec: HostSpec, *, image: str, params: dict[str, Any], **_timeouts: float) -> Outputs:
        self.images.append(Path(image).read_bytes().decode(errors="replace"))
        request = self.work_dir / uuid.uuid4().hex
        self.folders.append(request)
        opened = []
        for name, content in self.outputs.items():
            path = request / "out" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            opened.append((name, path.open("rb")))
        return Outputs(files=opened, folder=request)

    def install(self, ctx: Any) -> FakeHosts:
        ctx.hosts.start = self.start
        ctx.hosts.infer = self.infer
        return self
