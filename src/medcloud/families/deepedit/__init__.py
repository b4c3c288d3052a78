"""The DeepEdit family: automatic and interactive segmentation with the official `spleen_deepedit_annotation` layout.

`family.py` is what the registry sees; `predictor.py` serves the bundle's own inference config with
clicks (`prompts.py` checks them), `demo.py` builds the small demo bundle.
"""

from medcloud.families.deepedit.family import FAMILY

__all__ = ["FAMILY"]
