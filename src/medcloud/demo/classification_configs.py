"""Configs of the classification demo bundle, shaped like the model zoo's endoscopic_inbody_classification."""

from __future__ import annotations

from typing import Any

from medcloud.demo.configs import (
    DEVICE,
    FROM_ENGINE,
    RGB_SIZE,
    checkpoint_saver,
    evaluator,
    inference_tail,
    io_format,
    loader,
    metadata_base,
    train_handlers,
    trainer,
)


def _rgb_transforms(image: str, *, with_label: bool) -> list[dict[str, Any]]:
    load: dict[str, Any] = {"_target_": "LoadImaged", "keys": image, "image_only": False}
    label = [{"_target_": "ToTensord", "keys": "label"}] if with_label else []
    return [
        load,
        *label,
        {"_target_": "EnsureChannelFirstd", "keys": image, "channel_dim": -1},
        {"_target_": "Resized", "keys": image, "spatial_size": list(RGB_SIZE), "mode": "bilinear"},
        {"_target_": "CastToTyped", "dtype": "$torch.float32", "keys": image},
        {"_target_": "NormalizeIntensityd", "nonzero": True, "channel_wise": True, "keys": image},
        {"_target_": "EnsureTyped", "keys": image},
    ]


def _classifier_def() -> dict[str, Any]:
    return {
        "_target_": "Classifier",
        "in_shape": [3, *RGB_SIZE],
        "classes": 2,
        "channels": [8, 16, 32],
        "strides": [2, 2, 2],
    }


def _samples_dict(key: str) -> str:
    # Relative image paths in the sample lists resolve against dataset_dir, so the bundle can move.
    return f"$[dict(d, image=os.path.join(@dataset_dir, d['image'])) for d in json.load(@{key})]"


def classification_inference() -> dict[str, Any]:
    """inference.json of the classification bundle: the endoscopic one's keys, softmax scores into a CSV."""
    post = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {
            "_target_": "SaveClassificationd",
            "keys": "pred",
            "meta_keys": "$@image_key + '_meta_dict'",
            "output_dir": "@output_dir",
            "filename": "@output_filename",
        },
    ]
    return {
        "imports": ["$import json", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "image_key": "image",
        "load_pretrain": True,
        "output_dir": "$@bundle_root + '/eval'",
        "output_filename": "predictions.csv",
        "dataset_dir": "@bundle_root",
        "test_json": "$@bundle_root+'/label/test_samples.json'",
        "test_fp": "$open(@test_json,'r', encoding='utf8')",
        "test_dict": _samples_dict("test_fp"),
        "device": DEVICE,
        "network_def": _classifier_def(),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": _rgb_transforms("@image_key", with_label=False),
        },
        "dataset": {"_target_": "Dataset", "data": "@test_dict", "transform": "@preprocessing"},
        "dataloader": loader("@dataset", 1, False),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": True}],
        "evaluator": evaluator("@dataloader", "@inferer", "@postprocessing", "@handlers"),
        **inference_tail(),
        "finalize": ["$@test_fp.close()"],
    }


_ACCURACY = {"_target_": "ignite.metrics.Accuracy", "output_transform": FROM_ENGINE}


def _train_section() -> dict[str, Any]:
    onehot = {
        "_target_": "AsDiscreted",
        "argmax": [True, False],
        "to_onehot": [2, 2],
        "keys": ["pred", "label"],
    }
    return {
        "deterministic_transforms": _rgb_transforms("image", with_label=True),
        "random_transforms": [
            {"_target_": "RandFlipd", "spatial_axis": 0, "prob": 0.5, "keys": "image"},
            {"_target_": "RandFlipd", "spatial_axis": 1, "prob": 0.5, "keys": "image"},
        ],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": "$@train#deterministic_transforms + @train#random_transforms",
        },
        "dataset": {"_target_": "Dataset", "data": "@train_dict", "transform": "@train#preprocessing"},
        "dataloader": loader("@train#dataset", 16, True),
        "inferer": {"_target_": "SimpleInferer"},
        "handlers": train_handlers(),
        "key_metric": {"train_accu": _ACCURACY},
        "postprocessing": {"_target_": "Compose", "transforms": [onehot]},
        "trainer": trainer(),
    }


def _validate_section() -> dict[str, Any]:
    return {
        "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
        "dataset": {"_target_": "Dataset", "data": "@val_dict", "transform": "@validate#preprocessing"},
        "dataloader": loader("@validate#dataset", 16, False),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": "%train#postprocessing#transforms"},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}, checkpoint_saver()],
        "key_metric": {"val_accu": _ACCURACY},
        "evaluator": evaluator(
            "@validate#dataloader",
            "@validate#inferer",
            "@validate#postprocessing",
            "@validate#handlers",
            key_val_metric="@validate#key_metric",
        ),
    }


def classification_train() -> dict[str, Any]:
    """train.json of the classification bundle, driven by `train_json`/`val_json` sample lists."""
    return {
        "imports": ["$import torch", "$import json", "$import ignite", "$import os"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "@bundle_root",
        "train_json": "$@bundle_root+'/label/train_samples.json'",
        "val_json": "$@bundle_root+'/label/val_samples.json'",
        "train_fp": "$open(@train_json,'r', encoding='utf8')",
        "train_dict": _samples_dict("train_fp"),
        "val_fp": "$open(@val_json,'r', encoding='utf8')",
        "val_dict": _samples_dict("val_fp"),
        "val_interval": 1,
        "epochs": 20,
        "device": DEVICE,
        "network_def": _classifier_def(),
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.003},
        "train": _train_section(),
        "validate": _validate_section(),
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$@train_fp.close()", "$@val_fp.close()"],
    }


def classification_metadata(eval_metrics: dict[str, float]) -> dict[str, Any]:
    """metadata.json of the classification bundle, like the endoscopic one's."""
    rgb = {"0": "R", "1": "G", "2": "B"}
    return metadata_base(
        name="Endoscopic inbody classification (synthetic demo)",
        task="Endoscopic inbody classification",
        description="A tiny binary classifier trained on synthetic RGB frames: reddish blobs are in body, bluish stripes out body",
        data_type="RGB",
        image_classes="three channel data, intensity [0-255]",
        label_classes="0: inbody, 1: outbody",
        pred_classes="vector whose length equals to 2: softmax scores of in body and out body",
        eval_metrics=eval_metrics,
        network_data_format={
            "inputs": {"image": io_format("magnitude", "RGB", rgb, RGB_SIZE, False, modality="regular")},
            "outputs": {
                "pred": io_format("probabilities", "classes", {"0": "in body", "1": "out body"}, [1, 2], False)
            },
        },
    )
