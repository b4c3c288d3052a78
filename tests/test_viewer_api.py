"""The viewer's routes: image volume and label as raw NRRD, saving a label (local, S3, DICOMweb), ApiKey auth."""

from __future__ import annotations

import gzip
import io
import json
import time
import uuid
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import make_api
from helpers import multipart_parts
from sqlalchemy import select
from tiny_datasets import label_nrrd

from medcloud.auth import service as auth
from medcloud.datasets.orm import Notification
from medcloud.demo.synthetic import ct_affine, synthetic_ct_arrays, write_demo_dataset

UNKNOWN = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
LABELS = {"1": "spleen", "2": "liver"}
BIG_SHAPE = (256, 256, 128)


# Fixtures (module scope: one app, one dataset, one warm model) ---------------------------------------------


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def _viewer_dataset(root: Path) -> Path:
    """The demo dataset (3 CTs, 2 labeled; 1 PNG) plus an int16 256x256x128 CT and two float CTs, all unlabeled."""
    manifest_path = write_demo_dataset(root, n_ct=3, n_rgb=1)
    doc = json.loads(manifest_path.read_text())
    rs = np.random.RandomState(0)
    big = rs.randint(-1024, 2000, size=BIG_SHAPE).astype(np.int16)
    _save(big, ct_affine(), root / "imagesTr/big_ct.nii.gz")
    doc["data"].append({"image": {"path": ["imagesTr/big_ct.nii.gz"], "id": "big-ct"}, "note": {"keep": [1, 2]}})
    for name in ("spare", "hostile", "race"):
        _save(synthetic_ct_arrays(seed=len(name))[0], ct_affine(), root / f"extra/{name}.nii.gz")
        doc["data"].append({"image": {"path": [f"extra/{name}.nii.gz"], "id": name}})
    doc["description"] = "kept exactly"
    manifest_path.write_text(json.dumps(doc, indent=2))
    return root


@pytest.fixture(scope="module")
def vapi(tmp_path_factory):
    with make_api(tmp_path_factory.mktemp("viewerapi") / "data", max_label_body_bytes=100 * 1024**2) as api:
        yield api


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    return _viewer_dataset(tmp_path_factory.mktemp("viewerdata") / "dataset")


@pytest.fixture(scope="module")
def dataset_id(vapi, dataset_root) -> str:
    resp = vapi.post("datasets", json={"name": "local", "client_url": str(dataset_root)})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.fixture(scope="module")
def experiment(vapi, dataset_id, demo_zips) -> dict:
    body = {
        "name": "viewer",
        "network_arch": "monai_custom",
        "inference_dataset": dataset_id,
        "realtime_infer": True,
        "bundle_url": f"file://{demo_zips['segmentation']}",
        "model_params": {"labels": LABELS},
    }
    resp = vapi.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def entry_of(root: Path, image_id: str) -> dict:
    return next(e for e in manifest(root)["data"] if e["image"]["id"] == image_id)


def read_nrrd(data: bytes) -> tuple[dict, np.ndarray]:
    stream = io.BytesIO(data)
    header = nrrd.read_header(stream)
    voxels = nrrd.read_data(header, stream, index_order="F")
    return header, voxels


def put_label(api, dataset_id, image_id, body, *, experiment_id=None, user="alice", headers=None):
    params = {"experiment_id": experiment_id} if experiment_id else {}
    return api.client.put(
        api.url(f"datasets/{dataset_id}/images/{image_id}/label"),
        content=body,
        params=params,
        headers=headers or {**api.headers(user), "Content-Type": "application/octet-stream"},
    )


def notifications(api, dataset_id) -> list[tuple[str, str, str]]:
    with api.ctx.db.session() as session:
        rows = session.scalars(
            select(Notification).where(Notification.dataset_id == dataset_id).order_by(Notification.seq)
        )
        return [(n.section, n.image_id, n.label_id) for n in rows]


def sphere(shape, center, radius, value) -> np.ndarray:
    grid = np.indices(shape)
    inside = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2
    return (inside * value).astype(np.uint8)


# The image volume ------------------------------------------------------------------------------------------


