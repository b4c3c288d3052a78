"""Config pieces shared by the demo bundles, taken from the model zoo's spleen and endoscopic bundles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ignite
import monai
import nibabel
import numpy as np
import torch

RGB_SIZE = (64, 64)
# The model zoo's logging.conf, identical in both reference bundles.
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
DEVICE = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
# The reference bundles use amp; on CPU torch.autocast("cuda") only warns once and runs in float32.
AMP = True
FROM_ENGINE = "$monai.handlers.from_engine(['pred', 'label'])"


# ---------------------------------------------------------------- config pieces shared by both bundles


def metadata_base(
    *, name: str, task: str, description: str, network_data_format: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The fields every model-zoo metadata.json carries, with this environment's versions."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "synthetic demo bundle built by medcloud"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": nibabel.__version__, "pytorch-ignite": ignite.__version__},
        "name": name,
        "task": task,
        "description": description,
        "authors": "medcloud",
        "copyright": "Copyright (c) medcloud authors",
        "data_source": "synthetic data from medcloud.demo.synthetic",
        "intended_use": "A demo trained on synthetic data, not to be used for diagnostic purposes",
        **extra,
        "network_data_format": network_data_format,
    }


def io_format(
    kind: str, fmt: str, channels: dict[str, str], shape: Sequence[int], patch: bool, **extra: Any
) -> dict[str, Any]:
    """One entry of `network_data_format` inputs/outputs."""
    return {
        "type": kind,
        "format": fmt,
        **extra,
        "num_channels": len(channels),
        "spatial_shape": list(shape),
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": patch,
        "channel_def": channels,
    }


def evaluator(loader: str, inferer: str, post: str, handlers: str, **extra: Any) -> dict[str, Any]:
    """A SupervisedEvaluator item wired to the bundle's `@device` and `@network`."""
    return {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": loader,
        "network": "@network",
        "inferer": inferer,
        "postprocessing": post,
        **extra,
        "val_handlers": handlers,
    }


def loader(dataset: str, batch_size: int, shuffle: bool) -> dict[str, Any]:
    """A DataLoader item; no worker processes, the model host and tests run in-process."""
    return {
        "_target_": "DataLoader",
        "dataset": dataset,
        "batch_size": batch_size,
        "shuffle": shuffle,
        "num_workers": 0,
    }


def checkpoint_saver() -> dict[str, Any]:
    """Saves `@ckpt_dir/model.pt` whenever the validation key metric improves."""
    return {
        "_target_": "CheckpointSaver",
        "save_dir": "@ckpt_dir",
        "save_dict": {"model": "@network"},
        "save_key_metric": True,
        "key_metric_filename": "model.pt",
    }


def train_handlers() -> list[dict[str, Any]]:
    """Validation every `@val_interval` epochs and loss logging."""
    return [
        {
            "_target_": "ValidationHandler",
            "validator": "@validate#evaluator",
            "epoch_level": True,
            "interval": "@val_interval",
        },
        {
            "_target_": "StatsHandler",
            "tag_name": "train_loss",
            "output_transform": "$monai.handlers.from_engine(['loss'], first=True)",
        },
    ]


def inference_tail() -> dict[str, Any]:
    """checkpointloader, initialize and run, as in both reference inference.json files."""
    return {
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        },
        "initialize": [
            "$monai.utils.set_determinism(seed=123)",
            "$@checkpointloader(@evaluator) if @load_pretrain else None",
        ],
        "run": ["$@evaluator.run()"],
    }


def trainer(**extra: Any) -> dict[str, Any]:
    """A SupervisedTrainer item reading the `train#` section."""
    return {
        "_target_": "SupervisedTrainer",
        "max_epochs": "@epochs",
        "device": "@device",
        "train_data_loader": "@train#dataloader",
        "network": "@network",
        "loss_function": "@loss",
        "optimizer": "@optimizer",
        "inferer": "@train#inferer",
        "postprocessing": "@train#postprocessing",
        "key_train_metric": "@train#key_metric",
        "train_handlers": "@train#handlers",
        **extra,
    }
