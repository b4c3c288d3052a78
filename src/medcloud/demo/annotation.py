"""The annotation demo: CT datasets, a real-time VISTA-3D experiment on them and an annotation job, over the API.

`prepare_annotation_demo(client, ...)` talks to any running medcloud (a `medcloud serve`, a test server, a
FastAPI `TestClient`) and is idempotent: what exists (by name) is reused, and an annotation job is created
only when the experiment has none Pending or Running. `medcloud serve` runs it against itself once it
answers (`serve_annotation_demo`), so the viewer at `/viewer` finds everything ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from medcloud.demo.ct_dataset import SEEDS_FROM, SPLEEN, CtVolumes, write_ct_dataset

if TYPE_CHECKING:
    from medcloud.context import Context

log = logging.getLogger(__name__)

DATASET = "demo-ct"
EVAL_DATASET = "demo-ct-eval"
EXPERIMENT = "demo-vista3d"
# What the small demo VISTA-3D was trained on (medcloud.families.vista3d.demo): class 3 = the bright spheres.
LABELS: dict[str, str] = {str(SPLEEN): "spleen"}
# One round: 2 epochs of 20 patches, validated (a class prompt on each eval volume) before and after. Sized for
# about a minute on two idle CPU cores (not measured there); on a busy machine the validation takes minutes.
TRAIN_SPEC: dict[str, Any] = {"epochs": 2, "val_interval": 2, "learning_rate": 0.005, "steps_per_epoch": 20}
ANNOTATION_SPECS: dict[str, Any] = {"round_size": 1, "stop_criteria": {"max_rounds": 100}, "train_spec": TRAIN_SPEC}
ACTIVE = ("Pending", "Running")
REQUEST_TIMEOUT_S = 300


@dataclass(frozen=True)
class AnnotationDemo:
    """The ids of what the demo uses; `created` names what this call created (empty when all was reused)."""

    dataset_id: str
    eval_dataset_id: str
    experiment_id: str
    job_id: str
    created: list[str] = field(default_factory=list)


def write_annotation_data(root: Path, volumes: CtVolumes = CtVolumes()) -> tuple[Path, Path]:
    """`root/ct-dataset` (2 labeled + 6 unlabeled volumes) and `root/ct-eval` (2 labeled), written once."""
    folders = root / "ct-dataset", root / "ct-eval"
    if not (folders[0] / "manifest.json").exists():
        write_ct_dataset(folders[0], n_labeled=2, n_unlabeled=6, volumes=volumes, prefix="ct")
    if not (folders[1] / "manifest.json").exists():
        write_ct_dataset(
            folders[1], n_labeled=2, n_unlabeled=0, volumes=volumes, seed_from=SEEDS_FROM + 100, prefix="eval"
        )
    return folders


class _Api:
    """The few calls the set-up makes, with the token of one API key."""

    def __init__(self, client: httpx.Client, api_key: str, org: str, timeout_s: float) -> None:
        self.client, self.org, self.timeout = client, org, timeout_s
        resp = client.post("/api/v1/login", json={"ngc_api_key": api_key}, timeout=timeout_s)
        self._check(resp, "log in")
        self.headers = {"Authorization": f"Bearer {resp.json()['token']}"}

    @staticmethod
    def _check(resp: httpx.Response, what: str) -> None:
        if resp.status_code >= 400:
            raise RuntimeError(f"annotation demo: could not {what}: HTTP {resp.status_code} {resp.text[:500]}")

    def get(self, path: str, what: str, **params: str) -> Any:
        resp = self.client.get(
            f"/api/v1/orgs/{self.org}/{path}", headers=self.headers, params=params, timeout=self.timeout
        )
        self._check(resp, what)
        return resp.json()

    def post(self, path: str, body: dict[str, Any], what: str) -> httpx.Response:
        resp = self.client.post(
            f"/api/v1/orgs/{self.org}/{path}", headers=self.headers, json=body, timeout=self.timeout
        )
        self._check(resp, what)
        return resp


def _dataset(api: _Api, name: str, folder: Path, created: list[str]) -> str:
    found = [d for d in api.get("datasets", "list datasets")["datasets"] if d["name"] == name]
    if found:
        return str(found[0]["id"])
    body = {
        "name": name,
        "description": "Synthetic CT volumes made by medcloud for the annotation demo",
        "type": "semantic_segmentation",
        "client_url": str(folder),
    }
    created.append(name)
    return str(api.post("datasets", body, f"create dataset {name}").json()["id"])


def _experiment(api: _Api, dataset_id: str, eval_dataset_id: str, created: list[str]) -> tuple[str, bool]:
    """The demo experiment's id, and whether its model host needs no warm-up (created now, or real-time off)."""
    mine = api.get("experiments", "list experiments", user_only="true")["experiments"]
    found = [e for e in mine if e["name"] == EXPERIMENT]
    if found:
        return str(found[0]["id"]), not found[0]["realtime_infer"]  # turned off by its user: nothing to warm
    bases = api.get("experiments:base", "list base experiments")["experiments"]
    base = next(b["id"] for b in bases if b["network_arch"] == "monai_vista3d")
    body = {
        "name": EXPERIMENT,
        "description": "The annotation demo: VISTA-3D in real time on demo-ct, learning from each saved label",
        "network_arch": "monai_vista3d",
        "base_experiment": [base],
        "train_datasets": [dataset_id],
        "eval_dataset": eval_dataset_id,
        "inference_dataset": dataset_id,
        "realtime_infer": True,
        # a class prompt runs the whole sliding window: on a busy CPU that may take longer than the default 60 s
        "realtime_infer_request_timeout": REQUEST_TIMEOUT_S,
        "model_params": {"labels": LABELS},
    }
    created.append(EXPERIMENT)
    return str(api.post("experiments", body, f"create experiment {EXPERIMENT}").json()["id"]), True


