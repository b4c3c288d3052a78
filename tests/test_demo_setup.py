"""The demo set-up: a key that logs in, a registered dataset, bundles that serve; idempotent."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient

from medcloud.app import create_app
from medcloud.config import Settings
from medcloud.context import Context
from medcloud.demo.setup import prepare_demo, with_demo_local_paths


def test_demo_prepares_everything_guide_000_needs_and_is_idempotent(tmp_path):
    # as scripts/serve.sh and `medcloud serve` with the demo do: the demo org's datasets are in data/demo
    ctx = Context.build(with_demo_local_paths(Settings(data_dir=tmp_path, bundle_allow_local_paths=True)))
    out = io.StringIO()
    prepare_demo(ctx, out=out)
    key = out.getvalue().strip().splitlines()[-1]
    again = io.StringIO()
    prepare_demo(ctx, out=again)
    assert again.getvalue().strip().splitlines()[-1] == key
    assert "/api/v1/orgs/iasixjqzw1hj" in out.getvalue()
    with TestClient(create_app(context=ctx)) as client:
        token = client.post("/api/v1/login", content=json.dumps({"ngc_api_key": key})).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        datasets = client.get("/api/v1/orgs/iasixjqzw1hj/datasets", headers=headers).json()["datasets"]
        assert [d["name"] for d in datasets] == ["demo-dataset"]  # registered once, not twice
        zip_line = next(line for line in out.getvalue().splitlines() if "bundle_url" in line and "spleen" in line)
        bundle_url = zip_line.split('"')[1]
        image_line = out.getvalue().splitlines()[out.getvalue().splitlines().index(zip_line) + 1]
        image_id = image_line.split('"')[1]
        exp = client.post(
            "/api/v1/orgs/iasixjqzw1hj/experiments",
            headers=headers,
            json={
                "name": "demo",
                "network_arch": "monai_custom",
                "train_datasets": [datasets[0]["id"]],
                "realtime_infer": True,
                "bundle_url": bundle_url,
            },
        ).json()
        resp = client.post(
            f"/api/v1/orgs/iasixjqzw1hj/experiments/{exp['id']}/jobs",
            headers=headers,
            json={"action": "inference", "specs": {"image": image_id}},
        )
        assert resp.status_code == 201, resp.text
        assert b'name="ct_000_seg.nrrd"' in resp.content
