"""Checks that a folder is a usable MONAI bundle and reads what experiments need from it.

Only JSON/YAML is parsed here (no expression is evaluated): a bundle's code runs in model hosts
and job processes, never in the API process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from medcloud.bundles.fetch import BundleError
from medcloud.inference.predictors import CONFIG_NAMES


def read_config(path: Path) -> dict[str, Any]:
    try:
        content = ConfigParser.load_config_file(path)
    except Exception as exc:
        raise BundleError(f"{path.name} cannot be parsed: {exc}") from None
    if not isinstance(content, dict):
        raise BundleError(f"{path.name} is not a JSON/YAML object")
    return content


def check_bundle(folder: Path, *, realtime: bool) -> dict[str, Any]:
    """Return the bundle's metadata; raise BundleError if it cannot serve as asked."""
    meta = read_config(folder / "configs" / "metadata.json")
    if realtime:
        configs = [folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file()]
        if not configs:
            raise BundleError("no configs/inference.json|yaml for real-time inference")
        config = read_config(configs[0])
        if "dataset" not in config or not ("evaluator" in config or "run" in config):
            raise BundleError("the inference config has no `dataset` and `evaluator` (or `run`)")
    return meta


def labels_from_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """`network_data_format.outputs.pred.channel_def`, lowercased, without background."""
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    channel_def = pred.get("channel_def") or {}
    return {str(k): str(v).lower() for k, v in channel_def.items() if str(v).lower() != "background"}