def test_volume_has_the_segmentation_outputs_header_and_the_images_voxels(vapi, dataset_root, dataset_id, experiment):
    entry = manifest(dataset_root)["data"][0]
    image_id, path = entry["image"]["id"], dataset_root / entry["image"]["path"][0]
    resp = vapi.get(f"datasets/{dataset_id}/images/{image_id}/volume")
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert int(resp.headers["Content-Length"]) == len(resp.content)
    header, voxels = read_nrrd(resp.content)
    # A real segmentation output of the same image: the same geometry fields, voxel for voxel the same grid.
    seg = multipart_parts(
        vapi.post(f"experiments/{experiment['id']}/jobs", json={"action": "inference", "specs": {"image": image_id}})
    )["ct_000_seg.nrrd"]
    seg_header, _ = read_nrrd(seg)
    for key in ("space", "sizes", "space directions", "space origin", "dimension", "encoding"):
        assert np.array_equal(np.asarray(header[key]), np.asarray(seg_header[key])), key
    # ... and the affine MONAI's LoadImage sees; values are the file's (float HU here: float32).
    from monai.transforms import LoadImage

    loaded = LoadImage(image_only=True)(str(path))
    affine = np.asarray(loaded.affine)
    assert np.allclose(header["space directions"], affine[:3, :3].T) and np.allclose(
        header["space origin"], affine[:3, 3]
    )
    assert header["type"] == "float" and voxels.dtype == np.float32
    assert np.array_equal(voxels, np.asarray(nib.load(str(path)).dataobj, dtype=np.float32))
    assert vapi.ctx.cache.lookup(dataset_id, image_id) is not None  # cached: a later inference downloads nothing


def test_int16_ct_comes_back_as_int16_quickly(vapi, dataset_root, dataset_id):
    url = f"datasets/{dataset_id}/images/big-ct/volume"
    assert vapi.get(url).status_code == 200  # the first call fills the cache
    started = time.perf_counter()
    resp = vapi.get(url)
    elapsed = time.perf_counter() - started
    assert resp.status_code == 200
    header, voxels = read_nrrd(resp.content)
    assert header["type"] == "int16" and list(header["sizes"]) == list(BIG_SHAPE)
    expected = np.asarray(nib.load(str(dataset_root / "imagesTr/big_ct.nii.gz")).dataobj)
    assert np.array_equal(voxels, expected)
    # The OHIF-style reading: the last N bytes are the voxels, first axis fastest.
    tail = np.frombuffer(resp.content[-expected.size * 2 :], dtype="<i2").reshape(BIG_SHAPE, order="F")
    assert np.array_equal(tail, expected)
    assert elapsed < 1.0, elapsed


def test_volume_errors(vapi, dataset_root, dataset_id):
    png = next(e["image"]["id"] for e in manifest(dataset_root)["data"] if e["image"]["path"][0].endswith(".png"))
    cases = [
        (f"datasets/{dataset_id}/images/no-such-image/volume", "alice", 404, "no-such-image"),
        (f"datasets/{dataset_id}/images/..%2F..%2Fmanifest.json/volume", "alice", 404, ""),
        (f"datasets/{dataset_id}/images/../volume", "alice", 404, ""),
        (f"datasets/{dataset_id}/images/{png}/volume", "alice", 400, "3-D"),
        (f"datasets/{dataset_id}/images/big-ct/volume", "bob", 404, dataset_id),
        (f"datasets/{UNKNOWN}/images/big-ct/volume", "alice", 404, UNKNOWN),
        ("datasets/not-a-uuid/images/big-ct/volume", "alice", 400, "not a valid UUID"),
    ]
    for path, user, status, fragment in cases:
        resp = vapi.get(path, user=user)
        assert resp.status_code == status, (path, resp.text)
        assert set(resp.json()) == {"error_desc", "error_code"} and fragment in resp.json()["error_desc"]
    assert vapi.get(f"datasets/{dataset_id}/images/big-ct/volume", user="eve").status_code == 403
    assert vapi.client.get(vapi.url(f"datasets/{dataset_id}/images/big-ct/volume")).status_code == 401


