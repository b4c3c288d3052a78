"""VISTA-3D: a small trained bundle served by Vista3dPredictor; geometry, prompts, clicks, cache and bundle fetch."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch

from medcloud.bundles.configured import ensure_configured_bundle
from medcloud.config import Settings
from medcloud.demo.synthetic import ct_affine, synthetic_ct_arrays
from medcloud.errors import Invalid
from medcloud.families.vista3d.cache import plan_windows
from medcloud.families.vista3d.family import CONFIGURED
from medcloud.families.vista3d.predictor import Vista3dPredictor
from medcloud.families.vista3d.prompts import EVERYTHING, SUBCLASSES, parse_prompt
from medcloud.families.vista3d.transforms import PreprocessSettings, map_points, prepare, to_original_grid
from medcloud.imaging.series import read_series, write_nifti
from medcloud.imaging.synthetic_dicom import series_bytes, write_ct_series


@pytest.fixture(scope="module")
def predictor(vista_bundle: Path) -> Vista3dPredictor:
    p = Vista3dPredictor(vista_bundle)
    p.load()
    return p


def write_ct(path: Path, seed: int, affine: np.ndarray | None = None, **kw: object) -> tuple[Path, np.ndarray]:
    """A held-out synthetic CT (seeds below the demo's training seeds) and its 0/1 truth on the same grid."""
    image, label = synthetic_ct_arrays(seed=seed, **kw)  # type: ignore[arg-type]
    nib.save(nib.Nifti1Image(image, ct_affine() if affine is None else affine), str(path))
    return path, label.astype(bool)


def read_raw_nrrd(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """What the OHIF plugin does: the last N bytes are the voxels, first axis fastest."""
    n = int(np.prod(shape))
    return np.frombuffer(path.read_bytes()[-n:], dtype=np.uint8).reshape(shape, order="F")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def centre(mask: np.ndarray) -> list[int]:
    return np.argwhere(mask).mean(0).round().astype(int).tolist()


def oblique_affine() -> np.ndarray:
    """Axes permuted and flipped, 1 x 0.8 x 2.5 mm, rotated 20 degrees about the scanner's z axis."""
    permuted = np.array([[0, 0, -2.5], [-1.0, 0, 0], [0, 0.8, 0]])
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ permuted
    affine[:3, 3] = (30.0, -12.0, 80.0)
    return affine


# ---------------------------------------------------------------- geometry without the network


@pytest.mark.parametrize("affine", [ct_affine(), oblique_affine()], ids=["lps-like", "oblique"])
def test_points_and_labels_map_between_original_and_preprocessed_grids(tmp_path: Path, affine: np.ndarray) -> None:
    shape = (48, 56, 40)
    image = np.full(shape, -500.0, np.float32)
    mark = (21, 33, 22)
    image[mark[0] - 7 : mark[0] + 8, mark[1] - 7 : mark[1] + 8, mark[2] - 7 : mark[2] + 8] = 800.0
    image[5:9, 5:9, 5:9] = 300.0  # a second object so the foreground crop is not just the mark
    path = tmp_path / "mark.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    prepared = prepare(path, PreprocessSettings())
    assert prepared.original_shape == shape
    mapped = map_points([mark], prepared.to_prepared)[0]
    bright = prepared.tensor[0] > 0.8
    found = np.argwhere(bright.numpy()).mean(0)
    assert np.abs(found - mapped).max() < 1.0, (found, mapped)
    half_way = prepared.tensor[0] > 0.55  # between the windowed -500 HU (0.23) and 800 HU (0.87)
    back = to_original_grid(half_way.to(torch.uint8) * 7, prepared.to_prepared, shape)
    assert back.shape == shape
    assert dice(back == 7, image == 800.0) > 0.9
    assert back[mark] == 7


def test_window_plan_shares_windows_between_nearby_clicks() -> None:
    roi, shape = (32, 32, 32), (80, 80, 80)
    first = plan_windows(np.array([[40.0, 40, 40]]), roi, shape)
    both = plan_windows(np.array([[40.0, 40, 40], [45.0, 37, 42]]), roi, shape)
    far = plan_windows(np.array([[40.0, 40, 40], [70.0, 40, 40]]), roi, shape)
    assert first == both == [(slice(24, 56), slice(24, 56), slice(24, 56))]
    assert far == [first[0], (slice(48, 80), slice(24, 56), slice(24, 56))]


# ---------------------------------------------------------------- prompt rules


def test_prompt_rules_of_the_official_bundle() -> None:
    assert parse_prompt({}).classes == EVERYTHING
    assert parse_prompt({"label_prompt": list(range(1, 133))}).classes == EVERYTHING
    assert 2 not in EVERYTHING and 16 not in EVERYTHING and 14 in EVERYTHING and 132 not in EVERYTHING
    assert parse_prompt({"label_prompt": [2, 3]}).classes == (14, 5, 3)
    assert parse_prompt({"label_prompt": [21]}).classes == SUBCLASSES[21]
    zero_shot = parse_prompt({"label_prompt": [200], "points": [[1, 2, 3]], "point_labels": [1]})
    assert zero_shot.classes == (200,) and zero_shot.point_labels == (1,)
    special = parse_prompt({"label_prompt": [25], "points": [[1, 2, 3], [4, 5, 6]], "point_labels": [1, 0]})
    assert special.point_labels == (3, 2)
    assert parse_prompt({"points": [[1, 2, 3]], "point_labels": [1]}).classes is None
    assert parse_prompt({"label_prompt": ["Spleen"]}, predictor_rules()).classes == (3,)


def predictor_rules():  # type: ignore[no-untyped-def]
    from medcloud.families.vista3d.prompts import PromptRules

    return PromptRules(names={3: "spleen"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"label_prompt": [3, 4], "points": [[1, 2, 3]], "point_labels": [1]},
            "With points, label_prompt must name exactly one class; got 2 ([3, 4]).",
        ),
        (
            {"label_prompt": [3], "points": [[1, 2, 3]]},
            "points need point_labels: one label per point (1 foreground, 0 background).",
        ),
        (
            {"label_prompt": [3], "points": [[1, 2, 3], [4, 5, 6]], "point_labels": [1]},
            "points and point_labels must have the same length: 2 points, 1 labels.",
        ),
        ({"label_prompt": [0]}, "label_prompt has an unknown class 0"),
        ({"label_prompt": [255]}, "label_prompt has an unknown class 255"),
        ({"label_prompt": ["3.5"]}, "label_prompt has an unknown class '3.5'"),
        ({"label_prompt": [200]}, "Class 200 is zero-shot (classes 133 to 254): it needs points"),
        ({"label_prompt": [16]}, "Class 16 (prostate or uterus) has no automatic segmentation in VISTA-3D"),
        (
            {"label_prompt": [2], "points": [[1, 2, 3]], "point_labels": [1]},
            "Class 2 (kidney) stands for several classes (14, 5); with points, give exactly one of them.",
        ),
        ({"label_prompt": [3], "points": [[1, 2, 3]], "point_labels": [5]}, "point_labels must be 0 or 1"),
        ({"point_labels": [1]}, "point_labels were given without points"),
        ({"label_prompt": [3], "points": [[1, 2]], "point_labels": [1]}, "Point 1 must be [x, y, z] voxel indices"),
    ],
)
def test_prompt_rule_violations_are_invalid(
    predictor: Vista3dPredictor, tmp_path: Path, params: dict, message: str
) -> None:
    image, _ = write_ct(tmp_path / "ct.nii.gz", seed=21)
    with pytest.raises(Invalid) as info:
        predictor.predict(str(image), params, tmp_path / "out")
    assert message in info.value.message
    assert not (tmp_path / "out" / "ct_seg.nrrd").exists()


