"""The small DeepEdit bundle (official layout) served by DeepEditPredictor: real network, real files, voxels checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch

from medcloud.errors import Invalid
from medcloud.families.deepedit.demo import LABEL_NAMES, SPATIAL_SIZE, DeepEditVolume, deepedit_ct_volume
from medcloud.families.deepedit.predictor import DeepEditPredictor
from medcloud.families.deepedit.prompts import MAX_POINTS_PER_LABEL, parse_clicks

HELD_OUT = (1, 2, 3, 4)  # seeds the demo never trains on


@pytest.fixture(scope="module")
def predictor(deepedit_bundle: Path) -> DeepEditPredictor:
    loaded = DeepEditPredictor(deepedit_bundle, dict(LABEL_NAMES))
    loaded.load()
    return loaded


def _segment(predictor: DeepEditPredictor, image: Path, params: dict, out: Path) -> tuple[np.ndarray, dict]:
    files = predictor.predict(str(image), params, out)
    assert [f.name for f in files] == [image.name.removesuffix(".nii.gz") + "_seg.nrrd"]
    mask, header = nrrd.read(str(files[0]), index_order="F")
    return mask, header


def _fraction(mask: np.ndarray, volume: DeepEditVolume, blob: int) -> float:
    return float((mask[volume.components == blob] == 1).mean())


def test_bundle_keeps_the_official_layout_with_a_smaller_dynunet(deepedit_bundle: Path) -> None:
    for name in ("inference.json", "train.json", "evaluate.json", "metadata.json", "logging.conf"):
        assert (deepedit_bundle / "configs" / name).is_file()
    assert (deepedit_bundle / "scripts" / "transforms.py").is_file()
    assert (deepedit_bundle / "models" / "model.pt").is_file()
    for name in ("inference.json", "train.json"):
        config = json.loads((deepedit_bundle / "configs" / name).read_text())
        assert config["label_names"] == {"spleen": 1, "background": 0}
        assert config["spatial_size"] == SPATIAL_SIZE
        assert config["network_def"]["_target_"] == "DynUNet"
        assert config["network_def"]["in_channels"] == "$len(@label_names) + @number_intensity_ch"
        assert config["network_def"]["out_channels"] == "$len(@label_names)"
    inference = json.loads((deepedit_bundle / "configs" / "inference.json").read_text())
    targets = [t["_target_"] for t in inference["deepedit_transforms"]]
    assert targets[:2] == [
        "scripts.transforms.OrientationGuidanceMultipleLabelDeepEditd",
        "AddGuidanceFromPointsDeepEditd",
    ]


def test_automatic_mode_segments_the_spleen_blobs_of_held_out_volumes(
    predictor: DeepEditPredictor, tmp_path: Path
) -> None:
    dices = []
    for seed in HELD_OUT:
        volume = deepedit_ct_volume(seed)
        image = volume.save(tmp_path / f"ct{seed}.nii.gz")
        mask, header = _segment(predictor, image, {}, tmp_path / f"out{seed}")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert header["encoding"] == "raw"
        affine = nib.load(str(image)).affine
        assert mask.shape == volume.image.shape
        np.testing.assert_allclose(header["space directions"], affine[:3, :3].T, atol=1e-4)
        np.testing.assert_allclose(header["space origin"], affine[:3, 3], atol=1e-4)
        truth = volume.label == 1
        dices.append(2 * (truth & (mask == 1)).sum() / (truth.sum() + (mask == 1).sum()))
        for blob in volume.ambiguous:
            assert _fraction(mask, volume, blob) < 0.3, "auto mode leaves the ambiguous blobs out"
    assert np.mean(dices) >= 0.7, dices


def test_a_spleen_click_adds_the_ambiguous_blob_under_it(predictor: DeepEditPredictor, tmp_path: Path) -> None:
    volume = deepedit_ct_volume(11, organs=1, ambiguous=2)
    image = volume.save(tmp_path / "ct.nii.gz")
    clicked, other = volume.ambiguous
    before, _ = _segment(predictor, image, {}, tmp_path / "auto")
    after, _ = _segment(predictor, image, {"spleen": [volume.inside(clicked)]}, tmp_path / "click")
    size = int((volume.components == clicked).sum())
    gained = int((after[volume.components == clicked] == 1).sum() - (before[volume.components == clicked] == 1).sum())
    assert _fraction(before, volume, clicked) < 0.3
    assert gained >= size // 2, (gained, size)
    assert _fraction(after, volume, volume.organs[0]) > 0.6, "the spleen stays"
    assert _fraction(after, volume, other) < 0.3, "the other ambiguous blob was not clicked"


def test_a_background_click_removes_the_blob_under_it(predictor: DeepEditPredictor, tmp_path: Path) -> None:
    volume = deepedit_ct_volume(12, organs=2, ambiguous=1)
    image = volume.save(tmp_path / "ct.nii.gz")
    kept, clicked = volume.organs
    before, _ = _segment(predictor, image, {}, tmp_path / "auto")
    after, _ = _segment(predictor, image, {"background": [volume.inside(clicked)]}, tmp_path / "click")
    assert _fraction(before, volume, clicked) > 0.6, "auto mode segments it (wrongly, says the annotator)"
    assert _fraction(after, volume, clicked) < 0.3
    assert _fraction(after, volume, kept) > 0.6, "the other spleen blob stays"


def test_clicks_in_another_voxel_order_follow_the_image(predictor: DeepEditPredictor, tmp_path: Path) -> None:
    """A RAS-stored image (no flips): the bundle's OrientationGuidance maps the click to the same blob."""
    volume = deepedit_ct_volume(13, organs=1, ambiguous=1)
    volume.affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image = volume.save(tmp_path / "ras.nii.gz")
    blob = volume.ambiguous[0]
    after, _ = _segment(predictor, image, {"spleen": [volume.inside(blob)]}, tmp_path / "click")
    assert _fraction(after, volume, blob) > 0.5


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"liver": [[1, 2, 3]]}, "not a label"),
        ({"spleen": [[1, 2]]}, "3 integers"),
        ({"spleen": [[1.5, 2, 3]]}, "3 integers"),
        ({"spleen": [[True, 2, 3]]}, "3 integers"),
        ({"spleen": [["1", 2, 3]]}, "3 integers"),
        ({"spleen": [[1, 2, 40]]}, "outside the image"),
        ({"background": [[-1, 2, 3]]}, "outside the image"),
        ({"spleen": [[1, 2, 3]] * (MAX_POINTS_PER_LABEL + 1)}, "at most"),
        ({"spleen": "$__import__('os').system('true')"}, "list of"),
        ({"$spleen": [[1, 2, 3]]}, "not a label"),
    ],
)
def test_wrong_clicks_are_refused_with_a_sentence(params: dict, words: str) -> None:
    with pytest.raises(Invalid, match=words):
        parse_clicks(params, LABEL_NAMES, (48, 48, 40))