def test_a_broken_image_file_is_a_clear_400(vapi, tmp_path):
    # A dataset file named .nii.gz that is not one (or is truncated): found by the schema fuzzing as a 500.
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.nii.gz").write_bytes(b"not really an image")
    (tmp_path / "manifest.json").write_text(json.dumps({"data": [{"image": {"path": ["images/a.nii.gz"], "id": "a"}}]}))
    broken = vapi.post("datasets", json={"name": "broken", "client_url": str(tmp_path)}).json()["id"]
    for resp in (vapi.get(f"datasets/{broken}/images/a/volume"), vapi.get(f"datasets/{broken}/images/a/label")):
        assert resp.status_code == 400, resp.text
        assert "cannot be read as NIfTI" in resp.json()["error_desc"]


# Labels on a local dataset ---------------------------------------------------------------------------------


def test_label_of_a_labeled_image_and_404_without_one(vapi, dataset_root, dataset_id, experiment):
    entry = manifest(dataset_root)["data"][0]
    resp = vapi.get(f"datasets/{dataset_id}/images/{entry['image']['id']}/label")
    assert resp.status_code == 200, resp.text
    header, voxels = read_nrrd(resp.content)
    truth = np.asarray(nib.load(str(dataset_root / entry["label"]["path"][0])).dataobj)
    assert header["type"] == "uint8" and header["encoding"] == "raw" and np.array_equal(voxels, truth)
    volume_header, _ = read_nrrd(vapi.get(f"datasets/{dataset_id}/images/{entry['image']['id']}/volume").content)
    for key in ("space", "sizes", "space directions", "space origin"):
        assert np.array_equal(np.asarray(header[key]), np.asarray(volume_header[key])), key
    with_experiment = vapi.get(
        f"datasets/{dataset_id}/images/{entry['image']['id']}/label", params={"experiment_id": experiment["id"]}
    )
    assert with_experiment.content[-truth.size :] == resp.content[-truth.size :]
    none = vapi.get(f"datasets/{dataset_id}/images/spare/label")
    assert none.status_code == 404 and "has no label" in none.json()["error_desc"]