def test_point_outside_the_image_names_it_and_the_shape(predictor: Vista3dPredictor, tmp_path: Path) -> None:
    image, _ = write_ct(tmp_path / "ct.nii.gz", seed=21)
    with pytest.raises(Invalid) as info:
        predictor.predict(
            str(image),
            {"label_prompt": [3], "points": [[10, 10, 10], [10, 64, 3]], "point_labels": [1, 0]},
            tmp_path / "out",
        )
    assert info.value.message == (
        "Point 2 [10, 64, 3] is outside the image: points are [x, y, z] voxel indices and the image shape "
        "is [64, 64, 64]."
    )


# ---------------------------------------------------------------- segmentation through the full pipeline


def test_class_prompt_segments_the_sphere_on_the_original_grid(predictor: Vista3dPredictor, tmp_path: Path) -> None:
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=11)
    [out] = predictor.predict(str(image), {"label_prompt": [3]}, tmp_path / "out")
    assert out == tmp_path / "out" / "ct_seg.nrrd"
    header = nrrd.read_header(str(out))
    assert header["encoding"] == "raw" and header["type"] in ("uint8", "unsigned char")
    np.testing.assert_allclose(header["space directions"], ct_affine()[:3, :3].T)
    seg = read_raw_nrrd(out, truth.shape)
    assert set(np.unique(seg)) <= {0, 3}
    assert dice(seg == 3, truth) > 0.7


