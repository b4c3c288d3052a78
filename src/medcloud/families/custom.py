"""The custom-bundle family: any MONAI bundle from `bundle_url` (or a base experiment of the caller's).

It is `ModelFamily` as it is: served by the bundle's own `configs/inference.json`
(`inference/predictors.py` `BundlePredictor`), trained by its own `configs/train.json`
(`modelrun/train.py`). `monai_segmentation` and `monai_classification` are the same family by name.
"""

from __future__ import annotations

from medcloud.families.base import ModelFamily


class CustomBundleFamily(ModelFamily):
    name = "custom"
    archs = ("monai_custom", "monai_segmentation", "monai_classification")


FAMILY = CustomBundleFamily()
