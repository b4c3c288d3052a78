"""Preparing an experiment's model (bundle fetch and checks) and serving its real-time inference."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy.orm import Session

from medcloud import egress
from medcloud.archives import ArchiveError, is_archive, safe_extract
from medcloud.config import Settings
from medcloud.context import Context
from medcloud.datasets import actions as dataset_actions
from medcloud.datasets import service as datasets
from medcloud.datasets.orm import Dataset
from medcloud.errors import Invalid
from medcloud.experiments.orm import Experiment
from medcloud.experiments.schemas import ExperimentCreate, InferenceSpecs
from medcloud.families.registry import family_of
from medcloud.inference.hosts import HostSpec
from medcloud.inference.model_input import model_input
from medcloud.sources.base import DataSource

log = logging.getLogger(__name__)
URL_IMAGES = "url-images"  # cache namespace of images given as URLs


def prepare_model(
    ctx: Context, *, body: ExperimentCreate, base_row: Experiment | None, exp_dir: Path
) -> tuple[str, dict[str, str]]:
    """Put the experiment's model in `exp_dir/bundle` as its family does it (blocking); return its folder and labels.

    The folder stays the server's; model code sees it read-only, in its sandbox only.
    """
    family = family_of(body.network_arch)
    bundle_dir, labels = family.prepare(ctx, body=body, base_row=base_row, exp_dir=exp_dir)
    ctx.sandbox.make_readable(Path(bundle_dir))
    return bundle_dir, labels


def host_spec(row: Experiment, settings: Settings) -> HostSpec:
    params = row.model_params or {}
    return HostSpec(
        experiment_id=row.id,
        kind=family_of(row.network_arch).name,
        bundle_dir=row.bundle_dir,
        overrides=params.get("override") or {},
        image_key=params.get("image_key", "image"),
        labels=params.get("labels") or {},
        allow_expression_overrides=settings.allow_expression_overrides,
        replicas=int(params.get("replicas") or 1),
        inference_mode=params.get("inference_mode") or settings.inference_mode,
        check_min_dice=settings.inference_check_min_dice,
        prepare_wait_s=settings.inference_prepare_wait_s,
    )


MAX_INFERENCE_REPORT_BYTES = 16_384


def record_inference(ctx: Context, experiment_id: str, report: object) -> None:
    """Keep the host's inference mode and check on the experiment (blocking), when it changed.

    The report comes from the model host, which runs model code: only a small JSON object is kept.
    """
    if report is None:
        return
    try:
        size = len(json.dumps(report))
    except (TypeError, ValueError):
        size = -1
    if not isinstance(report, dict) or not 0 < size <= MAX_INFERENCE_REPORT_BYTES:
        log.warning(
            "Experiment %s: the model host's inference report was refused (not a small JSON object)", experiment_id
        )
        return
    with ctx.db.session() as session:
        row = session.get(Experiment, experiment_id)
        if row is not None and row.inference != report:
            row.inference = report
            session.commit()


def _download_image(url: str, dest: Path, settings: Settings) -> list[Path]:
    """Download an image URL once, under the egress policy; zip and tar archives are unpacked (a DICOM series)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(unquote(egress.split_url(url, what="image URL").path)).name)[-100:]
    target = dest / (name if name.strip(".") else "image")
    try:
        egress.download(url, target, egress.Policy.from_settings(settings), what="image URL")
    except Invalid as exc:
        raise Invalid(f"Error: {exc.message}") from None
    if is_archive(target):
        unpacked = dest / "unpacked"
        try:
            safe_extract(
                target,
                unpacked,
                max_bytes=settings.archive_max_unpacked_bytes,
                max_members=settings.archive_max_members,
            )
        except ArchiveError as exc:
            raise Invalid(f"Error: {exc}") from None
        target.unlink()
        return sorted(p for p in unpacked.rglob("*") if p.is_file())
    return [target]


def is_url(image: str) -> bool:
    return image.strip().lower().startswith(("http://", "https://"))


def inference_dataset(session: Session, row: Experiment, specs: InferenceSpecs) -> Dataset | None:
    """The dataset an image id names (the experiment owner's: 404 otherwise); None for an image URL."""
    if is_url(specs.image):
        return None
    dataset_id = specs.dataset_id or row.inference_dataset or (row.train_datasets or [None])[0]
    if not dataset_id:
        raise Invalid("Error: the experiment has no inference_dataset or train dataset; pass specs.dataset_id.")
    return datasets.get_row(session, org=row.org, user_id=row.user_id, dataset_id=dataset_id)


def resolve_image(ctx: Context, *, row: Experiment, specs: InferenceSpecs, dataset: Dataset | None) -> str:
    """The local path of the image to infer on (blocking: fetches it unless cached).

    `dataset`: `inference_dataset`'s answer, its ownership checked; the cache is shared by all users,
    keyed by ids any client can send."""
    if dataset is None:
        # per user: a URL one user could fetch (a signed link, say) is never served from cache to another
        key = hashlib.sha256(f"{row.org}\n{row.user_id}\n{specs.image}".encode()).hexdigest()[:32]
        files = ctx.cache.get_or_fetch(URL_IMAGES, key, lambda dest: _download_image(specs.image, dest, ctx.settings))
        # Anyone may name any URL: the cache of URL images is capped, least recently used evicted first.
        ctx.cache.trim(URL_IMAGES, ctx.settings.url_image_cache_max_bytes, keep=key)
        return model_input(files, egress.redact_url(specs.image))

    def open_checked() -> DataSource:
        source = datasets.source_of(dataset, ctx.box, settings=ctx.settings)
        source.check_image(specs.image)
        return source

    files = dataset_actions.fetch_cached(ctx, dataset_id=dataset.id, image_id=specs.image, opener=open_checked)
    return model_input(files, specs.image)
