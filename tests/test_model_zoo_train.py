"""A train job on the model zoo's own `spleen_ct_segmentation` configs: real worker, TensorBoard events, epochs honoured.

The bundle is the zoo's `configs/*.json` verbatim with random weights (`model_zoo.zoo_bundle_folder`), trained on
synthetic CT (4 train + 2 validation volumes of 64³ at the bundle's own 1.5×1.5×2 mm spacing) with the override
the notebooks use, `{"train#trainer#max_epochs": 2, "val_interval": 1}`. Two more overrides keep it short on a
CPU: the bundle's `RandCropByPosNegLabeld` crops 96³ patches, larger than these volumes, so it crops 32³ (a multiple
of 16, as the UNet's four stride-2 levels need), and the validation's sliding window is the volumes' 64³ instead of
96³ (which would pad each to 3.4 times its size).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from builders import job, start, wait_status
from model_zoo import MODEL_ZOO, NO_MODEL_ZOO, zoo_bundle_folder

pytestmark = pytest.mark.skipif(not MODEL_ZOO.is_dir(), reason=NO_MODEL_ZOO)
SPECS = {
    "train#trainer#max_epochs": 2,
    "val_interval": 1,
    "train#random_transforms#0#spatial_size": [32, 32, 32],
    "validate#inferer#roi_size": [64, 64, 64],
}
TRAIN_VOLUMES, VAL_VOLUMES = 4, 2


def ct_dataset(root: Path, count: int, seed: int) -> Path:
    """`count` labeled synthetic CTs (64³, one sphere each) with a manifest.json; the folder."""
    from medcloud.demo.synthetic import stable_id, write_synthetic_ct

    data = []
    for i in range(count):
        image, label = f"imagesTr/ct_{seed + i}.nii.gz", f"labelsTr/ct_{seed + i}.nii.gz"
        write_synthetic_ct(root / image, root / label, seed=seed + i, rad_min=10, rad_max=18)
        data.append(
            {"image": {"path": [image], "id": stable_id(image)}, "label": {"path": [label], "id": stable_id(label)}}
        )
    (root / "manifest.json").write_text(json.dumps({"label_key": ["label"], "data": data}))
    return root


def dataset(api, root: Path, name: str) -> str:
    resp = api.post("datasets", json={"name": name, "format": "monai", "client_url": str(root)})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in `event_dir`: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return found


def test_spleen_bundle_trains_with_tensorboard_and_the_notebooks_epoch_override(api, tmp_path):
    bundle = zoo_bundle_folder("spleen_ct_segmentation", tmp_path / "zoo")
    train_id = dataset(api, ct_dataset(tmp_path / "train", TRAIN_VOLUMES, seed=100), "spleen-train")
    val_id = dataset(api, ct_dataset(tmp_path / "val", VAL_VOLUMES, seed=200), "spleen-val")
    body = {
        "name": "zoo-spleen",
        "network_arch": "monai_segmentation",
        "train_datasets": [train_id],
        "eval_dataset": val_id,
        "bundle_url": str(bundle),
    }
    resp = api.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    exp = resp.json()
    job_id = start(api, exp, SPECS)
    done = wait_status(api, exp, job_id, {"Done", "Error"}, timeout=300)
    logs = api.get(f"experiments/{exp['id']}/jobs/{job_id}/logs").text
    assert done["status"] == "Done", (done["result"], logs[-3000:])
    result = done["result"]
    assert result["max_epoch"] == 2 and result["epoch"] in (1, 2)  # 2 epochs, not the config's 800
    assert 0.0 <= result["key_metric"] <= 1.0  # the validation's mean Dice (-1 would mean it never ran)
    assert "Epoch[2] Complete" in logs and "Epoch[3]" not in logs
    assert "Failed to instantiate" not in logs

    tar = api.get(f"experiments/{exp['id']}/jobs/{job_id}:download")
    assert tar.status_code == 200
    out = tmp_path / "download"
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        archive.extractall(out, filter="data")
    results = out / job_id / "results"
    # The checkpoint is the bundle's own UNet, saved by its CheckpointSaver at the best validation.
    state = torch.load(results / "models" / "model.pt", map_location="cpu", weights_only=True)
    expected = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == set(expected) and all(state[k].shape == expected[k].shape for k in expected)
    assert any(not torch.equal(state[k], expected[k]) for k in expected)  # trained, not the random weights
    # TensorBoardStatsHandler wrote events to the bundle's output_dir: a loss per iteration and a Dice per epoch.
    assert list((results / "eval").glob("events.out.tfevents.*")), sorted(p.name for p in results.rglob("*"))
    found = scalars(results / "eval")
    iterations = 2 * (TRAIN_VOLUMES // 2)  # batch_size 2 of the bundle's DataLoader, two epochs
    assert [step for step, _ in found["train_loss"]] == list(range(1, iterations + 1)), found.keys()
    assert [step for step, _ in found["val_mean_dice"]] == [1, 2]
    assert job(api, exp, job_id)["status"] == "Done"