def test_saving_a_label_adds_then_updates_it(vapi, dataset_root, dataset_id, experiment):
    from medcloud.datasets import service
    from medcloud.learning.tickets import dataset_input
    from medcloud.worker.datalist import labeled_items

    before = manifest(dataset_root)
    affine = nib.load(str(dataset_root / "imagesTr/big_ct.nii.gz")).affine
    first = sphere(BIG_SHAPE, (100, 120, 60), 30, 1) + sphere(BIG_SHAPE, (200, 60, 20), 10, 2)
    resp = put_label(vapi, dataset_id, "big-ct", label_nrrd(first, affine), experiment_id=experiment["id"])
    assert resp.status_code == 201, resp.text
    answer = resp.json()
    assert answer["image"] == "big-ct" and answer["notify"] == "added"
    assert answer["voxels"] == {"1": int((first == 1).sum()), "2": int((first == 2).sum())}
    label_id = answer["label"]
    assert str(uuid.UUID(label_id)) == label_id
    # The manifest: the entry names the label beside the image; every other key and entry is unchanged.
    after = manifest(dataset_root)
    entry = next(e for e in after["data"] if e["image"]["id"] == "big-ct")
    assert entry["label"] == {"path": ["imagesTr/big_ct_label.nii.gz"], "id": label_id}
    assert entry["note"] == {"keep": [1, 2]} and after["description"] == "kept exactly"
    assert after["label_key"] == before["label_key"]
    assert [e for e in after["data"] if e["image"]["id"] != "big-ct"] == [
        e for e in before["data"] if e["image"]["id"] != "big-ct"
    ]
    saved = nib.load(str(dataset_root / "imagesTr/big_ct_label.nii.gz"))
    assert saved.get_data_dtype() == np.uint8 and np.allclose(saved.affine, affine)
    assert np.array_equal(np.asarray(saved.dataobj), first)
    # nextimage no longer offers it; the label reads back; the notification is recorded as `added`.
    offered = {vapi.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"}).json()["image"] for _ in range(6)}
    assert "big-ct" not in offered
    _, back = read_nrrd(vapi.get(f"datasets/{dataset_id}/images/big-ct/label").content)
    assert np.array_equal(back, first)
    assert notifications(vapi, dataset_id) == [("added", "big-ct", label_id)]

    # Again, gzip-encoded and as int16 (values 0..255): `updated`, the same id, path and file, new voxels.
    second = sphere(BIG_SHAPE, (50, 50, 50), 20, 2).astype(np.int16)
    resp = put_label(
        vapi, dataset_id, "big-ct", label_nrrd(second, affine, encoding="gzip"), experiment_id=experiment["id"]
    )
    assert resp.status_code == 201, resp.text
    assert resp.json() == {
        "image": "big-ct",
        "label": label_id,
        "notify": "updated",
        "voxels": {"2": int((second == 2).sum())},
    }
    assert next(e for e in manifest(dataset_root)["data"] if e["image"]["id"] == "big-ct")["label"]["id"] == label_id
    assert np.array_equal(np.asarray(nib.load(str(dataset_root / "imagesTr/big_ct_label.nii.gz")).dataobj), second)
    _, back = read_nrrd(vapi.get(f"datasets/{dataset_id}/images/big-ct/label").content)
    assert np.array_equal(back, second)  # not the cached first label
    assert notifications(vapi, dataset_id) == [("added", "big-ct", label_id), ("updated", "big-ct", label_id)]
    # Training sees the new label.
    with vapi.ctx.db.session() as session:
        row = service.get_row(session, org="acme", user_id=_user_id(vapi, "alice"), dataset_id=dataset_id)
        dataset = dataset_input(vapi.ctx, session, row.id, with_notified=True)
    items = {item["image_id"]: item for item in labeled_items(vapi.ctx, dataset, LABELS)}
    assert items["big-ct"]["label_id"] == label_id
    assert np.array_equal(np.asarray(nib.load(items["big-ct"]["label"]).dataobj), second)


def test_saving_over_a_users_label_keeps_their_file(vapi, dataset_root, dataset_id):
    entry = manifest(dataset_root)["data"][1]
    image_id, old_label = entry["image"]["id"], entry["label"]
    user_file = dataset_root / old_label["path"][0]
    user_bytes = user_file.read_bytes()
    affine = nib.load(str(dataset_root / entry["image"]["path"][0])).affine
    volume = sphere((64, 64, 64), (32, 32, 32), 5, 1)
    resp = put_label(vapi, dataset_id, image_id, label_nrrd(volume, affine))  # no experiment: any 1..255
    assert resp.status_code == 201, resp.text
    assert resp.json()["notify"] == "updated" and resp.json()["label"] == old_label["id"]
    stem = Path(entry["image"]["path"][0]).name.removesuffix(".nii.gz")
    assert entry_of(dataset_root, image_id)["label"] == {
        "path": [f"imagesTr/{stem}_label.nii.gz"],
        "id": old_label["id"],
    }
    assert user_file.read_bytes() == user_bytes  # the user's own label file is left alone


def test_concurrent_saves_on_one_dataset_lose_no_entry(vapi, dataset_root, dataset_id):
    import threading

    affine = ct_affine()
    images = ["race", "spare"]
    answers = {}

    def save(image_id: str) -> None:
        answers[image_id] = put_label(
            vapi, dataset_id, image_id, label_nrrd(sphere((64, 64, 64), (20, 20, 20), 4, 1), affine)
        )

    threads = [threading.Thread(target=save, args=(i,)) for i in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for image_id in images:
        assert answers[image_id].status_code == 201, answers[image_id].text
        assert entry_of(dataset_root, image_id)["label"]["id"] == answers[image_id].json()["label"]


@pytest.fixture
def hostile_state(vapi, dataset_root, dataset_id):
    """Before and after a hostile request: the manifest bytes, the folder's files and the notifications unchanged."""
    files = sorted(p.relative_to(dataset_root) for p in dataset_root.rglob("*"))
    raw = (dataset_root / "manifest.json").read_bytes()
    count = len(notifications(vapi, dataset_id))
    yield
    assert (dataset_root / "manifest.json").read_bytes() == raw
    assert sorted(p.relative_to(dataset_root) for p in dataset_root.rglob("*")) == files
    assert len(notifications(vapi, dataset_id)) == count


def _plain_nrrd(volume: np.ndarray) -> bytes:
    out = io.BytesIO()
    nrrd.write(out, volume, {"encoding": "raw"}, index_order="F")
    return out.getvalue()


def _hostile_bodies() -> list[tuple[str, bytes | None, int, str]]:
    affine, shape = ct_affine(), (64, 64, 64)
    good = sphere(shape, (30, 30, 30), 6, 1)
    shifted = affine.copy()
    shifted[0, 3] += 0.01
    raw = label_nrrd(good, affine)
    return [
        ("not nrrd", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 400, "not an NRRD"),
        ("json", b'{"label": 1}', 400, "not an NRRD"),
        ("empty", b"", 400, "empty"),
        ("truncated", raw[:-1000], 400, "truncated"),
        ("too long", raw + b"\0" * 10, 400, "too long"),
        ("header only", raw[: raw.index(b"\n\n") - 3], 400, "header"),
        ("truncated gzip", label_nrrd(good, affine, encoding="gzip")[:-40], 400, "gzip"),
        ("wrong sizes", label_nrrd(good[:, :, :32], affine), 400, "sizes [64, 64, 32] differ"),
        ("wrong geometry", label_nrrd(good, shifted), 400, "space origin"),
        ("float", label_nrrd(good.astype(np.float32), affine), 400, "`float`"),
        ("value not in labels", label_nrrd(sphere(shape, (30, 30, 30), 6, 7), affine), 400, "7"),
        ("value over 255", label_nrrd(good.astype(np.int16) * 300, affine), 400, "0..255"),
        ("4-D", _plain_nrrd(np.zeros((*shape, 2), np.uint8)), 400, "3-D"),
        ("detached", raw.replace(b"encoding: raw", b"data file: /etc/passwd\nencoding: raw"), 400, "data file"),
        ("bzip2", raw.replace(b"encoding: raw", b"encoding: bzip2"), 400, "encoding"),
    ]


@pytest.mark.parametrize(
    ("case", "body", "status", "fragment"), _hostile_bodies(), ids=[c[0] for c in _hostile_bodies()]
)
def test_hostile_label_bodies_are_refused_and_change_nothing(
    vapi, dataset_id, experiment, hostile_state, case, body, status, fragment
):
    resp = put_label(vapi, dataset_id, "hostile", body, experiment_id=experiment["id"])
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error_desc", "error_code"} and fragment in resp.json()["error_desc"]


def test_hostile_label_requests_are_refused_and_change_nothing(
    vapi, dataset_id, experiment, bob_experiment, hostile_state
):
    body = label_nrrd(sphere((64, 64, 64), (30, 30, 30), 6, 1), ct_affine())
    cases = [
        (dataset_id, "no-such-image", experiment["id"], "alice", 404, "no-such-image"),
        (dataset_id, "..", experiment["id"], "alice", 404, ""),
        (dataset_id, "..%2Fmanifest.json", None, "alice", 404, ""),
        (UNKNOWN, "hostile", experiment["id"], "alice", 404, UNKNOWN),
        (dataset_id, "hostile", UNKNOWN, "alice", 404, "Experiment"),
        (dataset_id, "hostile", "not-a-uuid", "alice", 400, "Experiment ID passed is not a valid UUID"),
        ("not-a-uuid", "hostile", None, "alice", 400, "Dataset ID passed is not a valid UUID"),
        (dataset_id, "hostile", experiment["id"], "bob", 404, "Dataset"),  # another user's dataset
        (dataset_id, "hostile", bob_experiment, "alice", 404, "Experiment"),  # another user's experiment
        (dataset_id, "hostile", experiment["id"], "eve", 403, "member"),
    ]
    for did, image_id, eid, user, status, fragment in cases:
        resp = put_label(vapi, did, image_id, body, experiment_id=eid, user=user)
        assert resp.status_code == status, (did, image_id, eid, user, resp.text)
        assert fragment in resp.json()["error_desc"]
    assert vapi.client.put(vapi.url(f"datasets/{dataset_id}/images/hostile/label"), content=body).status_code == 401


def test_body_caps(vapi, dataset_id, hostile_state):
    from medcloud.config import Settings

    assert Settings().max_label_body_bytes >= 512 * 512 * 300 + 4096  # a 512x512x300 uint8 label fits by default
    # This app caps label bodies at 100 MiB: 80 MB is read (and refused for what it is), 101 MiB is a 413.
    resp = put_label(vapi, dataset_id, "hostile", b"\0" * (80 * 1000**2))
    assert resp.status_code == 400 and "not an NRRD" in resp.json()["error_desc"]
    resp = put_label(vapi, dataset_id, "hostile", b"\0" * (101 * 1024**2))
    assert resp.status_code == 413 and "MEDCLOUD_MAX_LABEL_BODY_BYTES" in resp.json()["error_desc"]
    # Every other route keeps the JSON cap.
    resp = vapi.post(f"datasets/{dataset_id}/jobs", content=b" " * (17 * 1024**2))
    assert resp.status_code == 413 and "MEDCLOUD_MAX_BODY_BYTES" in resp.json()["error_desc"]


# ApiKey ----------------------------------------------------------------------------------------------------


def _user_id(api, user: str) -> str:
    return api.client.post("/api/v1/login", json={"ngc_api_key": api.keys[user]}).json()["user_id"]


@pytest.fixture(scope="module")
def bob_experiment(vapi, demo_zips) -> str:
    resp = vapi.post(
        "experiments",
        user="bob",
        json={
            "name": "bobs",
            "network_arch": "monai_custom",
            "bundle_url": f"file://{demo_zips['segmentation']}",
            "model_params": {"labels": LABELS},
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_api_key_header_works_everywhere_and_revocation_is_immediate(vapi, dataset_id, experiment):
    with vapi.ctx.db.session() as session:
        key_id, key = auth.issue_api_key(session, org="acme", user="alice")
    headers = {"Authorization": f"ApiKey {key}"}
    for path in (
        "datasets",
        f"datasets/{dataset_id}",
        f"experiments/{experiment['id']}",
        f"datasets/{dataset_id}/images/big-ct/volume",
    ):
        resp = vapi.client.get(vapi.url(path), headers=headers)
        assert resp.status_code == 200, (path, resp.text)
    resp = vapi.client.post(vapi.url(f"datasets/{dataset_id}/jobs"), headers=headers, json={"action": "nextimage"})
    assert resp.status_code in (201, 404), resp.text
    assert vapi.client.get(vapi.url("datasets", org="other"), headers=headers).status_code == 403
    for bad in ("ApiKey mck_not-a-key", "ApiKey ", "Basic abc", f"apikey {key}x"):
        resp = vapi.client.get(vapi.url("datasets"), headers={"Authorization": bad})
        assert resp.status_code == 401, bad
    assert vapi.client.get(vapi.url("datasets"), headers={"Authorization": f"apikey {key}"}).status_code == 200
    with vapi.ctx.db.session() as session:
        assert auth.revoke_key(session, key_id=key_id)
    resp = vapi.client.get(vapi.url("datasets"), headers=headers)
    assert resp.status_code == 401 and resp.json()["error_code"] == 401
    assert vapi.get("datasets").status_code == 200  # alice's bearer token (another key) still works


# DICOMweb (a real Orthanc) ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(vapi, orthanc, demo_zips):
    """One CT series in a cleared Orthanc, a DICOMweb dataset of it and an experiment with two labels."""
    from dicom_data import store_ct

    orthanc.clear()
    series = store_ct(orthanc, seed=41, shape=(32, 32, 16))
    resp = vapi.post(
        "datasets",
        json={"name": "pacs", "client_url": orthanc.url, "client_id": orthanc.user, "client_secret": orthanc.password},
    )
    assert resp.status_code == 201, resp.text
    dataset = resp.json()["id"]
    resp = vapi.post(
        "experiments",
        json={
            "name": "pacs",
            "network_arch": "monai_custom",
            "train_datasets": [dataset],
            "bundle_url": f"file://{demo_zips['segmentation']}",
            "model_params": {"labels": LABELS},
        },
    )
    assert resp.status_code == 201, resp.text
    return orthanc, series, dataset, resp.json()["id"]


def _seg_in_orthanc(orthanc, seg_uid: str):
    """The SEG found by QIDO-RS, retrieved by WADO-RS and read with highdicom."""
    import highdicom as hd
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(orthanc.url, session=orthanc.session())
    found = client.search_for_series(search_filters={"Modality": "SEG", "SeriesInstanceUID": seg_uid})
    assert len(found) == 1
    study = found[0]["0020000D"]["Value"][0]
    instances = client.retrieve_series(study, seg_uid)
    assert len(instances) == 1
    return hd.seg.Segmentation.from_dataset(instances[0])


def test_dicomweb_volume_label_and_saving_a_seg(vapi, pacs):
    from medcloud.datasets import service
    from medcloud.imaging.seg import seg_to_labels
    from medcloud.imaging.series import read_series
    from medcloud.learning.dicom_labels import dicomweb_items
    from medcloud.learning.tickets import dataset_input

    orthanc, series, dataset, experiment = pacs
    base = f"datasets/{dataset}/images/{series.uid}"
    volume = vapi.get(f"{base}/volume")
    assert volume.status_code == 200, volume.text
    header, voxels = read_nrrd(volume.content)
    truth = read_series(series.datasets)
    assert header["type"] == "int16" and np.array_equal(voxels, series.hu.astype(np.int16))
    assert np.allclose(header["space directions"], truth.affine[:3, :3].T)
    assert np.allclose(header["space origin"], truth.affine[:3, 3])
    # experiment_id is required for DICOMweb; no SEG yet is a 404.
    missing = vapi.get(f"{base}/label")
    assert missing.status_code == 400 and "experiment_id" in missing.json()["error_desc"]
    assert put_label(vapi, dataset, series.uid, b"NRRD0004\n").status_code == 400
    none = vapi.get(f"{base}/label", params={"experiment_id": experiment})
    assert none.status_code == 404 and "no label" in none.json()["error_desc"]

    first = sphere(series.hu.shape, (10, 12, 8), 5, 1) + sphere(series.hu.shape, (24, 22, 6), 3, 2)
    resp = put_label(vapi, dataset, series.uid, label_nrrd(first, truth.affine), experiment_id=experiment)
    assert resp.status_code == 201, resp.text
    answer = resp.json()
    assert answer["notify"] == "added" and answer["image"] == series.uid
    assert answer["voxels"] == {"1": int((first == 1).sum()), "2": int((first == 2).sum())}
    seg = _seg_in_orthanc(orthanc, answer["label"])
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert {item.SegmentLabel for item in seg.SegmentSequence} == {"spleen", "liver"}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert np.array_equal(seg_to_labels(seg, truth, LABELS), first)
    _, back = read_nrrd(vapi.get(f"{base}/label", params={"experiment_id": experiment}).content)
    assert np.array_equal(back, first)
    # Saved again: `updated`, a new SEG, and both the label route and training read the newest one.
    second = sphere(series.hu.shape, (16, 16, 8), 4, 2)
    resp = put_label(vapi, dataset, series.uid, label_nrrd(second, truth.affine), experiment_id=experiment)
    assert resp.status_code == 201, resp.text
    assert resp.json()["notify"] == "updated" and resp.json()["label"] != answer["label"]
    newest = resp.json()["label"]
    assert np.array_equal(seg_to_labels(_seg_in_orthanc(orthanc, newest), truth, LABELS), second)
    _, back = read_nrrd(vapi.get(f"{base}/label", params={"experiment_id": experiment}).content)
    assert np.array_equal(back, second)
    assert notifications(vapi, dataset) == [("added", series.uid, answer["label"]), ("updated", series.uid, newest)]
    with vapi.ctx.db.session() as session:
        row = service.get_row(session, org="acme", user_id=_user_id(vapi, "alice"), dataset_id=dataset)
        given = dataset_input(vapi.ctx, session, row.id, with_notified=True)
    source = service.source_of(row, vapi.ctx.box, settings=vapi.ctx.settings)
    items = dicomweb_items(vapi.ctx, given, source, LABELS)
    assert [item["label_id"] for item in items] == [newest]
    assert np.array_equal(np.asarray(nib.load(items[0]["label"]).dataobj), second)
    nothing = vapi.post(f"datasets/{dataset}/jobs", json={"action": "nextimage"})
    assert nothing.status_code == 404
    # Values outside the experiment's labels and an empty volume are refused; nothing new is stored.
    bad = put_label(vapi, dataset, series.uid, label_nrrd(first * 3, truth.affine), experiment_id=experiment)
    assert bad.status_code == 400 and "3" in bad.json()["error_desc"]
    empty = put_label(vapi, dataset, series.uid, label_nrrd(first * 0, truth.affine), experiment_id=experiment)
    assert empty.status_code == 400 and "SEG" in empty.json()["error_desc"]
    assert len(notifications(vapi, dataset)) == 2


# An object store (moto S3): the label and the manifest are each one put ------------------------------------


def test_saving_a_label_on_s3(vapi, s3_server, tmp_path):
    from services import s3_client, upload_folder_to_s3

    root = tmp_path / "s3data"
    write_demo_dataset(root, n_ct=2, n_rgb=0)
    upload_folder_to_s3(s3_server, root, "viewerlabels", "p")
    resp = vapi.post(
        "datasets",
        json={
            "name": "s3",
            "client_url": f"{s3_server.endpoint_url}/viewerlabels/p",
            "client_id": s3_server.key,
            "client_secret": s3_server.secret,
        },
    )
    assert resp.status_code == 201, resp.text
    dataset = resp.json()["id"]
    before = manifest(root)
    entry = next(e for e in before["data"] if "label" not in e)
    image_id = entry["image"]["id"]
    assert vapi.get(f"datasets/{dataset}/images/{image_id}/label").status_code == 404
    volume = sphere((64, 64, 64), (30, 30, 30), 8, 1)
    resp = put_label(vapi, dataset, image_id, label_nrrd(volume, ct_affine(), encoding="gzip"))
    assert resp.status_code == 201, resp.text
    assert resp.json()["notify"] == "added"
    client = s3_client(s3_server)
    stored = json.loads(client.get_object(Bucket="viewerlabels", Key="p/manifest.json")["Body"].read())
    stem = Path(entry["image"]["path"][0]).name.removesuffix(".nii.gz")
    label_path = f"imagesTr/{stem}_label.nii.gz"
    changed = next(e for e in stored["data"] if e["image"]["id"] == image_id)
    assert changed["label"] == {"path": [label_path], "id": resp.json()["label"]}
    assert [e for e in stored["data"] if e is not changed] == [e for e in before["data"] if e is not entry]
    nifti = client.get_object(Bucket="viewerlabels", Key=f"p/{label_path}")["Body"].read()
    saved = nib.Nifti1Image.from_bytes(gzip.decompress(nifti))
    assert np.array_equal(np.asarray(saved.dataobj), volume) and np.allclose(saved.affine, ct_affine())
    _, back = read_nrrd(vapi.get(f"datasets/{dataset}/images/{image_id}/label").content)
    assert np.array_equal(back, volume)
    nothing = vapi.post(f"datasets/{dataset}/jobs", json={"action": "nextimage"})
    assert nothing.status_code == 404  # the manifest cache saw the new manifest


def test_openapi_describes_the_viewer_routes(vapi):
    document = vapi.client.get("/openapi.json").json()
    base = "/api/v1/orgs/{org}/datasets/{dataset_id}/images/{image_id}"
    for method, path in (("get", "volume"), ("get", "label"), ("put", "label")):
        operation = document["paths"][f"{base}/{path}"][method]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
        assert {"400", "401", "403", "404"} <= set(operation["responses"])
    assert "application/octet-stream" in document["paths"][f"{base}/volume"]["get"]["responses"]["200"]["content"]
    put = document["paths"][f"{base}/label"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"] and "413" in put["responses"]
    assert put["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SavedLabelOut"
    }
    assert "experiment_id" in {p["name"] for p in put["parameters"]}
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "Authorization"}
