"""Demo bundles: really trained, runnable the way the model host runs them, packable, cached."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import EnsureChannelFirst, LoadImage

from medcloud.demo import bundles
from medcloud.demo.bundles import (
    CLASSIFICATION_NAME,
    SEGMENTATION_NAME,
    TRAINING_SEEDS_FROM,
    ensure_demo_bundles,
    make_segmentation_bundle,
    pack_bundle,
    write_demo_dataset,
)
from medcloud.demo.synthetic import CT_SPACING, ct_affine, write_synthetic_ct, write_synthetic_rgb

# Top-level keys of the model zoo's configs/inference.json (endoscopic_inbody_classification, spleen_ct_segmentation).
ENDOSCOPIC_INFERENCE_KEYS = {
    "imports", "bundle_root", "image_key", "load_pretrain", "output_dir", "output_filename", "dataset_dir",
    "test_json", "test_fp", "test_dict", "device", "network_def", "network", "preprocessing", "dataset",
    "dataloader", "inferer", "postprocessing", "handlers", "evaluator", "checkpointloader", "initialize", "run",
    "finalize",
}  # fmt: skip
SPLEEN_INFERENCE_KEYS = {
    "imports", "bundle_root", "image_key", "output_dir", "output_ext", "output_dtype", "output_postfix",
    "separate_folder", "load_pretrain", "dataset_dir", "datalist", "device", "network_def", "network",
    "preprocessing", "dataset", "dataloader", "inferer", "postprocessing", "handlers", "evaluator",
    "checkpointloader", "initialize", "run",
}  # fmt: skip
HELD_OUT_SEED = 4242
assert HELD_OUT_SEED < TRAINING_SEEDS_FROM


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ensure_demo_bundles(tmp_path_factory.mktemp("demo-cache"))


def run_like_model_host(folder: Path, image: Path, out: Path, **overrides: Any) -> ConfigParser:
    """Parse and run inference.json exactly as the server's model host does."""
    parser = ConfigParser()
    parser.read_config(folder / "configs" / "inference.json")
    parser["bundle_root"] = str(folder)
    parser["dataset#data"] = [{"image": str(image)}]
    parser["output_dir"] = f"$'{out}'"
    parser["dataloader#num_workers"] = 0
    for key, value in overrides.items():
        parser[key] = value
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluator").run()
    return parser


def read_scores(csv_path: Path) -> dict[str, list[float]]:
    with csv_path.open() as f:
        return {row[0]: [float(v) for v in row[1:]] for row in csv.reader(f)}


def nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_classification_bundle_has_the_model_zoo_layout(demo: dict[str, Path]) -> None:
    folder = demo["classification"]
    assert folder.name == CLASSIFICATION_NAME
    for rel in ["configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf",
                "models/model.pt", "label/test_samples.json", "LICENSE"]:  # fmt: skip
        assert (folder / rel).is_file(), rel
    inference = json.loads((folder / "configs/inference.json").read_text())
    assert set(inference) == ENDOSCOPIC_INFERENCE_KEYS
    assert {"epochs", "val_interval", "train_json", "val_json"} <= set(
        json.loads((folder / "configs/train.json").read_text())
    )
    metadata = json.loads((folder / "configs/metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "in body",
        "1": "out body",
    }
    assert isinstance(torch.load(folder / "models/model.pt", weights_only=True), dict)


def test_segmentation_bundle_has_the_spleen_reference_keys(demo: dict[str, Path]) -> None:
    folder = demo["segmentation"]
    assert folder.name == SEGMENTATION_NAME
    assert set(json.loads((folder / "configs/inference.json").read_text())) == SPLEEN_INFERENCE_KEYS
    assert {"epochs", "val_interval"} <= set(json.loads((folder / "configs/train.json").read_text()))
    metadata = json.loads((folder / "configs/metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "spleen",
    }
    assert list((folder / "sample_data").rglob("*.nii.gz"))


def test_classifier_labels_held_out_frames_correctly(demo: dict[str, Path], tmp_path: Path) -> None:
    truth = {str(write_synthetic_rgb(tmp_path / f"{s}.png", label=s % 2, seed=s)): s % 2 for s in range(100, 120)}
    parser = ConfigParser()
    parser.read_config(demo["classification"] / "configs/inference.json")
    parser["bundle_root"] = str(demo["classification"])
    parser["dataset#data"] = [{"image": path} for path in truth]
    parser["output_dir"] = f"$'{tmp_path / 'out'}'"
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluator").run()
    scores = read_scores(tmp_path / "out/predictions.csv")
    correct = sum(int(np.argmax(scores[path])) == label for path, label in truth.items())
    assert correct / len(truth) >= 0.95


def test_model_host_run_of_classification_writes_one_row_with_two_scores(demo: dict[str, Path], tmp_path: Path) -> None:
    image = write_synthetic_rgb(tmp_path / "frame.png", label=1, seed=HELD_OUT_SEED)
    run_like_model_host(demo["classification"], image, tmp_path / "out")
    scores = read_scores(tmp_path / "out/predictions.csv")
    assert list(scores) == [str(image)]
    assert len(scores[str(image)]) == 2
    assert sum(scores[str(image)]) == pytest.approx(1.0, abs=1e-5)
    assert int(np.argmax(scores[str(image)])) == 1


def test_classification_csv_is_replaced_by_a_new_parse_but_appended_by_a_rerun(
    demo: dict[str, Path], tmp_path: Path
) -> None:
    # Documents MONAI's CSVSaver: it deletes the CSV when instantiated and appends on every run after that.
    image = write_synthetic_rgb(tmp_path / "frame.png", label=0, seed=HELD_OUT_SEED)
    parser = run_like_model_host(demo["classification"], image, tmp_path / "out")
    parser.get_parsed_content("evaluator").run()
    assert len((tmp_path / "out/predictions.csv").read_text().splitlines()) == 2
    run_like_model_host(demo["classification"], image, tmp_path / "out")
    assert len((tmp_path / "out/predictions.csv").read_text().splitlines()) == 1


def test_model_host_run_of_segmentation_finds_the_sphere_on_the_input_grid(
    demo: dict[str, Path], tmp_path: Path
) -> None:
    image, label = write_synthetic_ct(tmp_path / "ct.nii.gz", tmp_path / "ct_label.nii.gz", seed=HELD_OUT_SEED)
    overrides = {"output_ext": ".nii.gz", "output_postfix": "seg", "separate_folder": False}
    run_like_model_host(demo["segmentation"], image, tmp_path / "out", **overrides)
    written = nifti(tmp_path / "out/ct_seg.nii.gz")
    truth = nifti(label)
    assert written.shape == truth.shape
    np.testing.assert_allclose(written.affine, truth.affine, atol=1e-5)
    assert set(np.unique(written.get_fdata())) <= {0.0, 1.0}
    assert dice(written.get_fdata(), truth.get_fdata()) > 0.8


def test_segmentation_bundle_runs_as_a_config_workflow_on_a_held_out_volume(
    demo: dict[str, Path], tmp_path: Path
) -> None:
    _, label = write_synthetic_ct(
        tmp_path / "imagesTs/case.nii.gz", tmp_path / "labelsTs/case.nii.gz", seed=HELD_OUT_SEED + 1
    )
    folder = demo["segmentation"]
    workflow = ConfigWorkflow(
        config_file=str(folder / "configs/inference.json"),
        workflow_type="infer",
        logging_file=str(folder / "configs/logging.conf"),
        bundle_root=str(folder),
        dataset_dir=str(tmp_path),
        output_dir=f"$'{tmp_path / 'out'}'",
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    written = nifti(tmp_path / "out/case/case_trans.nii.gz")
    np.testing.assert_allclose(written.affine, ct_affine(CT_SPACING), atol=1e-5)
    assert dice(written.get_fdata(), nifti(label).get_fdata()) > 0.8


def test_classification_bundle_runs_as_a_config_workflow_on_its_own_samples(
    demo: dict[str, Path], tmp_path: Path
) -> None:
    folder = demo["classification"]
    workflow = ConfigWorkflow(
        config_file=str(folder / "configs/inference.json"),
        workflow_type="infer",
        logging_file=False,
        bundle_root=str(folder),
        output_dir=f"$'{tmp_path}'",
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()  # closes test_fp
    samples = json.loads((folder / "label/test_samples.json").read_text())
    scores = read_scores(tmp_path / "predictions.csv")
    assert [int(np.argmax(scores[str(folder / s["image"])])) for s in samples] == [s["label"] for s in samples]


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_train_json_runs_with_the_monai_bundle_cli(demo: dict[str, Path], tmp_path: Path, kind: str) -> None:
    folder = demo[kind]
    dataset = ["--dataset_dir", str(write_demo_dataset(tmp_path / "data", n_ct=3, n_rgb=0).parent)]
    args = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(folder / "configs/train.json"),
        "--meta_file", str(folder / "configs/metadata.json"), "--logging_file", str(folder / "configs/logging.conf"),
        "--bundle_root", str(folder), "--ckpt_dir", str(tmp_path / "ckpt"), "--output_dir", f"$'{tmp_path}'",
        "--epochs", "1", *(dataset if kind == "segmentation" else []),
    ]  # fmt: skip
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(torch.load(tmp_path / "ckpt/model.pt", weights_only=True)) == set(
        torch.load(folder / "models/model.pt", weights_only=True)
    )


def test_untrained_full_size_spleen_bundle_builds_fast_and_loads(tmp_path: Path) -> None:
    start = time.monotonic()
    folder = make_segmentation_bundle(
        tmp_path,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        roi_size=(96, 96, 96),
        num_res_units=2,
        train=False,
    )
    assert time.monotonic() - start < 10
    parser = ConfigParser()
    parser.read_config(folder / "configs/inference.json")
    parser["bundle_root"] = str(folder)
    parser.get_parsed_content("initialize")  # loads models/model.pt into the network: keys and shapes must match
    assert parser["inferer"]["roi_size"] == [96, 96, 96]
    assert sum(p.numel() for p in parser.get_parsed_content("network").parameters()) > 4_000_000


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz"])
def test_pack_bundle_puts_every_member_under_the_bundle_name(demo: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    folder = demo["classification"]
    archive = pack_bundle(folder, tmp_path, fmt)
    assert archive.name == f"{CLASSIFICATION_NAME}.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    else:
        with tarfile.open(archive) as tf:
            names = tf.getnames()
    assert f"{CLASSIFICATION_NAME}/configs/metadata.json" in names
    assert f"{CLASSIFICATION_NAME}/models/model.pt" in names
    assert all(name.startswith(f"{CLASSIFICATION_NAME}/") for name in names)


def test_pack_bundle_rejects_an_unknown_format(demo: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        pack_bundle(demo["classification"], tmp_path, "rar")


def test_ensure_demo_bundles_reuses_the_cache(demo: dict[str, Path]) -> None:
    weights = demo["segmentation"] / "models/model.pt"
    mtime = weights.stat().st_mtime_ns
    start = time.monotonic()
    again = ensure_demo_bundles(demo["segmentation"].parent.parent)
    assert time.monotonic() - start < 1
    assert again == demo
    assert weights.stat().st_mtime_ns == mtime


def test_ensure_demo_bundles_keeps_the_winner_of_a_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(dest: Path) -> Path:
        (dest / "mine").mkdir()
        return dest

    def lose_the_race(dest: Path) -> Path:
        # Another process finishes first and renames its complete build into place.
        (tmp_path / bundles._CACHE_KEY / "theirs").mkdir(parents=True)
        return build(dest)

    monkeypatch.setattr(bundles, "make_classification_bundle", build)
    monkeypatch.setattr(bundles, "make_segmentation_bundle", lose_the_race)
    paths = ensure_demo_bundles(tmp_path)
    assert paths["segmentation"].parent == tmp_path / bundles._CACHE_KEY
    assert [p.name for p in (tmp_path / bundles._CACHE_KEY).iterdir()] == ["theirs"]
    # the winner's build and the builders' lock file (kept: unlinking a lock others may wait on is a race)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([bundles._CACHE_KEY, f".{bundles._CACHE_KEY}.lock"])


def test_synthetic_ct_has_hu_intensities_a_binary_label_and_the_spacing_affine(tmp_path: Path) -> None:
    image, label = write_synthetic_ct(
        tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", seed=1, shape=(48, 40, 32), rad_max=12
    )
    img, lab = nifti(image), nifti(label)
    assert img.shape == lab.shape == (48, 40, 32)
    assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    assert np.allclose(np.abs(np.diag(img.affine)[:3]), CT_SPACING) and np.allclose(img.affine, lab.affine)
    data, mask = img.get_fdata(), lab.get_fdata()
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert data[mask > 0].mean() == pytest.approx(100, abs=1) and -57 <= data[mask == 0].mean() <= 0


def test_synthetic_rgb_loads_channel_first_with_monai(tmp_path: Path) -> None:
    path = write_synthetic_rgb(tmp_path / "x.png", label=0, seed=1, size=(48, 64))
    image = EnsureChannelFirst(channel_dim=-1)(LoadImage(image_only=False)(str(path))[0])
    assert image.shape[0] == 3 and sorted(image.shape[1:]) == [48, 64]


def test_demo_dataset_manifest_lists_labeled_and_unlabeled_files_with_stable_ids(tmp_path: Path) -> None:
    manifest = write_demo_dataset(tmp_path / "a", n_ct=3, n_rgb=2)
    data = json.loads(manifest.read_text())
    assert data["label_key"] == ["label"] and "root_path" not in data
    entries = data["data"]
    assert len(entries) == 5 and sum("label" in e for e in entries) == 2
    for entry in entries:
        for part in (entry["image"], entry.get("label")):
            if part:
                assert (manifest.parent / part["path"][0]).is_file() and not part["path"][0].startswith("/")
                uuid.UUID(part["id"])
    assert json.loads(write_demo_dataset(tmp_path / "b", n_ct=3, n_rgb=2).read_text()) == data
