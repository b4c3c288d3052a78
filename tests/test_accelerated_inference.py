"""Accelerated inference (inference/accel/): faster modes checked against the exact run, with fallback.

Model level: the demo bundles (custom segmentation and classification), the small VISTA-3D (class and
click prompts) and the small DeepEdit (clicks), each served by a `CheckedPredictor` and compared voxel
for voxel with an exact predictor on the same weights. API level: `model_params.inference_mode`, the
server default, the check in `GET /experiments/{id}`, bad values. Speed is measured in
bench/accelerated_inference.py, not here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nrrd
import numpy as np
import pytest
import torch
from helpers import multipart_parts

from medcloud.demo.synthetic import write_synthetic_ct
from medcloud.inference import nrrd_writer
from medcloud.inference.accel import modes
from medcloud.inference.accel import networks as accel_networks
from medcloud.inference.accel.checked import CheckedPredictor
from medcloud.inference.accel.compare import compare_files, dice_per_label
from medcloud.inference.host import build_predictor
from medcloud.inference.predictors import BundlePredictor

FAST_MODES = ["bf16", "openvino"]


def runnable(mode: str) -> None:
    reason = modes.unavailable_reason(mode, "cpu")
    if reason:
        pytest.skip(f"{mode} cannot run on this machine: {reason}")


def voxels(path: Path) -> np.ndarray:
    data, _header = nrrd.read(str(path))
    return np.asarray(data)


def assert_same_output(got: Path, want: Path) -> None:
    """The same NRRD: header fields and voxels (the writer's comment line holds the time it wrote the file)."""
    (a, header_a), (b, header_b) = nrrd.read(str(got)), nrrd.read(str(want))
    assert header_a.keys() == header_b.keys() and a.dtype == b.dtype and np.array_equal(a, b)
    for key, value in header_a.items():
        assert np.array_equal(np.asarray(value), np.asarray(header_b[key])), key


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct")
    image, _label = write_synthetic_ct(folder / "ct.nii.gz", folder / "label.nii.gz", seed=41, num_objs=2)
    return image


def exact_answer(bundle: Path, image: Path, out: Path, weights: Path | None = None) -> Path:
    nrrd_writer.register()
    predictor = BundlePredictor(bundle)
    predictor.load()
    if weights is not None:
        predictor.swap_weights(weights)
    [path] = predictor.predict(str(image), {}, out)
    return path


def checked(bundle: Path, mode: str, min_dice: float = 0.99, kind: str = "custom", **spec: object) -> CheckedPredictor:
    predictor = build_predictor(
        {"kind": kind, "bundle_dir": str(bundle), "inference_mode": mode, "check_min_dice": min_dice, **spec}
    )
    assert isinstance(predictor, CheckedPredictor)
    predictor.load()
    return predictor


# ------------------------------------------------------------------------------------------ modes


def test_fast_picks_the_best_mode_the_machine_and_family_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modes, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(modes, "openvino_installed", lambda: True)
    assert modes.resolve("fast", "cpu", ("bf16", "openvino")).mode == "bf16"  # a family lists them best first
    assert modes.resolve("fast", "cpu", ("openvino", "bf16")).mode == "openvino"
    assert modes.resolve("fast", "cuda", ("openvino", "bf16")).mode == "bf16"  # OpenVINO is CPU-only
    assert modes.resolve("exact", "cpu", ("bf16",)) == modes.Resolution("exact", "exact")

    monkeypatch.setattr(modes, "cpu_flags", lambda: frozenset({"avx2"}))
    assert modes.resolve("fast", "cpu", ("bf16", "openvino")).mode == "openvino"  # no bf16 on this CPU
    monkeypatch.setattr(modes, "openvino_installed", lambda: False)
    plain = modes.resolve("fast", "cpu", ("bf16", "openvino"))
    assert plain.mode == "exact"
    assert "openvino package is not installed" in plain.reason and "no bfloat16 instructions" in plain.reason
    asked = modes.resolve("openvino", "cuda", ("bf16", "openvino"))
    assert asked.mode == "exact" and "runs on the CPU" in asked.reason
    assert "not supported for this model family" in modes.resolve("openvino", "cpu", ("bf16",)).reason


# ---------------------------------------------------------------------------------------- compare


def _seg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), array.astype(np.uint8))
    return path


