"""Local-path datasets and `local` workspaces: off by default; when on, only inside the org's roots, links resolved."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_api
from tiny_datasets import ct, write_dataset

from medcloud.config import Settings
from medcloud.demo.setup import with_demo_local_paths

DEFAULT_ALLOW = Settings.model_fields["dataset_allow_local_paths"].default
DEFAULT_ROOTS = Settings.model_fields["dataset_local_roots"].default_factory()  # type: ignore[misc]


def dataset_body(folder: Path | str) -> dict:
    return {"name": "local", "client_url": str(folder)}


def workspace_body(folder: Path | str) -> dict:
    return {"name": "w", "cloud_type": "local", "cloud_specific_details": {"cloud_bucket_name": str(folder)}}


def assert_refused(resp, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == 400, resp.text
    for fragment in fragments:
        assert fragment in resp.json()["error_desc"], resp.text


def names(api, kind: str, user: str = "alice", org: str = "acme") -> list[str]:  # type: ignore[no-untyped-def]
    return [row["name"] for row in api.get(kind, user=user, org=org).json()[kind]]


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """Roots of two orgs, a dataset in each and one outside both; a link in acme's root to the outside one."""
    acme, other, outside = tmp_path / "roots" / "acme", tmp_path / "roots" / "other", tmp_path / "outside"
    for folder, seed in ((acme / "ds", 1), (other / "ds", 2), (outside / "ds", 3)):
        write_dataset(folder, {"a": ct(seed)})
    (acme / "link").symlink_to(outside / "ds", target_is_directory=True)
    return {"acme": acme, "other": other, "outside": outside}