def test_non_ras_oblique_input_stays_aligned(predictor: Vista3dPredictor, tmp_path: Path) -> None:
    """The same voxels under an LPS-like and an oblique, permuted, anisotropic affine: Dice must hold."""
    scores = {}
    for name, affine in (("ras", ct_affine()), ("oblique", oblique_affine())):
        image, truth = write_ct(tmp_path / f"{name}.nii.gz", seed=12, affine=affine)
        [out] = predictor.predict(str(image), {"label_prompt": [3]}, tmp_path / name)
        seg = read_raw_nrrd(out, truth.shape)
        assert seg.shape == truth.shape
        scores[name] = dice(seg == 3, truth)
    assert scores["oblique"] > 0.7, scores
    assert scores["oblique"] > scores["ras"] - 0.15, scores


def test_point_click_overlaps_the_sphere_and_marks_unreached_voxels_255(
    predictor: Vista3dPredictor, tmp_path: Path
) -> None:
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=17, shape=(96, 96, 64))
    click = centre(truth)
    [out] = predictor.predict(
        str(image), {"label_prompt": [3], "points": [click], "point_labels": [1]}, tmp_path / "out"
    )
    seg = read_raw_nrrd(out, truth.shape)
    assert set(np.unique(seg)) <= {0, 3, 255}
    inside = seg == 3
    assert (inside & truth).sum() > 0.7 * inside.sum() > 0
    assert seg[tuple(click)] == 3
    # The 32-voxel (48 mm) window around the click is reached; far from it nothing was computed.
    x, y, z = click
    assert not (seg[x - 8 : x + 9, y - 8 : y + 9, z - 6 : z + 7] == 255).any()
    assert (seg == 255).sum() > 0
    far = np.argwhere(seg == 255)
    assert np.abs(far - np.array(click)).max(1).min() > 10


def test_point_only_click_keeps_the_clicked_component(predictor: Vista3dPredictor, tmp_path: Path) -> None:
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=14)
    [out] = predictor.predict(str(image), {"points": [centre(truth)], "point_labels": [1]}, tmp_path / "out")
    seg = read_raw_nrrd(out, truth.shape)
    assert (seg == 1).sum() > 0 and ((seg == 1) & truth).sum() > 0.7 * (seg == 1).sum()


def test_zero_shot_and_special_classes_answer_with_their_own_index(predictor: Vista3dPredictor, tmp_path: Path) -> None:
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=14)
    for cls in (200, 25):  # zero-shot: the point head alone; 25 (hepatic vessel): labels 0/1 sent as 2/3
        [out] = predictor.predict(
            str(image), {"label_prompt": [cls], "points": [centre(truth)], "point_labels": [1]}, tmp_path / str(cls)
        )
        assert set(np.unique(read_raw_nrrd(out, truth.shape))) <= {0, cls, 255}


def test_dicom_folder_gives_the_same_mask_as_its_nifti(predictor: Vista3dPredictor, tmp_path: Path) -> None:
    image, label = synthetic_ct_arrays(seed=11)
    folder = tmp_path / "series"
    folder.mkdir()
    for i, raw in enumerate(series_bytes(write_ct_series(image, spacing=(1.5, 1.5, 2.0), shuffle=True))):
        (folder / f"{i:03d}.dcm").write_bytes(raw)
    nifti = write_nifti(read_series(sorted(folder.iterdir())), tmp_path / "series.nii.gz")
    click = {"label_prompt": [3], "points": [centre(label > 0)], "point_labels": [1]}
    [from_nifti] = predictor.predict(str(nifti), click, tmp_path / "a")
    [from_folder] = predictor.predict(str(folder), click, tmp_path / "b")
    assert from_folder.name == "series_seg.nrrd"
    seg = read_raw_nrrd(from_folder, image.shape)
    np.testing.assert_array_equal(seg, read_raw_nrrd(from_nifti, image.shape))
    assert ((seg == 3) & (label > 0)).sum() > 0.7 * (seg == 3).sum() > 0