def test_comparison_gives_dice_per_label_and_fails_under_the_threshold(tmp_path: Path) -> None:
    exact = np.zeros((10, 10, 10), np.uint8)
    exact[:5, :4] = 1  # 200 voxels of label 1
    exact[6:, 6:] = 2  # 160 voxels of label 2
    fast = exact.copy()
    fast[:5, 3] = 0  # label 1 loses 50 voxels: Dice 2*150/(200+150)
    a = _seg(tmp_path / "a" / "x_seg.nrrd", exact)
    b = _seg(tmp_path / "b" / "x_seg.nrrd", fast)
    result = compare_files({"x_seg.nrrd": a}, {"x_seg.nrrd": b})
    assert result.dice == {"x_seg.nrrd:1": round(300 / 350, 6), "x_seg.nrrd:2": 1.0}
    assert result.failures(0.99) == [f"Dice {300 / 350:.4f} < 0.99 for x_seg.nrrd:1"]
    assert result.failures(0.85) == []
    assert dice_per_label(exact, np.zeros_like(exact)) == {1: 0.0, 2: 0.0}


def test_comparison_of_classification_scores_and_of_missing_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("img1,0.9,0.1\nimg2,0.4,0.6\n")
    (tmp_path / "b.csv").write_text("img1,0.88,0.12\nimg2,0.55,0.45\n")
    result = compare_files(
        {"p.csv": tmp_path / "a.csv", "extra.nrrd": tmp_path / "a.csv"}, {"p.csv": tmp_path / "b.csv"}
    )
    assert result.rows == 2 and result.top1_changed == 1
    assert result.max_score_delta == pytest.approx(0.15)
    assert result.failures(0.99) == ["extra.nrrd is in one run's outputs only", "top-1 class changed in 1 of 2 rows"]


# ------------------------------------------------------------------------------ custom bundles


@pytest.mark.parametrize("mode", FAST_MODES)
def test_first_request_is_answered_exactly_and_checked_then_the_fast_mode_serves(
    mode: str, demo_bundles: dict[str, Path], ct: Path, tmp_path: Path
) -> None:
    runnable(mode)
    bundle = demo_bundles["segmentation"]
    exact = exact_answer(bundle, ct, tmp_path / "exact")
    predictor = checked(bundle, mode)
    assert predictor.report()["reason"].startswith("checked on the next request")
    [first] = predictor.predict(str(ct), {}, tmp_path / "first")
    assert_same_output(first, exact)  # the check's request gets the exact answer
    report = predictor.report()
    assert report["mode"] == report["candidate"] == mode and report["check"]["passed"] is True
    assert report["check"]["dice"]["ct_seg.nrrd:1"] >= 0.99 and report["check"]["min_dice"] >= 0.99
    assert report["check"]["image"] == "ct.nii.gz" and report["check"]["fast_s"] > 0
    [served] = predictor.predict(str(ct), {}, tmp_path / "served")
    assert dice_per_label(voxels(exact), voxels(served))[1] >= 0.99
    assert voxels(served).sum() > 100  # a real segmentation, not two empty volumes agreeing


def test_outputs_under_the_threshold_fall_back_to_exact_and_say_why(
    demo_bundles: dict[str, Path], ct: Path, tmp_path: Path
) -> None:
    runnable("openvino")
    bundle = demo_bundles["segmentation"]
    exact = exact_answer(bundle, ct, tmp_path / "exact")
    predictor = checked(bundle, "openvino", min_dice=1.01)  # no Dice reaches it: the check must fail
    predictor.predict(str(ct), {}, tmp_path / "first")
    report = predictor.report()
    assert report["mode"] == "exact" and report["candidate"] == "openvino" and report["check"]["passed"] is False
    assert "< 1.01 for ct_seg.nrrd:1" in report["reason"]
    [again] = predictor.predict(str(ct), {}, tmp_path / "again")
    assert_same_output(again, exact)  # exact from now on


