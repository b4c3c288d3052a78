"""Configs of the segmentation demo bundle, shaped like the model zoo's spleen_ct_segmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medcloud.demo.configs import (
    AMP,
    DEVICE,
    FROM_ENGINE,
    checkpoint_saver,
    evaluator,
    inference_tail,
    io_format,
    loader,
    metadata_base,
    train_handlers,
    trainer,
)
from medcloud.demo.synthetic import CT_SPACING


def _ct_transforms(keys: str | list[str], modes: str | list[str]) -> list[dict[str, Any]]:
    return [
        {"_target_": "LoadImaged", "keys": keys},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": keys, "pixdim": list(CT_SPACING), "mode": modes},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image" if isinstance(keys, list) else keys,
            "a_min": -57,
            "a_max": 164,
            "b_min": 0,
            "b_max": 1,
            "clip": True,
        },
        {"_target_": "EnsureTyped", "keys": keys},
    ]


def unet_def(channels: Sequence[int], strides: Sequence[int], num_res_units: int) -> dict[str, Any]:
    """The spleen bundle's `network_def` with a chosen size."""
    return {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": list(channels),
        "strides": list(strides),
        "num_res_units": num_res_units,
        "norm": "batch",
    }


def _sliding_window(roi_size: Sequence[int]) -> dict[str, Any]:
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": list(roi_size),
        "sw_batch_size": 4,
        "overlap": 0.25,
    }


def _inference_postprocessing() -> list[dict[str, Any]]:
    # Invertd undoes Orientationd/Spacingd, so the label map lands on the input's own voxel grid.
    return [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "@image_key",
            "nearest_interp": False,
            "to_tensor": True,
        },
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_ext": "@output_ext",
            "output_dtype": "@output_dtype",
            "output_postfix": "@output_postfix",
            "separate_folder": "@separate_folder",
        },
    ]


def segmentation_inference(network_def: dict[str, Any], roi_size: Sequence[int]) -> dict[str, Any]:
    """inference.json of the segmentation bundle, with the spleen one's top-level keys."""
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32",
        "output_postfix": "trans",
        "separate_folder": True,
        "load_pretrain": True,
        "dataset_dir": "$@bundle_root + '/sample_data'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": DEVICE,
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _ct_transforms("@image_key", "bilinear")},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": loader("@dataset", 1, False),
        "inferer": _sliding_window(roi_size),
        "postprocessing": {"_target_": "Compose", "transforms": _inference_postprocessing()},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": evaluator("@dataloader", "@inferer", "@postprocessing", "@handlers", amp=AMP),
        **inference_tail(),
    }


_PAIRS = "[{'image': i, 'label': l} for i, l in zip(@images, @labels)]"


def _train_section(roi_size: Sequence[int]) -> dict[str, Any]:
    keys = ["image", "label"]
    onehot = {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2}
    crop = {
        "_target_": "RandCropByPosNegLabeld",
        "keys": keys,
        "label_key": "label",
        "spatial_size": list(roi_size),
        "pos": 1,
        "neg": 1,
        "num_samples": 4,
        "image_key": "image",
        "image_threshold": 0,
    }
    return {
        "deterministic_transforms": _ct_transforms(keys, ["bilinear", "nearest"]),
        "random_transforms": [crop],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": "$@train#deterministic_transforms + @train#random_transforms",
        },
        "dataset": {
            "_target_": "CacheDataset",
            "data": f"${_PAIRS}[:-@val_count]",
            "transform": "@train#preprocessing",
            "cache_rate": 1.0,
            "num_workers": 0,
        },
        "dataloader": loader("@train#dataset", 2, True),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}, onehot],
        },
        "handlers": train_handlers(),
        "key_metric": {"train_accuracy": {"_target_": "ignite.metrics.Accuracy", "output_transform": FROM_ENGINE}},
        "trainer": trainer(amp=AMP),
    }


def _validate_section(roi_size: Sequence[int]) -> dict[str, Any]:
    return {
        "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
        "dataset": {
            "_target_": "CacheDataset",
            "data": f"${_PAIRS}[-@val_count:]",
            "transform": "@validate#preprocessing",
            "cache_rate": 1.0,
        },
        "dataloader": loader("@validate#dataset", 1, False),
        "inferer": _sliding_window(roi_size),
        "postprocessing": "%train#postprocessing",
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}, checkpoint_saver()],
        "key_metric": {
            "val_mean_dice": {
                "_target_": "MeanDice",
                "include_background": False,
                "output_transform": FROM_ENGINE,
            }
        },
        "evaluator": evaluator(
            "@validate#dataloader",
            "@validate#inferer",
            "@validate#postprocessing",
            "@validate#handlers",
            key_val_metric="@validate#key_metric",
            amp=AMP,
        ),
    }


def segmentation_train(network_def: dict[str, Any], roi_size: Sequence[int]) -> dict[str, Any]:
    """train.json of the segmentation bundle: labelsTr/imagesTr under `dataset_dir`, the last `val_count` pairs validate."""
    return {
        "imports": ["$import glob", "$import os", "$import ignite"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/synthetic_ct",
        # Images are found from the labels so that unlabeled volumes in imagesTr cannot shift the pairing.
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/labelsTr/*.nii.gz')))",
        "images": "$[os.path.join(@dataset_dir, 'imagesTr', os.path.basename(l)) for l in @labels]",
        "val_count": 1,
        "val_interval": 1,
        "epochs": 50,
        "device": DEVICE,
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "loss": {
            "_target_": "DiceCELoss",
            "include_background": True,
            "to_onehot_y": True,
            "softmax": True,
            "squared_pred": True,
            "batch": True,
            "smooth_nr": 1e-05,
            "smooth_dr": 1e-05,
            "lambda_dice": 0.5,
            "lambda_ce": 0.5,
        },
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.003},
        "train": _train_section(roi_size),
        "validate": _validate_section(roi_size),
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@train#trainer.run()"],
    }


def segmentation_metadata(roi_size: Sequence[int], eval_metrics: dict[str, float]) -> dict[str, Any]:
    """metadata.json of the segmentation bundle, like the spleen one's."""
    return metadata_base(
        name="Spleen CT segmentation (synthetic demo)",
        task="Decathlon spleen segmentation",
        description="A small 3D UNet trained on synthetic CT volumes whose 'spleen' is a bright sphere",
        data_type="nibabel",
        image_classes="single channel data, intensity scaled to [0, 1]",
        label_classes="single channel data, 1 is spleen, 0 is everything else",
        pred_classes="2 channels OneHot data, channel 1 is spleen, channel 0 is background",
        eval_metrics=eval_metrics,
        network_data_format={
            "inputs": {"image": io_format("image", "hounsfield", {"0": "image"}, roi_size, True, modality="CT")},
            "outputs": {"pred": io_format("image", "segmentation", {"0": "background", "1": "spleen"}, roi_size, True)},
        },
    )
