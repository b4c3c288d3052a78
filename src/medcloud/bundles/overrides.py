"""Client values that reach a MONAI config: refused when MONAI would evaluate, resolve or instantiate them.

MONAI's `ConfigParser` runs any string starting with `$` as Python, resolves `@id` references and
`%file#id` macros, and instantiates (or runs the `_requires_` of) any dict with a special key. A
client value merged into a bundle config (`model_params.override`, `bundle_params`, train `specs`)
must therefore be plain data: strings, numbers, booleans, null, lists and objects of those. The
server's own values (`output_dir` as `"$'/abs/path'"`, `"$numpy.uint8"`) are never checked here.
An operator who trusts every client can allow expressions (`MEDCLOUD_ALLOW_EXPRESSION_OVERRIDES`);
the keys the server owns stay refused either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

from medcloud.errors import Invalid

SIGILS = ("$", "@", "%")  # monai.bundle.utils EXPR_KEY, ID_REF_KEY, MACRO_KEY
SEPARATORS = ("#", "::")  # monai.bundle.utils ID_SEP_KEY and the older `#` it still accepts
# `_target_`, `_requires_`, `_disabled_`, `_desc_`, `_mode_`, and whatever MONAI adds in that form.
_SPECIAL_KEY = re.compile(r"_[A-Za-z]+_")
MAX_DEPTH = 64
SETTING = "MEDCLOUD_ALLOW_EXPRESSION_OVERRIDES"
# Model processes (hosts, job model runs) have no settings: the trusted side that writes their host spec
# passes the operator's choice under this name; absent, it is off.
HOST_SPEC_FLAG = "allow_expression_overrides"
# Set by the server on every run: a client value there would move where code, checkpoints or outputs
# live, or replace the data lists the server built.
SERVER_OWNED = frozenset(
    {
        "bundle_root",
        "ckpt_dir",
        "output_dir",
        "dataset#data",
        "train#dataset#data",
        "validate#dataset#data",
        "workflow_type",
        "finetune_model_path",
    }
)
# Train specs are passed as `ConfigWorkflow(**overrides)`: these names would be taken as its arguments
# (which components run, a properties file to read), not as config overrides.
WORKFLOW_ARGUMENTS = frozenset({"init_id", "run_id", "final_id", "properties_path"})
TRAIN_FORBIDDEN = SERVER_OWNED | WORKFLOW_ARGUMENTS
BUNDLE_FILE_KEYS = {"config_file": True, "logging_file": False, "meta_file": False}  # name -> a list is allowed


def _refused(path: str, reason: str) -> Invalid:
    return Invalid(
        f"Invalid Input. `{path}` {reason}: expressions, references and components are not accepted from "
        f"clients (an operator can allow expressions with {SETTING})."
    )


def _normalised(key: str) -> str:
    return key.replace("::", "#")


def _segments(key: str) -> list[str]:
    return _normalised(key).split("#")


def _sigil(text: str) -> str | None:
    # MONAI looks at the first character only; leading blanks are refused too, so no later strip() revives one.
    stripped = text.lstrip()
    return stripped[0] if stripped[:1] in SIGILS else None


def _join(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def _check_key(key: object, path: str) -> None:
    if not isinstance(key, str):
        raise Invalid(f"Invalid Input. `{path}` has a key that is not a string.")
    if _SPECIAL_KEY.fullmatch(key.strip()):
        raise _refused(path, f"is the MONAI special key `{key.strip()}`")
    if any(sep in key for sep in SEPARATORS):
        # Below the top level a `#` would make ids that point at other components of the config.
        raise Invalid(
            f"Invalid Input. The key `{path}` contains `#` (or `::`): only a top-level override key may name a "
            "place in the bundle's config."
        )


def expressions_allowed(host_spec: Mapping[str, Any] | None) -> bool:
    """The operator's `allow_expression_overrides`, as the trusted side wrote it into a model process's host spec."""
    return bool((host_spec or {}).get(HOST_SPEC_FLAG, False))


def check_value(value: Any, where: str, *, allow_expressions: bool = False) -> None:
    """Refuse any string that starts with `$`, `@` or `%` and any special or `#` key, at any depth."""
    if allow_expressions:
        return
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Invalid(f"Invalid Input. `{path}` is nested more than {MAX_DEPTH} levels deep.")
        if isinstance(item, str):
            sigil = _sigil(item)
            if sigil is not None:
                raise _refused(path, f"starts with `{sigil}`")
        elif isinstance(item, Mapping):
            for key, child in item.items():
                child_path = _join(path, key)
                _check_key(key, child_path)
                stack.append((child, child_path, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, _join(path, index), depth + 1) for index, child in enumerate(item))
        elif not (item is None or isinstance(item, bool | int | float)):
            raise Invalid(f"Invalid Input. `{path}` is not a JSON value.")


def forbidden_keys(overrides: Mapping[str, Any], forbidden: Iterable[str] = SERVER_OWNED) -> list[str]:
    """The keys of `overrides` that set (or reach inside) a key the server owns."""
    owned = {_normalised(k) for k in forbidden}
    bad = []
    for key in overrides:
        normal = _normalised(str(key))
        if any(normal == k or normal.startswith(k + "#") for k in owned):
            bad.append(str(key))
    return sorted(bad)


def check_overrides(
    overrides: Any, where: str, *, allow_expressions: bool = False, forbidden: Iterable[str] = SERVER_OWNED
) -> dict[str, Any]:
    """Bundle overrides: top-level keys are config ids (`train#trainer#max_epochs`), values plain data."""
    if not isinstance(overrides, Mapping):
        raise Invalid(f"Invalid Input. `{where}` must be an object.")
    bad = forbidden_keys(overrides, forbidden)
    if bad:
        raise Invalid(f"Invalid Input. `{where}` may not set {', '.join(bad)}: the server controls it.")
    for key, value in overrides.items():
        path = _join(where, key)
        if not isinstance(key, str):
            raise Invalid(f"Invalid Input. `{where}` has a key that is not a string.")
        if not allow_expressions:
            segments = _segments(key)
            # An empty id replaces the whole config (`parser[""] = ...`); an empty segment is a typo at best.
            if not all(s.strip() for s in segments):
                raise Invalid(f"Invalid Input. `{path}` is not a config id: it is empty or has an empty part.")
            special = next((s for s in segments if _SPECIAL_KEY.fullmatch(s.strip())), None)
            if special is not None:
                raise _refused(path, f"reaches the MONAI special key `{special.strip()}`")
        check_value(value, path, allow_expressions=allow_expressions)
    return dict(overrides)


def check_params(params: Any, where: str, *, allow_expressions: bool = False) -> dict[str, Any]:
    """Per-image parameters (`bundle_params`): merged into a `dataset#data` item, so every key is plain."""
    if not isinstance(params, Mapping):
        raise Invalid(f"Invalid Input. `{where}` must be an object.")
    check_value(params, where, allow_expressions=allow_expressions)
    return dict(params)


def check_bundle_file(value: Any, key: str, where: str, *, many: bool) -> None:
    """A bundle file name (`configs/train.json`): relative, inside the bundle folder, a string (or list)."""
    items = value if many and isinstance(value, list) and value else [value]
    kind = "a string or a non-empty list of strings" if many else "a string"
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise Invalid(f"Invalid Input. `{where}.{key}` must be {kind} (a path inside the bundle).")
        path = PurePosixPath(item.replace("\\", "/"))
        if path.is_absolute() or re.match(r"^[A-Za-z]:", item) or ".." in path.parts:
            raise Invalid(
                f"Invalid Input. `{where}.{key}` {item!r} must be a relative path that stays inside the bundle."
            )


def check_train_specs(specs: Any, where: str = "specs", *, allow_expressions: bool = False) -> dict[str, Any]:
    """Train specs: bundle overrides plus the keys the server reads (`config_file`, `tracking`...)."""
    checked = check_overrides(specs, where, allow_expressions=allow_expressions, forbidden=TRAIN_FORBIDDEN)
    for key, many in BUNDLE_FILE_KEYS.items():
        if checked.get(key) not in (None, ""):  # empty means the default, as before
            check_bundle_file(checked[key], key, where, many=many)
    # MONAI takes a string here as the file to write the executed config to: a client-chosen path.
    if "save_execute_config" in checked and not isinstance(checked["save_execute_config"], bool):
        raise Invalid(f"Invalid Input. `{where}.save_execute_config` must be true or false.")
    return checked