def test_a_fast_run_that_fails_falls_back_to_exact_with_the_error(
    demo_bundles: dict[str, Path], ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("unsupported operator Foo")

    monkeypatch.setattr(accel_networks, "accelerated", lambda network, mode, device: Broken())
    monkeypatch.setattr(modes, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    bundle = demo_bundles["segmentation"]
    exact = exact_answer(bundle, ct, tmp_path / "exact")
    predictor = checked(bundle, "bf16")
    [first] = predictor.predict(str(ct), {}, tmp_path / "first")
    assert_same_output(first, exact)
    report = predictor.report()
    assert report["mode"] == "exact" and report["check"]["passed"] is False
    assert report["reason"] == "the bf16 run failed: RuntimeError: unsupported operator Foo"
    [second] = predictor.predict(str(ct), {}, tmp_path / "second")
    assert_same_output(second, exact)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_hot_swap_rebuilds_the_fast_copy_and_checks_again(
    mode: str, demo_bundles: dict[str, Path], weak_bundle: Path, ct: Path, tmp_path: Path
) -> None:
    runnable(mode)
    bundle = demo_bundles["segmentation"]
    predictor = checked(bundle, mode)
    predictor.predict(str(ct), {}, tmp_path / "check")
    [before] = predictor.predict(str(ct), {}, tmp_path / "before")
    assert predictor.report()["mode"] == mode
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    new = {
        k: v * (1 + 0.1 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v
        for k, v in state.items()
    }
    torch.save(new, tmp_path / "new.pt")
    exact_new = exact_answer(bundle, ct, tmp_path / "exact-new", weights=tmp_path / "new.pt")
    assert not np.array_equal(voxels(exact_new), voxels(before)), "the new weights must change the answer"
    assert voxels(exact_new).sum() > 100, "and still segment something"

    predictor.swap_weights(tmp_path / "new.pt")
    assert predictor.report()["check"] is None and predictor.report()["mode"] == "exact"
    assert predictor.wait_built(120)
    [first] = predictor.predict(str(ct), {}, tmp_path / "first-new")
    assert_same_output(first, exact_new)  # answered at once, exactly, with the new weights
    assert predictor.report()["mode"] == mode
    [served] = predictor.predict(str(ct), {}, tmp_path / "served-new")
    assert dice_per_label(voxels(exact_new), voxels(served))[1] >= 0.99
    assert not np.array_equal(voxels(served), voxels(before))  # the fast copy runs the new weights


def test_requests_during_a_rebuild_are_served_exactly_without_a_gap(
    demo_bundles: dict[str, Path], ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    runnable("openvino")
    bundle = demo_bundles["segmentation"]
    exact = exact_answer(bundle, ct, tmp_path / "exact")
    predictor = checked(bundle, "openvino")
    predictor.predict(str(ct), {}, tmp_path / "check")
    assert predictor.report()["mode"] == "openvino"
    release = threading.Event()
    build = predictor.inner.prepare_mode
    monkeypatch.setattr(predictor.inner, "prepare_mode", lambda mode: (release.wait(60), build(mode)))
    predictor.swap_weights(bundle / "models" / "model.pt")  # the same weights, as a new file
    for step in range(2):  # the faster network is being rebuilt: the exact one answers at once
        [served] = predictor.predict(str(ct), {}, tmp_path / f"during{step}")
        assert_same_output(served, exact)
        assert predictor.report()["mode"] == "exact" and "building the openvino network" in predictor.report()["reason"]
    release.set()
    assert predictor.wait_built(120)
    predictor.predict(str(ct), {}, tmp_path / "recheck")
    assert predictor.report()["mode"] == "openvino" and predictor.report()["check"]["passed"] is True


def test_a_network_that_cannot_be_built_leaves_exact_serving_with_the_reason(
    demo_bundles: dict[str, Path], ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medcloud.inference.predictors import BundlePredictor as Bundle

    def refuse(self: Bundle, mode: str) -> None:
        raise RuntimeError("OpenVINO does not support operation aten::foo")

    runnable("openvino")
    monkeypatch.setattr(Bundle, "prepare_mode", refuse)
    bundle = demo_bundles["segmentation"]
    exact = exact_answer(bundle, ct, tmp_path / "exact")
    predictor = checked(bundle, "openvino")
    [served] = predictor.predict(str(ct), {}, tmp_path / "first")
    assert_same_output(served, exact)
    report = predictor.report()
    assert report["mode"] == "exact" and report["check"]["passed"] is False
    assert report["reason"] == (
        "building the openvino network failed: RuntimeError: OpenVINO does not support operation aten::foo"
    )


def test_classification_is_checked_by_top1_and_score_delta(demo_bundles: dict[str, Path], tmp_path: Path) -> None:
    runnable("openvino")
    bundle = demo_bundles["classification"]
    image = sorted((bundle / "sample_data").rglob("*.png"))[0]
    predictor = checked(bundle, "openvino")
    [first] = predictor.predict(str(image), {}, tmp_path / "first")
    check = predictor.report()["check"]
    assert check["passed"] is True and check["rows"] == 1 and check["top1_changed"] == 0
    assert check["max_score_delta"] < 1e-3
    [served] = predictor.predict(str(image), {}, tmp_path / "served")
    assert served.read_text().split(",")[0] == first.read_text().split(",")[0]


# ------------------------------------------------------------------------------ VISTA-3D, DeepEdit


@pytest.mark.parametrize("mode", FAST_MODES)
def test_vista3d_serves_class_and_click_prompts_close_to_exact(mode: str, vista_bundle: Path, tmp_path: Path) -> None:
    from medcloud.families.vista3d.predictor import Vista3dPredictor

    runnable(mode)
    image, _ = write_synthetic_ct(tmp_path / "ct.nii.gz", tmp_path / "label.nii.gz", seed=44)
    exact = Vista3dPredictor(vista_bundle, {"3": "spleen"})
    exact.load()
    predictor = checked(vista_bundle, mode, kind="vista3d", labels={"3": "spleen"})
    assert predictor.report()["candidate"] == mode
    prompts = [{"label_prompt": [3]}, {"points": [[32, 32, 32]], "point_labels": [1], "label_prompt": [3]}]
    for step, params in enumerate(prompts):
        [want] = exact.predict(str(image), params, tmp_path / f"exact{step}")
        [got] = predictor.predict(str(image), params, tmp_path / f"got{step}")
        if step == 0:
            assert_same_output(got, want)  # the check's request
            assert predictor.report()["check"]["passed"] is True, predictor.report()
            assert predictor.report()["mode"] == mode
        scores = dice_per_label(voxels(want), voxels(got))
        assert voxels(want).astype(bool).sum() > 50 and min(scores.values()) >= 0.98, scores
    assert predictor.inner.mode == mode
    if mode == "openvino":  # the encoder ran in OpenVINO, the heads are the exact network's own modules
        assert type(predictor.inner.network.image_encoder).__name__ == "OpenVinoVistaEncoder"
        assert predictor.inner.network.point_head is predictor.inner.exact_network.point_head


@pytest.mark.parametrize("mode", FAST_MODES)
def test_deepedit_serves_clicks_in_the_fast_mode(mode: str, deepedit_bundle: Path, tmp_path: Path) -> None:
    from medcloud.families.deepedit.demo import LABEL_NAMES, deepedit_ct_volume
    from medcloud.families.deepedit.predictor import DeepEditPredictor

    runnable(mode)
    volume = deepedit_ct_volume(11, organs=1, ambiguous=2)
    image = volume.save(tmp_path / "ct.nii.gz")
    exact = DeepEditPredictor(deepedit_bundle, LABEL_NAMES)
    exact.load()
    predictor = checked(deepedit_bundle, mode, kind="deepedit", labels={"1": "spleen"})
    clicked, _other = volume.ambiguous
    for step, params in enumerate([{}, {"spleen": [volume.inside(clicked)]}]):
        [want] = exact.predict(str(image), params, tmp_path / f"exact{step}")
        [got] = predictor.predict(str(image), params, tmp_path / f"got{step}")
        assert predictor.report()["mode"] == mode, predictor.report()
        assert voxels(want).sum() > 50 and dice_per_label(voxels(want), voxels(got))[1] >= 0.99


# ------------------------------------------------------------------------------------------- API


def _dataset_and_image(api, local_dataset: Path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    import json

    resp = api.post("datasets", json={"name": "d", "client_url": str(local_dataset)})
    assert resp.status_code == 201, resp.text
    entry = json.loads((local_dataset / "manifest.json").read_text())["data"][0]
    return resp.json()["id"], entry["image"]["id"]


def _experiment(api, dataset_id: str, bundle_zip: Path, **model_params: object) -> dict:  # type: ignore[no-untyped-def]
    body = {
        "name": "acc",
        "network_arch": "monai_custom",
        "train_datasets": [dataset_id],
        "realtime_infer": True,
        "bundle_url": f"file://{bundle_zip}",
        "model_params": model_params,
    }
    resp = api.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _infer(api, experiment_id: str, image_id: str) -> bytes:  # type: ignore[no-untyped-def]
    resp = api.post(f"experiments/{experiment_id}/jobs", json={"action": "inference", "specs": {"image": image_id}})
    assert resp.status_code == 201, resp.text
    [data] = multipart_parts(resp).values()
    return data


def _nrrd_bytes_voxels(data: bytes, path: Path) -> np.ndarray:
    path.write_bytes(data)
    return voxels(path)


def test_the_check_is_visible_through_the_api(
    api, local_dataset: Path, demo_zips: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    runnable("openvino")
    expected = "bf16" if modes.unavailable_reason("bf16", "cpu") is None else "openvino"  # custom bundles' order
    dataset_id, image_id = _dataset_and_image(api, local_dataset)
    exp = _experiment(api, dataset_id, demo_zips["segmentation"], inference_mode="fast")
    assert exp["model_params"]["inference_mode"] == "fast" and exp["inference"] is None
    first = _nrrd_bytes_voxels(_infer(api, exp["id"], image_id), tmp_path / "first.nrrd")
    shown = api.get(f"experiments/{exp['id']}").json()["inference"]
    assert shown["requested"] == "fast" and shown["mode"] == expected and shown["check"]["passed"] is True
    assert shown["check"]["min_dice"] >= 0.99 and shown["check"]["min_dice_required"] == 0.99
    served = _nrrd_bytes_voxels(_infer(api, exp["id"], image_id), tmp_path / "served.nrrd")
    assert first.sum() > 0 and dice_per_label(first, served)[1] >= 0.99
    listed = {e["id"]: e for e in api.get("experiments").json()["experiments"]}
    assert listed[exp["id"]]["inference"] == shown

    plain = _experiment(api, dataset_id, demo_zips["segmentation"])
    _infer(api, plain["id"], image_id)
    assert api.get(f"experiments/{plain['id']}").json()["inference"] is None  # exact: nothing to check


def test_bad_inference_modes_are_400_and_store_nothing(api, local_dataset: Path, demo_zips: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    dataset_id, _image_id = _dataset_and_image(api, local_dataset)
    before = len(api.get("experiments").json()["experiments"])
    for value in ("turbo", 5, ["fast"], "$torch.compile"):
        body = {
            "name": "bad",
            "network_arch": "monai_custom",
            "train_datasets": [dataset_id],
            "realtime_infer": True,
            "bundle_url": f"file://{demo_zips['segmentation']}",
            "model_params": {"inference_mode": value},
        }
        resp = api.post("experiments", json=body)
        assert resp.status_code == 400, resp.text
        assert "inference_mode" in resp.text
    assert len(api.get("experiments").json()["experiments"]) == before


def test_the_server_default_applies_to_experiments_that_name_no_mode(
    tmp_path: Path, local_dataset: Path, demo_zips: dict[str, Path]
) -> None:
    from conftest import make_api

    runnable("bf16")
    with make_api(tmp_path / "data", inference_mode="bf16", inference_check_min_dice=0.95) as api:
        dataset_id, image_id = _dataset_and_image(api, local_dataset)
        exp = _experiment(api, dataset_id, demo_zips["segmentation"])
        _infer(api, exp["id"], image_id)
        shown = api.get(f"experiments/{exp['id']}").json()["inference"]
        assert shown["requested"] == "bf16" and shown["mode"] == "bf16"
        assert shown["check"]["min_dice_required"] == 0.95
        pinned = _experiment(api, dataset_id, demo_zips["segmentation"], inference_mode="exact")
        _infer(api, pinned["id"], image_id)
        assert api.get(f"experiments/{pinned['id']}").json()["inference"] is None
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_batch_inference_runs_in_the_checked_mode_and_reports_it(
    api, local_dataset: Path, demo_zips: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    import io
    import tarfile

    from builders import seg_experiment, start, wait_status

    runnable("openvino")
    exp = seg_experiment(api, local_dataset, demo_zips, model_params={"inference_mode": "openvino"})
    api.patch(f"experiments/{exp['id']}", json={"inference_dataset": exp["train_datasets"][0]})
    job_id = start(api, exp, {}, action="batchinfer")
    done = wait_status(api, exp, job_id, {"Done", "Error"})
    assert done["status"] == "Done", done["result"]
    report = done["result"]["inference"]
    assert report["requested"] == "openvino" and report["mode"] == "openvino" and report["check"]["passed"] is True
    assert report["check"]["min_dice"] >= 0.99
    tar = api.get(f"experiments/{exp['id']}/jobs/{job_id}:download")
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        outputs = [n for n in archive.getnames() if n.endswith("_seg.nrrd")]
    assert len(outputs) == done["result"]["images"] == len(list((local_dataset / "imagesTr").iterdir()))


def test_only_a_small_json_report_from_the_model_host_is_kept(
    api, local_dataset: Path, demo_zips: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    """The report comes from the model host, which runs model code: nothing else reaches the experiment."""
    from medcloud.experiments.realtime import record_inference

    dataset_id, _image_id = _dataset_and_image(api, local_dataset)
    exp = _experiment(api, dataset_id, demo_zips["segmentation"])
    for hostile in ("bf16", ["mode"], {"padding": "x" * 20_000}, {"mode": float("nan"), "bad": object()}):
        record_inference(api.ctx, exp["id"], hostile)
        assert api.get(f"experiments/{exp['id']}").json()["inference"] is None
    record_inference(api.ctx, exp["id"], {"requested": "bf16", "mode": "exact", "reason": "r", "check": None})
    assert api.get(f"experiments/{exp['id']}").json()["inference"]["reason"] == "r"
