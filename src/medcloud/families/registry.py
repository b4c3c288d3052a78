"""The one registry of model families, keyed by `network_arch`.

Adding a family: write its folder under `medcloud/families/` (a `ModelFamily` subclass exported as
`FAMILY`, see `base.py` and docs/architecture.md) and add its archs here. Families are imported on
first use, so importing the registry (the API schemas do, for the list of archs) costs nothing.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

from medcloud.families.base import ModelFamily

# network_arch → the module whose FAMILY handles it
_MODULES: dict[str, str] = {
    "monai_custom": "medcloud.families.custom",
    "monai_segmentation": "medcloud.families.custom",
    "monai_classification": "medcloud.families.custom",
    "monai_vista3d": "medcloud.families.vista3d",
    "monai_annotation": "medcloud.families.deepedit",
}
NETWORK_ARCHS: tuple[str, ...] = tuple(_MODULES)
# Host kinds written by earlier versions (a HostSpec of a job stored before families existed).
_OLD_KINDS = {"bundle": "custom"}


@cache
def _load(module: str) -> ModelFamily:
    family = import_module(module).FAMILY
    assert isinstance(family, ModelFamily), module
    return family


def family_of(network_arch: str) -> ModelFamily:
    """The family of an experiment's `network_arch` (KeyError for one the registry does not know)."""
    return _load(_MODULES[network_arch])


def families() -> list[ModelFamily]:
    """Every family once, in registry order."""
    return [_load(m) for m in dict.fromkeys(_MODULES.values())]


def family_named(kind: str) -> ModelFamily:
    """The family whose `name` is a host spec's `kind`."""
    kind = _OLD_KINDS.get(kind, kind)
    for family in families():
        if family.name == kind:
            return family
    raise KeyError(f"no model family named {kind!r}")
