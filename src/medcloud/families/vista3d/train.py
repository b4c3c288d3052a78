"""The `train` job for VISTA-3D: fine-tune the experiment's weights on its labeled images.

Every step trains the class head on all the experiment's classes (the labels annotate exactly those,
so no other class is taught to be empty) and the point head on simulated clicks inside one of them.
Validation runs the served predictor itself with a class prompt of those classes on the eval images
and scores the mean Dice on the original grid, so the metric is the one users see.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import torch
from monai.losses import DiceLoss

from medcloud.errors import Invalid
from medcloud.families.vista3d.patches import sample_clicks, training_batch
from medcloud.families.vista3d.predictor import Vista3dPredictor
from medcloud.families.vista3d.transforms import preprocessing
from medcloud.jobs.spec import JobSpec
from medcloud.modelrun.progress import ProgressReporter
from medcloud.modelrun.tracking import Tracker

log = logging.getLogger(__name__)


def mean_dice(predictor: Vista3dPredictor, items: list[dict], classes: list[int]) -> float:
    """Mean over images and classes of the Dice of the served prediction vs the label volume."""
    predictor.cache.clear()  # the weights changed since the last look
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in items:
            out = predictor.predict(item["image"], {"label_prompt": classes}, Path(tmp))[0]
            pred, _ = nrrd.read(str(out))
            truth = np.asarray(nib.load(item["label"]).dataobj)
            for c in classes:
                p, t = pred == c, truth == c
                if t.any() or p.any():
                    scores.append(2 * float((p & t).sum()) / float(p.sum() + t.sum()))
    return float(np.mean(scores)) if scores else 0.0


class Vista3dFineTuner:
    """Patches, losses and optimiser of one fine-tuning run."""

    def __init__(
        self, predictor: Vista3dPredictor, items: list[dict], classes: list[int], lr: float, seed: int
    ) -> None:
        self.network = predictor.network
        self.patch = int(predictor.roi_size[0])
        self.classes = classes
        self.rs = np.random.RandomState(seed)
        transform = preprocessing(predictor.config.preprocess, keys=("image", "label"), modes=("bilinear", "nearest"))
        self.volumes = []
        for item in items:
            data = transform({"image": item["image"], "label": item["label"]})
            self.volumes.append((data["image"].as_tensor(), data["label"].as_tensor().round()))
        self.dice, self.bce = DiceLoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr, weight_decay=1e-5)

    def step(self) -> float:
        x, y = training_batch(self.volumes, self.patch, self.rs)
        out, out_auto = self.network.image_encoder(x, with_point=True, with_label=True)
        prompts = torch.tensor([[c] for c in self.classes])
        logits, _ = self.network.class_head(out_auto, prompts)
        target = torch.stack([(y[:, 0] == c).float() for c in self.classes])
        loss = self.dice(logits, target) + self.bce(logits, target)
        present = [c for c in self.classes if (y[0, 0] == c).any()]
        if present:
            c = present[self.rs.randint(len(present))]
            mask = (y[:1] == c).float()
            points, labels = sample_clicks(mask[0, 0], self.rs)
            point_logits = self.network.point_head(out[:1], points, labels, class_vector=torch.tensor([[c]] * 2))
            loss = (
                loss
                + self.dice(point_logits, mask.expand(2, -1, -1, -1, -1))
                + self.bce(point_logits, mask.expand(2, -1, -1, -1, -1))
            )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss)

    def epoch(self, steps: int) -> float:
        self.network.train()
        losses = [self.step() for _ in range(steps)]
        self.network.eval()
        return float(np.mean(losses))


# Bundle keys a VISTA-3D train job reads, first found wins: they mean what they mean in the official
# `configs/train.json` (`epochs` feeds `train#trainer#max_epochs` there, `learning_rate` the optimiser).
EPOCH_KEYS = ("train#trainer#max_epochs", "epochs")
VAL_INTERVAL_KEYS = ("val_interval", "validate#val_interval")
LR_KEYS = ("learning_rate", "optimizer#lr")
OWN_KEYS = frozenset({*EPOCH_KEYS, *VAL_INTERVAL_KEYS, *LR_KEYS, "steps_per_epoch"})
SERVER_KEYS = frozenset({"finetune", "val_at_start", "tracking", "tracking_uri", "experiment_name", "run_name"})


def bundle_value(specs: dict[str, Any], keys: tuple[str, ...], default: Any) -> Any:
    """The first of `keys` present in `specs`, else `default`."""
    return next((specs[k] for k in keys if specs.get(k) is not None), default)


def run_vista3d_train(spec: JobSpec, job_dir: Path) -> dict[str, Any]:
    specs, labels = dict(spec.specs), spec.labels
    train_items, val_items = spec.train_items, spec.val_items
    predictor = Vista3dPredictor(Path(spec.bundle_dir), labels)
    predictor.load()
    present = set()
    for item in train_items:
        present |= set(np.unique(np.asarray(nib.load(item["label"]).dataobj)).astype(int).tolist())
    classes = sorted(int(k) for k in labels if int(k) in present)
    if not classes:
        raise Invalid("None of the experiment's labels appear in the labeled images; check the SEG segment names.")
    epochs = int(bundle_value(specs, EPOCH_KEYS, 5))
    val_interval = max(int(bundle_value(specs, VAL_INTERVAL_KEYS, 1)), 1)
    ignored = sorted(k for k in specs if k not in OWN_KEYS | SERVER_KEYS)
    if ignored:
        log.warning("VISTA-3D fine-tuning does not use these specs keys: %s", ", ".join(ignored))
    log.info("Fine-tuning VISTA-3D on classes %s: %d epochs, validation every %d", classes, epochs, val_interval)
    tuner = Vista3dFineTuner(predictor, train_items, classes, float(bundle_value(specs, LR_KEYS, 1e-4)), seed=0)
    steps = int(specs.get("steps_per_epoch", max(10, 5 * len(train_items))))
    results = job_dir / "results" / "models"
    results.mkdir(parents=True, exist_ok=True)
    reporter, tracker = ProgressReporter(job_dir, epochs), Tracker.from_specs(specs, run_name=spec.job_id)
    best, best_epoch, start = -1.0, -1, None
    if specs.get("val_at_start") and val_items:
        best = start = mean_dice(predictor, val_items, classes)
        best_epoch = 0
        torch.save(predictor.network.state_dict(), results / "model.pt")
    for epoch in range(1, epochs + 1):
        loss = tuner.epoch(steps)
        metric = mean_dice(predictor, val_items, classes) if val_items and epoch % val_interval == 0 else None
        if metric is not None and metric > best:
            best, best_epoch = metric, epoch
            torch.save(predictor.network.state_dict(), results / "model.pt")
        reporter.update(epoch=epoch, cur_iter=epoch * steps, key_metric=best if best_epoch >= 0 else None)
        tracker.log(epoch, {"train_loss": loss, **({"val_mean_dice": metric} if metric is not None else {})})
    if best_epoch < 0:
        torch.save(predictor.network.state_dict(), results / "model.pt")
    tracker.close()
    result = {
        "epoch": best_epoch,
        "key_metric": best,
        "max_epoch": epochs,
        "classes": classes,
        "checkpoint": "results/models/model.pt",
    }
    if start is not None:
        result["start_key_metric"] = start
    return result