def test_clicks_are_checked_against_the_image_before_the_model(predictor: DeepEditPredictor, tmp_path: Path) -> None:
    image = deepedit_ct_volume(14).save(tmp_path / "ct.nii.gz")
    with pytest.raises(Invalid, match="outside the image"):
        predictor.predict(str(image), {"spleen": [[48, 0, 0]]}, tmp_path / "out")
    with pytest.raises(Invalid, match="not a label"):
        predictor.predict(str(image), {"kidney": [[4, 4, 4]]}, tmp_path / "out")
    assert parse_clicks({"spleen": [[47, 47, 39]], "background": []}, LABEL_NAMES, None) == {
        "spleen": [[47, 47, 39]],
        "background": [],
    }


def test_swap_weights_changes_the_answer(predictor: DeepEditPredictor, deepedit_bundle: Path, tmp_path: Path) -> None:
    volume = deepedit_ct_volume(15)
    image = volume.save(tmp_path / "ct.nii.gz")
    trained, _ = _segment(predictor, image, {}, tmp_path / "trained")
    state = torch.load(deepedit_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    torch.save({"model": {k: torch.zeros_like(v) for k, v in state.items()}}, tmp_path / "zeros.pt")
    try:
        predictor.swap_weights(tmp_path / "zeros.pt")
        zeroed, _ = _segment(predictor, image, {}, tmp_path / "zeroed")
        assert (zeroed == 1).sum() != (trained == 1).sum()
    finally:
        predictor.swap_weights(deepedit_bundle / "models" / "model.pt")
    again, _ = _segment(predictor, image, {}, tmp_path / "again")
    np.testing.assert_array_equal(again, trained)


def test_the_official_train_json_trains_through_the_bundle_train_path(deepedit_bundle: Path, tmp_path: Path) -> None:
    """`run_bundle_train` (ConfigWorkflow on configs/train.json, DeepEdit's simulated clicks), bundle root importable."""
    import shutil

    from medcloud.families.deepedit.predictor import bundle_scripts_importable
    from medcloud.jobs.spec import JobSpec
    from medcloud.modelrun.train import run_bundle_train

    bundle = Path(shutil.copytree(deepedit_bundle, tmp_path / "bundle"))
    items = []
    for seed in (21, 22, 23):
        volume = deepedit_ct_volume(seed)
        image = volume.save(tmp_path / f"ct{seed}.nii.gz", tmp_path / f"label{seed}.nii.gz")
        items.append({"image": str(image), "label": str(tmp_path / f"label{seed}.nii.gz")})
    saved_path, saved_modules = list(sys.path), {k: v for k, v in sys.modules.items() if k.split(".")[0] == "scripts"}
    bundle_scripts_importable(bundle)  # train.json has "$import scripts" and "$scripts.score_function"
    spec = JobSpec(
        job_id="j1",
        action="train",
        experiment_id="e1",
        network_arch="monai_annotation",
        bundle_dir=str(bundle),
        specs={"epochs": 2, "finetune": True, "val_at_start": True},
        labels={"1": "spleen"},
        train_items=items[:2],
        val_items=items[2:],
    )
    try:
        result = run_bundle_train(spec, tmp_path / "job")
    finally:
        sys.path[:] = saved_path
        for name in [k for k in sys.modules if k.split(".")[0] == "scripts"]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
    assert result["max_epoch"] == 2
    assert 0.0 < result["start_key_metric"] <= result["key_metric"] <= 1.0
    assert (tmp_path / "job" / "results" / "models" / "model.pt").is_file()
