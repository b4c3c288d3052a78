"""`prepare_demo`: the demo org, user and key, a local demo dataset and demo bundles, ready for guide 000.

`with_demo_models` gives the server the small demo VISTA-3D and DeepEdit unless the operator configured
them; `with_demo_local_paths` lets the demo org use its own demo folder as local datasets; the annotation demo (datasets, experiment, job) is made once the server runs (`medcloud.demo.annotation.serve_annotation_demo`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TextIO

from sqlalchemy import select

from medcloud.auth import service as auth
from medcloud.config import Settings
from medcloud.context import Context
from medcloud.datasets import service as datasets
from medcloud.datasets.orm import Dataset
from medcloud.datasets.schemas import DatasetCreate
from medcloud.sources.manifest import parse_manifest

DEMO_DATASET = "demo-dataset"


def demo_key(ctx: Context) -> str:
    """The demo key, created once and kept (mode 0600) beside the database so it can be shown again."""
    path = ctx.settings.data_dir / "demo-api-key.txt"
    if path.exists():
        return path.read_text().strip()
    with ctx.db.session() as session:
        key = auth.create_api_key(session, org=ctx.settings.demo_org, user=ctx.settings.demo_user)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def _demo_dataset(ctx: Context, user_id: str, root: Path) -> tuple[str, dict[str, str]]:
    """Register the demo dataset for the demo user (once); return its id and an image id per bundle kind."""
    from medcloud.demo.synthetic import write_demo_dataset

    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        manifest_path = write_demo_dataset(root)
    manifest = parse_manifest(manifest_path.read_bytes(), source=str(manifest_path))
    image_ids = {
        "segmentation": next(i.id for i in manifest.images if i.paths[0].endswith(".nii.gz")),
        "classification": next(i.id for i in manifest.images if i.paths[0].endswith(".png")),
    }
    with ctx.db.session() as session:
        row = session.scalar(select(Dataset).where(Dataset.user_id == user_id, Dataset.name == DEMO_DATASET))
        if row is None:
            body = DatasetCreate(
                name=DEMO_DATASET, description="Synthetic CT and RGB images made by medcloud", client_url=str(root)
            )
            out = datasets.create(
                session, org=ctx.settings.demo_org, user_id=user_id, body=body, kind="objectstore", box=ctx.box
            )
            return out.id, image_ids
        return row.id, image_ids


def with_demo_models(settings: Settings, out: TextIO | None = None) -> Settings:
    """`settings` with the small demo VISTA-3D and DeepEdit (built once under data/demo/bundles) where the
    operator configured none; `out` is told when one is trained (minutes the first time)."""
    update = {}
    folder = settings.data_dir / "demo" / "bundles"
    out = out or io.StringIO()
    if not settings.vista3d_bundle:
        from medcloud.families.vista3d.demo import ensure_demo_vista3d

        print("medcloud demo: preparing the small VISTA-3D (trained once on synthetic CT, then cached)…", file=out)
        update["vista3d_bundle"] = str(ensure_demo_vista3d(folder))
    if not settings.deepedit_bundle:
        from medcloud.families.deepedit.demo import ensure_demo_deepedit

        print("medcloud demo: preparing the small DeepEdit (trained once on synthetic CT, then cached)…", file=out)
        update["deepedit_bundle"] = str(ensure_demo_deepedit(folder))
    return settings.model_copy(update=update) if update else settings


def with_demo_local_paths(settings: Settings) -> Settings:
    """`settings` with local dataset paths on for the demo org, inside the demo's own folder (`data/demo`,
    where its datasets are written) besides any root the operator listed; other orgs get no more than the
    operator gave them. An operator who set `MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS` keeps their choice."""
    allow = settings.dataset_allow_local_paths if "dataset_allow_local_paths" in settings.model_fields_set else True
    demo_root = str((settings.data_dir.expanduser() / "demo").resolve())
    roots = dict(settings.dataset_local_roots)
    roots[settings.demo_org] = list(dict.fromkeys([*roots.get(settings.demo_org, []), demo_root]))
    return settings.model_copy(update={"dataset_allow_local_paths": allow, "dataset_local_roots": roots})


def prepare_demo(ctx: Context, out: TextIO) -> None:
    """Create what guide 000 needs and print how to use it."""
    from medcloud.demo.bundles import ensure_demo_bundles, pack_bundle

    demo_dir = ctx.settings.data_dir / "demo"
    print("medcloud demo: preparing demo bundles (trained once on synthetic data, then cached)…", file=out, flush=True)
    folders = ensure_demo_bundles(demo_dir / "bundles")
    zips = {}
    for kind, folder in folders.items():
        target = demo_dir / "bundles" / f"{folder.name}.zip"
        zips[kind] = target if target.exists() else pack_bundle(folder, demo_dir / "bundles", "zip")
    key = demo_key(ctx)
    with ctx.db.session() as session:
        user_id, _token = auth.login(session, api_key=key, signing_key=ctx.signing_key, ttl_s=60)
    dataset_id, image_ids = _demo_dataset(ctx, user_id, demo_dir / "dataset")
    base = f"http://{ctx.settings.host}:{ctx.settings.port}"
    if not ctx.settings.bundle_allow_local_paths:
        # The demo bundles are local files: this server refuses them unless the operator allows local paths.
        print(
            "Note: local bundle paths are off on this server: start it with MEDCLOUD_BUNDLE_ALLOW_LOCAL_PATHS=true "
            "(scripts/serve.sh does) to use the bundle_url values below.",
            file=out,
        )
    if not ctx.settings.dataset_allow_local_paths:
        print(
            "Note: local dataset paths are off on this server (MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS=false): "
            "the container_url below and the annotation demo's datasets will be refused.",
            file=out,
        )
    print(
        "\nmedcloud demo is ready. In guide 000 set:\n"
        f'  host_url = "{base}"\n'
        f'  ngc_api_key = "{key}"\n'
        f'  base_url = f"{{host_url}}/api/v1/orgs/{ctx.settings.demo_org}"\n'
        f'  container_url = "{demo_dir / "dataset"}"   # demo dataset (already registered: {dataset_id})\n'
        '  access_id = access_secret = ""   # a local folder needs no credentials\n'
        f'  bundle_url = "file://{zips["classification"]}"\n'
        f'  inference_image_id = "{image_ids["classification"]}"   # an RGB frame for the classification bundle\n'
        f"or, for the 3D segmentation bundle:\n"
        f'  bundle_url = "file://{zips["segmentation"]}"\n'
        f'  inference_image_id = "{image_ids["segmentation"]}"   # a CT volume\n'
        f"\nAnnotation viewer: {base}/viewer  (sign in with the demo API key below, org {ctx.settings.demo_org}).\n"
        "  Once the server runs it prepares the CT dataset demo-ct, the real-time VISTA-3D experiment\n"
        "  demo-vista3d and its annotation job: each label you save trains a round (about a minute).\n"
        "The demo API key is:",
        file=out,
    )
    print(key, file=out, flush=True)