def test_local_paths_are_off_by_default_and_refusals_create_nothing(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    assert DEFAULT_ALLOW is False and DEFAULT_ROOTS == {}
    with make_api(tmp_path / "data", dataset_allow_local_paths=DEFAULT_ALLOW, dataset_local_roots=DEFAULT_ROOTS) as api:
        for form in (str(tree["acme"] / "ds"), f"file://{tree['acme'] / 'ds'}", str(tree["acme"] / "ds/manifest.json")):
            assert_refused(api.post("datasets", json=dataset_body(form)), "not allowed", "ALLOW_LOCAL_PATHS")
        assert_refused(api.post("workspaces", json=workspace_body(tree["acme"])), "not allowed")
        assert names(api, "datasets") == [] and names(api, "workspaces") == []


def test_on_without_roots_refuses_and_names_the_setting(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    with make_api(tmp_path / "data", dataset_allow_local_paths=True, dataset_local_roots={}) as api:
        assert_refused(api.post("datasets", json=dataset_body(tree["acme"] / "ds")), "MEDCLOUD_DATASET_LOCAL_ROOTS")
        assert_refused(api.post("workspaces", json=workspace_body(tree["acme"])), "MEDCLOUD_DATASET_LOCAL_ROOTS")
        assert names(api, "datasets") == [] and names(api, "workspaces") == []


def test_roots_per_org_inside_outside_links_and_other_orgs(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    roots = {"acme": [str(tree["acme"])], "other": [str(tree["other"])]}
    with make_api(tmp_path / "data", dataset_allow_local_paths=True, dataset_local_roots=roots) as api:
        inside = api.post("datasets", json=dataset_body(tree["acme"] / "ds"))
        assert inside.status_code == 201, inside.text
        # the image is served: the folder is really used, not only accepted
        volume = api.get(f"datasets/{inside.json()['id']}/images/a/volume")
        assert volume.status_code == 200 and len(volume.content) > 16 * 16 * 8 * 2
        refused = [
            tree["outside"] / "ds",  # outside every root
            f"file://{tree['outside'] / 'ds'}",
            tree["acme"] / "link",  # a link inside the root to a folder outside it
            tree["acme"] / "link" / "manifest.json",
            tree["acme"] / ".." / ".." / "outside" / "ds",  # dots climbing out
            tree["other"] / "ds",  # another org's root
        ]
        for form in refused:
            assert_refused(api.post("datasets", json=dataset_body(form)), "MEDCLOUD_DATASET_LOCAL_ROOTS", "org acme")
        assert_refused(api.post("datasets", json=dataset_body(f"{tree['acme']}/ds\x00x")), "NUL character")
        assert_refused(api.post("workspaces", json=workspace_body(f"{tree['acme']}\x00x")), "NUL character")
        message = api.post("datasets", json=dataset_body(tree["acme"] / "link")).json()["error_desc"]
        assert str(tree["outside"]) not in message  # where a link leads is never shown
        assert names(api, "datasets") == ["local"]
        # eve's org has its own root
        assert api.post("datasets", json=dataset_body(tree["other"] / "ds"), user="eve", org="other").status_code == 201
        assert_refused(
            api.post("datasets", json=dataset_body(tree["acme"] / "ds"), user="eve", org="other"), "org other"
        )

        (tree["acme"] / "results").mkdir()
        assert api.post("workspaces", json=workspace_body(tree["acme"] / "results")).status_code == 201
        for form in (tree["outside"], tree["acme"] / "link", tree["other"]):
            assert_refused(api.post("workspaces", json=workspace_body(form)), "MEDCLOUD_DATASET_LOCAL_ROOTS")
        assert names(api, "workspaces") == ["w"]
        # inline storage of an experiment is checked the same way, before anything is fetched
        inline = {"cloud_type": "local", "cloud_bucket_name": str(tree["outside"])}
        experiment = {"name": "e", "network_arch": "monai_custom", "bundle_url": "file:///nowhere.zip"}
        assert_refused(api.post("experiments", json={**experiment, "cloud_details": inline}), "org acme")


def test_every_org_root(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    roots = {"*": [str(tree["outside"])], "acme": [str(tree["acme"])]}
    with make_api(tmp_path / "data", dataset_allow_local_paths=True, dataset_local_roots=roots) as api:
        assert api.post("datasets", json=dataset_body(tree["outside"] / "ds")).status_code == 201
        assert (
            api.post("datasets", json=dataset_body(tree["outside"] / "ds"), user="eve", org="other").status_code == 201
        )
        assert api.post("datasets", json=dataset_body(tree["acme"] / "ds")).status_code == 201
        assert_refused(
            api.post("datasets", json=dataset_body(tree["acme"] / "ds"), user="eve", org="other"), "org other"
        )


def test_a_folder_swapped_for_a_link_after_creation_is_refused_at_use(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    roots = {"acme": [str(tree["acme"])]}
    secret = np.full((16, 16, 8), 1234, dtype=np.int16)
    write_dataset(tree["outside"] / "secret", {"a": secret})
    with make_api(tmp_path / "data", dataset_allow_local_paths=True, dataset_local_roots=roots) as api:
        created = api.post("datasets", json=dataset_body(tree["acme"] / "ds"))
        assert created.status_code == 201, created.text
        shutil.rmtree(tree["acme"] / "ds")
        (tree["acme"] / "ds").symlink_to(tree["outside"] / "secret", target_is_directory=True)
        resp = api.get(f"datasets/{created.json()['id']}/images/a/volume")
        assert_refused(resp, "MEDCLOUD_DATASET_LOCAL_ROOTS")
        assert np.int16(1234).tobytes() * 4 not in resp.content


def test_a_file_in_the_dataset_that_links_out_is_never_read(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    roots = {"acme": [str(tree["acme"])]}
    secret = np.full((16, 16, 8), 4321, dtype=np.int16)
    write_dataset(tree["outside"] / "secret", {"a": secret})
    image = tree["acme"] / "ds" / "images" / "a.nii.gz"
    image.unlink()
    image.symlink_to(tree["outside"] / "secret" / "images" / "a.nii.gz")
    with make_api(tmp_path / "data", dataset_allow_local_paths=True, dataset_local_roots=roots) as api:
        created = api.post("datasets", json=dataset_body(tree["acme"] / "ds"))
        assert created.status_code == 201, created.text
        resp = api.get(f"datasets/{created.json()['id']}/images/a/volume")
        assert_refused(resp, "leads out of the dataset's folder")
        assert np.int16(4321).tobytes() * 4 not in resp.content
        assert api.ctx.cache.lookup(created.json()["id"], "a") is None


def test_the_demo_opens_its_own_folder_to_its_own_org_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = with_demo_local_paths(Settings(data_dir=data_dir, demo_org="acme"))
    demo_root = str((data_dir / "demo").resolve())
    assert settings.dataset_allow_local_paths is True and settings.dataset_local_roots == {"acme": [demo_root]}
    kept = with_demo_local_paths(
        Settings(data_dir=data_dir, dataset_allow_local_paths=False, dataset_local_roots={"x": ["/srv/x"]})
    )
    assert kept.dataset_allow_local_paths is False  # the operator's explicit choice stands
    assert kept.dataset_local_roots == {"x": ["/srv/x"], kept.demo_org: [demo_root]}

    write_dataset(data_dir / "demo" / "mine", {"a": ct(4)})
    write_dataset(tmp_path / "elsewhere", {"a": ct(5)})
    allowed = {"dataset_allow_local_paths": True, "dataset_local_roots": settings.dataset_local_roots}
    with make_api(data_dir, **allowed) as api:
        assert api.post("datasets", json=dataset_body(data_dir / "demo" / "mine")).status_code == 201
        assert_refused(api.post("datasets", json=dataset_body(tmp_path / "elsewhere")), "org acme")
        assert_refused(
            api.post("datasets", json=dataset_body(data_dir / "demo" / "mine"), user="eve", org="other"), "org other"
        )


def test_roots_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        Settings(dataset_local_roots={"acme": ["relative/dir"]})
