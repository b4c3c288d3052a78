"""`medcloud.paths`: a client-controlled name is one harmless component and never leads outside its root."""

from __future__ import annotations

import os

import pytest

from medcloud.errors import Invalid
from medcloud.paths import child_path, safe_path_component


@pytest.mark.parametrize("name", ["ct_000", "1.2.840.113619.2.55", "a b", "ünïcode", "-x", ".hidden", "x" * 255])
def test_plain_names_are_kept(name):
    assert safe_path_component(name, "image id") == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "not a non-empty string"),
        (None, "not a non-empty string"),
        (5, "not a non-empty string"),
        (".", "current or parent folder"),
        ("..", "current or parent folder"),
        ("../../x", "path separator"),
        ("/etc", "path separator"),
        ("a\\b", "path separator"),
        ("x\x00y", "control character"),
        ("x\ny", "control character"),
        ("x" * 256, "longer than 255 bytes"),
    ],
)
def test_unsafe_names_are_400_naming_them(name, why):
    with pytest.raises(Invalid) as caught:
        safe_path_component(name, "image id")
    assert caught.value.message.startswith(f"Invalid Input. The image id {name!r} cannot name a folder")
    assert why in caught.value.message


def test_child_path_joins_safe_parts(tmp_path):
    assert child_path(tmp_path, "a", "b") == tmp_path / "a" / "b"
    with pytest.raises(Invalid):
        child_path(tmp_path, "a", "..")


def test_child_path_refuses_a_link_that_leads_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(Invalid, match="leads outside"):
        child_path(root, "link", what="image folder")
    assert child_path(root, "plain") == root / "plain"