def test_second_click_reuses_the_image_and_its_embedding(vista_bundle: Path, tmp_path: Path) -> None:
    predictor = Vista3dPredictor(vista_bundle)
    predictor.load()
    calls: list[int] = []
    predictor.network.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=15)
    click = centre(truth)
    second = [click[0] + 2, click[1] - 1, click[2] + 1]
    started = time.perf_counter()
    predictor.predict(str(image), {"label_prompt": [3], "points": [click], "point_labels": [1]}, tmp_path / "1")
    first_s = time.perf_counter() - started
    assert len(calls) == 1
    clicks = {"label_prompt": [3], "points": [click, second], "point_labels": [1, 1]}
    second_s = []
    for _ in range(2):  # the best of two, so a scheduling hiccup on a busy machine does not decide
        started = time.perf_counter()
        [out] = predictor.predict(str(image), clicks, tmp_path / "2")
        second_s.append(time.perf_counter() - started)
    assert len(calls) == 1, "the second click must not run the image encoder again"
    assert min(second_s) < first_s
    assert (read_raw_nrrd(out, truth.shape) == 3).sum() > 0
    # A changed file (new mtime) is a new image: re-read and re-encoded.
    time.sleep(0.01)
    write_ct(image, seed=16)
    predictor.predict(str(image), {"label_prompt": [3], "points": [click], "point_labels": [1]}, tmp_path / "3")
    assert len(calls) == 2


def test_swap_weights_replaces_the_network_and_drops_the_cache(vista_bundle: Path, tmp_path: Path) -> None:
    predictor = Vista3dPredictor(vista_bundle)
    predictor.load()
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=11)
    params = {"label_prompt": [3], "points": [centre(truth)], "point_labels": [1]}
    predictor.predict(str(image), params, tmp_path / "1")
    assert len(predictor.cache) == 1
    zeros = {k: torch.zeros_like(v) for k, v in predictor.network.state_dict().items()}
    torch.save(zeros, tmp_path / "zeros.pt")
    predictor.swap_weights(tmp_path / "zeros.pt")
    assert len(predictor.cache) == 0
    [out] = predictor.predict(str(image), params, tmp_path / "2")
    assert not (read_raw_nrrd(out, truth.shape) == 3).any()


# ---------------------------------------------------------------- MEDCLOUD_VISTA3D_BUNDLE


def test_bundle_metadata_is_the_official_label_map(vista_bundle: Path) -> None:
    meta = json.loads((vista_bundle / "configs" / "metadata.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert len(channels) == 133 and channels["3"] == "spleen" and channels["42"] == "vertebrae T8"
    config = json.loads((vista_bundle / "configs" / "inference.json").read_text())
    assert config["network_def"]["_target_"] == "monai.networks.nets.vista3d.VISTA3D"
    assert "scripts" not in json.dumps(config)


def test_ensure_bundle_from_folder_zip_and_file_url(vista_bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "vista3d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in vista_bundle.rglob("*"):
            if path.is_file():
                zf.write(path, f"vista3d/{path.relative_to(vista_bundle).as_posix()}")
    for value in (str(vista_bundle), str(archive), archive.as_uri()):
        settings = Settings(data_dir=tmp_path / "data", vista3d_bundle=value)
        folder = ensure_configured_bundle(settings, CONFIGURED)
        assert folder.parent == (tmp_path / "data" / "vista3d").resolve()
        assert (folder / "models" / "model.pt").read_bytes() == (vista_bundle / "models" / "model.pt").read_bytes()
        assert ensure_configured_bundle(settings, CONFIGURED) == folder  # cached: the same folder, not fetched again
        Vista3dPredictor(folder).load()


def test_ensure_bundle_errors_name_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.zip"
    with pytest.raises(Invalid) as info:
        ensure_configured_bundle(Settings(data_dir=tmp_path / "data", vista3d_bundle=str(missing)), CONFIGURED)
    assert info.value.message == f"MEDCLOUD_VISTA3D_BUNDLE ({missing}) could not be used: {missing} does not exist."
    not_vista = tmp_path / "spleen"
    (not_vista / "configs").mkdir(parents=True)
    (not_vista / "configs" / "metadata.json").write_text("{}")
    with pytest.raises(Invalid) as info:
        ensure_configured_bundle(Settings(data_dir=tmp_path / "data", vista3d_bundle=str(not_vista)), CONFIGURED)
    assert "MEDCLOUD_VISTA3D_BUNDLE" in info.value.message and "missing configs/inference.json" in info.value.message
    with pytest.raises(Invalid, match="MEDCLOUD_VISTA3D_BUNDLE is not set"):
        ensure_configured_bundle(Settings(data_dir=tmp_path / "data", vista3d_bundle=None), CONFIGURED)