def _annotation_job(api: _Api, experiment_id: str, created: list[str]) -> str:
    jobs = api.get(f"experiments/{experiment_id}/jobs", "list jobs")["jobs"]
    active = [j for j in jobs if j["action"] == "annotation" and j["status"] in ACTIVE]
    if active:
        return str(active[0]["id"])
    body = {"action": "annotation", "name": "demo annotation", "specs": ANNOTATION_SPECS}
    created.append("annotation job")
    return str(api.post(f"experiments/{experiment_id}/jobs", body, "start the annotation job").json())


def warm_up_request(dataset_dir: Path) -> dict[str, Any]:
    """A cheap inference: one click at the centre of the first labeled image's object (a few point windows,
    where a class prompt runs the whole sliding window)."""
    import nibabel as nib
    import numpy as np

    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    entry = next(e for e in manifest["data"] if "label" in e)
    label = np.asarray(nib.load(dataset_dir / entry["label"]["path"][0]).dataobj) == SPLEEN
    inside = [int(round(float(c.mean()))) for c in label.nonzero()]
    params = {"points": [inside], "point_labels": [1], "label_prompt": [SPLEEN]}
    return {"action": "inference", "specs": {"image": entry["image"]["id"], "bundle_params": params}}


def prepare_annotation_demo(
    client: httpx.Client,
    *,
    api_key: str,
    org: str,
    dataset_dir: Path,
    eval_dir: Path,
    warm_up: bool = True,
    timeout_s: float = 900.0,
) -> AnnotationDemo:
    """Create (or find, by name) `demo-ct`, `demo-ct-eval`, the real-time experiment `demo-vista3d` and a running
    annotation job, as the user of `api_key` in `org`; return their ids.

    `client` has the server's `base_url` (an `httpx.Client` or a `TestClient`); the server needs a VISTA-3D
    bundle (`MEDCLOUD_VISTA3D_BUNDLE`, e.g. `ensure_demo_vista3d(...)`) and local dataset paths allowed for `org`
    in those folders (`MEDCLOUD_DATASET_LOCAL_ROOTS`; `medcloud serve` gives the demo org its `data/demo`).
    The folders come from `write_annotation_data`. `warm_up`: when the experiment already existed, run one
    click inference (`warm_up_request`), so its model host, not running after a restart, loads now rather
    than on the first user request.
    Blocking (creating the experiment loads the model): call it from a thread in async code.

    Example:
        >>> with httpx.Client(base_url=server.url) as client:  # doctest: +SKIP
        ...     demo = prepare_annotation_demo(client, api_key=key, org="acme", dataset_dir=ct, eval_dir=ct_eval)
    """
    api = _Api(client, api_key, org, timeout_s)
    created: list[str] = []
    dataset_id = _dataset(api, DATASET, dataset_dir, created)
    eval_id = _dataset(api, EVAL_DATASET, eval_dir, created)
    experiment_id, warm = _experiment(api, dataset_id, eval_id, created)
    job_id = _annotation_job(api, experiment_id, created)
    if warm_up and not warm:
        try:
            started = time.monotonic()
            api.post(f"experiments/{experiment_id}/jobs", warm_up_request(dataset_dir), "warm up the model host")
            log.info("Annotation demo: model host loaded, warm-up click answered in %.1f s", time.monotonic() - started)
        except (RuntimeError, httpx.HTTPError, OSError, ValueError, StopIteration) as exc:
            log.warning("Annotation demo: the warm-up inference failed (the first request loads the model): %s", exc)
    return AnnotationDemo(dataset_id, eval_id, experiment_id, job_id, created)


def _loopback(host: str) -> str:
    """Where this server answers itself: its own address, or loopback when it listens on all of them."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _wait_until_answering(client: httpx.Client, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if client.get("/api/v1/health/readiness", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"annotation demo: the server did not answer within {deadline_s:.0f} s")
        time.sleep(0.2)


def _prepare_on_this_server(ctx: Context) -> AnnotationDemo:
    from medcloud.demo.setup import demo_key

    demo_dir = ctx.settings.data_dir / "demo"
    dataset_dir, eval_dir = write_annotation_data(demo_dir)
    base_url = f"http://{_loopback(ctx.settings.host)}:{ctx.settings.port}"
    with httpx.Client(base_url=base_url) as client:
        _wait_until_answering(client, 120)
        return prepare_annotation_demo(
            client,
            api_key=demo_key(ctx),
            org=ctx.settings.demo_org,
            dataset_dir=dataset_dir,
            eval_dir=eval_dir,
            timeout_s=ctx.settings.host_start_timeout_s + 60,
        )


async def serve_annotation_demo(ctx: Context) -> bool:
    """Prepare the annotation demo on this running server, off the event loop (`medcloud serve`, once the demo
    models are ready); False when it failed (logged). The viewer shows the model loading until its host is up.
    """
    started = time.monotonic()
    log.info(
        "Annotation demo: preparing %s, %s and %s (the first start writes the CT volumes)…",
        DATASET,
        EVAL_DATASET,
        EXPERIMENT,
    )
    try:
        demo = await asyncio.to_thread(_prepare_on_this_server, ctx)
    except Exception:
        log.exception("Annotation demo: set-up failed; the viewer works, without the demo experiment")
        return False
    log.info(
        "Annotation demo ready in %.0f s: experiment %s (%s), annotation job %s, datasets %s and %s%s",
        time.monotonic() - started,
        EXPERIMENT,
        demo.experiment_id,
        demo.job_id,
        demo.dataset_id,
        demo.eval_dataset_id,
        f"; created {', '.join(demo.created)}" if demo.created else "; all reused",
    )
    return True
