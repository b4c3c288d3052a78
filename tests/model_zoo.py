"""Model-zoo bundles for tests: the official configs with random weights, zipped in the official archive layout
and served from a bundle mirror (`MEDCLOUD_BUNDLE_MIRROR`) under their official URL's file name.

The configs are read from `../shared/reference/model-zoo/<name>/` (the MONAI model zoo's own files); a newcomer's
clone has no `../shared`, so tests using them skip, saying so (`requires_model_zoo`).
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_ZOO = REPO.parent / "shared" / "reference" / "model-zoo"
NO_MODEL_ZOO = f"the model zoo's bundle configs are read from {MODEL_ZOO}, which this checkout does not have (../shared/reference/model-zoo)"
requires_model_zoo = pytest.mark.skipif(not MODEL_ZOO.is_dir(), reason=NO_MODEL_ZOO)

# The official download URLs the hosted service's notebooks use.
SPLEEN_CT_SEGMENTATION_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/spleen_ct_segmentation/versions/0.5.3/files/"
    "spleen_ct_segmentation_v0.5.3.zip"
)


def official_file_name(url: str) -> str:
    """The file name a bundle mirror keeps an official bundle URL's archive under (what medcloud looks up)."""
    return Path(unquote(urlsplit(url).path)).name


def zoo_bundle_folder(name: str, dest: Path, *, seed: int = 0, config: str = "configs/train.json") -> Path:
    """`dest/<name>/`: the model zoo bundle's files (configs, LICENSE, docs) plus `models/model.pt` of random weights.

    The weights are the state dict of the bundle's own `network_def` (from `config`), initialised by torch with
    `seed`: the real network and checkpoint format, none of the large download.
    """
    import torch
    from monai.bundle import ConfigParser

    source = MODEL_ZOO / name
    if not source.is_dir():
        pytest.skip(NO_MODEL_ZOO if not MODEL_ZOO.is_dir() else f"{source} is missing")
    folder = dest / name
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("large_files.yml", "models"))
    parser = ConfigParser()
    parser.read_config(str(folder / config))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def", instantiate=True)
    (folder / "models").mkdir()
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def zip_official_layout(folder: Path, archive: Path) -> Path:
    """Zip `folder` as the model zoo's archives are laid out: every member under `<bundle name>/`."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return archive


def mirror_zoo_bundle(name: str, url: str, mirror: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Put the zoo bundle `name` (random weights) in `mirror` under `url`'s file name; return (archive, folder).

    The folder (the unzipped bundle, with the same weights) stays next to the mirror, for reference runs.
    """
    work = Path(tempfile.mkdtemp(prefix=f"zoo-{name}-", dir=mirror.parent))
    folder = zoo_bundle_folder(name, work, seed=seed)
    return zip_official_layout(folder, mirror / official_file_name(url)), folder


@contextlib.contextmanager
def mirror_server(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a URL-prefix bundle mirror); yield its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
