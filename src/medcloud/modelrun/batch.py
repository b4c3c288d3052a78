"""The `batchinfer` job: the experiment's model (or a train job's) over every image of its inference dataset.

Runs in the job's model process: the images were fetched and linked into the job folder by the trusted
worker (`worker/staging.py`); images it could not fetch arrive as `spec.failed`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medcloud.bundles.overrides import check_params, expressions_allowed
from medcloud.errors import Invalid
from medcloud.families.registry import family_of
from medcloud.inference.host import build_predictor, inference_report
from medcloud.inference.model_input import model_input
from medcloud.inference.nrrd_writer import nrrd_to_nifti
from medcloud.jobs import files
from medcloud.jobs.spec import JobSpec
from medcloud.modelrun.progress import ProgressReporter
from medcloud.paths import child_path

log = logging.getLogger(__name__)


def run_batchinfer(spec: JobSpec, job_dir: Path) -> dict[str, Any]:
    # The API refused hostile bundle_params before storing the job; a job stored earlier is refused here.
    params = check_params(
        spec.specs.get("bundle_params") or {}, "specs.bundle_params", allow_expressions=expressions_allowed(spec.host)
    )
    family = family_of(spec.network_arch)
    predictor = build_predictor(spec.host)
    predictor.load()
    if spec.weights:
        predictor.swap_weights(Path(spec.weights))
    reporter = ProgressReporter(job_dir, max_epoch=1)
    # The family's folder: VISTA-3D's is where the service's notebooks read (vista3d_segmentation_v*/eval).
    predictions = child_path(job_dir / files.RESULTS, *Path(family.batch_folder()).parts, what="batch folder")
    failed = dict(spec.failed)
    total = len(spec.images) + len(failed)
    for index, image in enumerate(spec.images, start=1):
        try:
            local = sorted(p for p in Path(image["path"]).rglob("*") if p.is_file())
            out_dir = child_path(predictions, image["dir"], what="image folder")  # never outside predictions/
            outputs = predictor.predict(model_input(local, image["id"]), params, out_dir)
            if family.batch_output_ext == ".nii.gz":
                for output in outputs:
                    if output.name.endswith(".nrrd"):
                        nrrd_to_nifti(output)
        except Exception as exc:  # one unreadable image must not lose the others' results
            log.error("Image %s failed: %s", image["id"], exc)
            failed[image["id"]] = f"{type(exc).__name__}: {exc}"[:500]
        reporter.update(cur_iter=index)
    reporter.update(epoch=1)
    if total and len(failed) == total:
        raise Invalid(f"Batch inference failed on every image; first error: {next(iter(failed.values()))}")
    result = {"images": total - len(failed), "failed": failed, "epoch": -1, "key_metric": -1}
    report = inference_report(predictor)
    return {**result, "inference": report} if report else result
