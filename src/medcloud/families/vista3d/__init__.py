"""The VISTA-3D family: the official VISTA-3D bundle (from `MEDCLOUD_VISTA3D_BUNDLE`) with class and point prompts.

`family.py` is what the registry sees; `predictor.py` (with `prompts`, `transforms`, `window`, `cache`)
serves the model warm, `train.py` (with `patches`) fine-tunes it, `demo.py` builds the small demo bundle.
"""

from medcloud.families.vista3d.family import FAMILY

__all__ = ["FAMILY"]
