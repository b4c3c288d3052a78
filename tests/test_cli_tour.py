"""Guide 000 done entirely from the command line, from a folder of images to a CSV of predictions.

`build-manifest` on a folder with no manifest, `upload` to a real Azurite, `login`, `datasets create` on
the uploaded URL, `experiments create` with the demo classification bundle, `infer -o` to a folder,
and the CSV's scores checked: each step a `medcloud` subprocess, as a user types it.
"""

from __future__ import annotations

import csv
import json
import uuid

from client_helpers import (
    home_fixture,  # noqa: F401  (the fixture `home`)
    medcloud,
    ok,
    served_fixture,  # noqa: F401  (the fixture `served`)
)
from services import AZURITE_ACCOUNT

from medcloud.demo.synthetic import stable_id, write_synthetic_ct, write_synthetic_rgb


def test_from_a_folder_of_images_to_predictions_with_the_cli(served, home, azurite, demo_zips, tmp_path):
    server, key = served
    folder = tmp_path / "study"
    for i in range(2):
        write_synthetic_ct(folder / "imagesTr" / f"ct_{i}.nii.gz", folder / "labelsTr" / f"ct_{i}.nii.gz", seed=i)
    for i, label in enumerate((0, 1, 0)):
        write_synthetic_rgb(
            folder / "images2d" / f"frame_{i:03d}.png", label=label, seed=102 + i
        )  # held-out seeds the demo classifier gets right (it misses seed 101)

    built = json.loads(ok(medcloud(home, "datasets", "build-manifest", str(folder), "--json")).stdout)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (built["images"], built["labeled"], built["ignored_labels"]) == (5, 2, [])
    images = {e["image"]["path"][0]: e for e in manifest["data"]}
    assert set(images) == {
        "imagesTr/ct_0.nii.gz",
        "imagesTr/ct_1.nii.gz",
        *(f"images2d/frame_{i:03d}.png" for i in range(3)),
    }
    assert images["imagesTr/ct_0.nii.gz"]["label"]["path"] == ["labelsTr/ct_0.nii.gz"]  # matched by name
    assert images["images2d/frame_000.png"]["image"]["id"] == stable_id("images2d/frame_000.png")  # stable ids

    container = f"tour{uuid.uuid4().hex[:8]}"
    storage = {**home, "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT, "AZURE_STORAGE_KEY": azurite.key}
    upload = ok(medcloud(storage, "datasets", "upload", str(folder), f"az://{container}/study",
                         "--endpoint-url", azurite.endpoint))  # fmt: skip
    assert azurite.key not in upload.stdout + upload.stderr

    ok(medcloud(home, "login", "--host", server.url, stdin=key + "\n"))
    dataset = json.loads(ok(medcloud(
        {**home, "STUDY_KEY": azurite.key}, "datasets", "create", "study", f"{azurite.endpoint}/{container}/study",
        "--client-id", AZURITE_ACCOUNT, "--client-secret-env", "STUDY_KEY", "--json",
    )).stdout)  # fmt: skip
    assert azurite.key not in json.dumps(dataset)
    experiment = json.loads(ok(medcloud(
        home, "experiments", "create", "tour", "--bundle-url", str(demo_zips["classification"]),
        "--train-dataset", dataset["id"], "--realtime", "--override", "output_filename=predictions.csv", "--json",
    )).stdout)  # fmt: skip

    out = tmp_path / "out"
    for i, label in enumerate((0, 1)):
        image_id = images[f"images2d/frame_{i:03d}.png"]["image"]["id"]
        ok(medcloud(home, "infer", experiment["id"], image_id, "-o", str(out / str(i))))
        rows = list(csv.reader((out / str(i) / "predictions.csv").open()))
        assert len(rows) == 1 and rows[0][0].endswith(f"frame_{i:03d}.png")
        scores = [float(v) for v in rows[0][1:]]
        assert len(scores) == 2 and scores.index(max(scores)) == label  # the demo classifier tells them apart
