"""The viewer's own speed in a real browser: page ready, and click → updated overlay vs the API alone.

A real `medcloud serve` with the small trained VISTA-3D, a local dataset of 256×256×128 CTs, and
Debian's chromium (software WebGL) driving the viewer as an annotator does. Prints:
- time to first rendered image after *Next image* (nextimage + cacheimage + the NRRD volume + NiiVue);
- for the same click requests, the API's own time (httpx, same body) and the viewer's click →
  redrawn overlay; the viewer's own cost (transfer to the page, parse, merge, redraw) is the
  difference, judged against 100 ms;
and saves a screenshot (docs/images/viewer.png with --screenshot).

    .venv/bin/python bench/viewer_speed.py [--bundle PATH] [--clicks 5] [--screenshot]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from browser import browser  # noqa: E402
from viewer_driver import ViewerDriver  # noqa: E402

from medcloud.demo.ct_dataset import CtVolumes, write_ct_dataset  # noqa: E402
from medcloud.devserver import create_key, medcloud_serve  # noqa: E402

ORG = "bench"
SHAPE = (256, 256, 128)


def write_dataset(root: Path, count: int) -> dict[str, np.ndarray]:
    """The demo's CT volumes (256×256×128, one sphere; the background never reaches 0 HU), unlabeled;
    returns each image's foreground (HU > 0), where the clicks go."""
    import nibabel as nib

    manifest = json.loads(
        write_ct_dataset(root, n_labeled=0, n_unlabeled=count, volumes=CtVolumes(shape=SHAPE)).read_text()
    )
    return {e["image"]["id"]: np.asarray(nib.load(root / e["image"]["path"][0]).dataobj) > 0 for e in manifest["data"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a small VISTA-3D bundle folder (default: train one, ~1 min)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--screenshot", action="store_true", help="write docs/images/viewer.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from medcloud.families.vista3d.demo import make_vista3d_bundle

            bundle = make_vista3d_bundle(work / "vista", train=True)
        truth = write_dataset(work / "ct", 2)
        env = {"MEDCLOUD_VISTA3D_BUNDLE": str(bundle)}
        with medcloud_serve(work / "data", env=env, timeout_s=300) as server:
            key = create_key(work / "data", ORG, "bench")
            token = httpx.post(f"{server.url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
            api = httpx.Client(
                base_url=f"{server.url}/api/v1/orgs/{ORG}/", headers={"Authorization": f"Bearer {token}"}, timeout=600
            )
            dataset = api.post("datasets", json={"name": "ct", "client_url": str(work / "ct")}).json()["id"]
            base = next(
                e["id"]
                for e in api.get("./experiments:base").json()["experiments"]
                if e["network_arch"] == "monai_vista3d"
            )
            created = api.post(
                "experiments",
                json={
                    "name": "bench",
                    "network_arch": "monai_vista3d",
                    "base_experiment": [base],
                    "train_datasets": [dataset],
                    "inference_dataset": dataset,
                    "realtime_infer": True,
                    "realtime_infer_request_timeout": 900,
                    "model_params": {"labels": {"1": "liver", "3": "spleen"}},
                },
            )
            created.raise_for_status()
            with browser() as chromium:
                driver = ViewerDriver.open(chromium, server.url, width=1500, height=900)
                page = driver.page
                driver.sign_in(key, ORG)
                driver.wait_ready()
                image_id = driver.next_image()
                ready_ms = driver.state("v.metrics.pageReadyMs")
                print(
                    f"page ready (next image → first rendered frame), {'×'.join(map(str, SHAPE))} int16 CT: "
                    f"{ready_ms:.0f} ms"
                )
                stages = driver.state("v.metrics.pageStages")
                print("  of which: " + ", ".join(f"{k} {v:.0f} ms" for k, v in stages.items()))
                # (no auto-segment here: class prompts run every window of the whole volume, minutes on CPU)
                driver.select_label(2)
                centre = [int(round(c.mean())) for c in np.nonzero(truth[image_id])]
                results = {}
                for view in ("3D view on", "3D view off"):
                    if view == "3D view off":
                        if args.screenshot:
                            target = REPO / "docs" / "images" / "viewer.png"
                            target.parent.mkdir(parents=True, exist_ok=True)
                            page.screenshot(path=str(target))
                            print(f"screenshot: {target}")
                        page.uncheck("#show-3d")
                    viewer_ms, server_ms, own_ms = [], [], []
                    for n in range(args.clicks):
                        voxel = (centre[0] + 2 * n, centre[1] + (n % 2), centre[2])
                        m = driver.click_voxel(voxel, foreground=True)
                        viewer_ms.append(m["totalMs"])
                        server_ms.append(m["serverMs"])
                        own_ms.append(m["viewerMs"])
                        print(
                            f"{view}, click {n + 1}: click → redrawn overlay {m['totalMs']:.0f} ms = API (request to "
                            f"first byte) {m['serverMs']:.0f} ms + viewer {m['viewerMs']:.0f} ms (transfer "
                            f"{m['transferMs']:.0f}, parse {m['parseMs']:.0f}, merge {m['mergeMs']:.0f}, redraw "
                            f"{m['drawMs']:.0f} [texture+GPU {m['refreshMs']:.0f}, counts {m['countMs']:.0f}, "
                            f"frame {m['frameMs']:.0f}]; {m['bytes'] / 1e6:.1f} MB)"
                        )
                    results[view] = (viewer_ms, server_ms, own_ms)
    for view, (viewer_ms, server_ms, own_ms) in results.items():
        print(
            f"{view}: median click → overlay {statistics.median(viewer_ms):.0f} ms, API "
            f"{statistics.median(server_ms):.0f} ms, viewer's own cost {statistics.median(own_ms):.0f} ms"
        )
    own = statistics.median(results["3D view off"][2])
    print(
        f"viewer's own cost per click (median, 2-D views; transfer, parse, merge, redraw): {own:.0f} ms; "
        f"ratio to the 100 ms goal: {own / 100:.2f}"
    )


if __name__ == "__main__":
    main()
