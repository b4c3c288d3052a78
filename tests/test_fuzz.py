"""Schema fuzzing (issue #7): every operation of medcloud's own OpenAPI document, authenticated, against real resources.

Two campaigns share one harness (a TestClient whose lifespan runs: job runner, learning hub):
- generated: schemathesis draws valid and schema-violating requests for each operation; most get our
  org and real resource ids in the path (and real dataset/bundle paths in bodies) so they reach handlers;
- mutated: a known-good body per action, each of its fields (at any depth) in turn replaced by each of a
  list of hostile values or removed; the same for query and path parameters.
Asserted for every response: no 5xx, and every error in the `{"error_desc", "error_code"}` shape; for the
generated ones also that the document describes the answer (status, content type, body schema).
Each campaign prints per operation how many cases ran and how many got past the schema/auth layer.

Nothing heavy can start: bundle URLs may only be local files (no host is allowed), the only real bundle
has no inference config (real-time creation fails fast with a 400), and the job runner does not start
processes here: train and batch jobs are validated and recorded, and stay Pending.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import traceback
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from medcloud.app import create_app
from medcloud.auth import service as auth
from medcloud.config import Settings
from medcloud.context import Context
from medcloud.jobs import files
from medcloud.jobs.orm import Job
from medcloud.jobs.runner import Scheduler

# Generated cases per operation and mode (valid, schema-violating): about 27 x 2 x 25.
EXAMPLES = 25
ORG = "acme"
PREFIX = f"/api/v1/orgs/{ORG}"
# 400s that the schema/auth layer answers before a handler's own logic runs.
SCHEMA_REJECTS = (
    "Invalid Input. Field `",
    "Invalid Input. The request body",
    "ID passed is not a valid UUID",
    "Invalid Input. Query parameter",
    "Invalid Input. `sort` must",
)
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
MISSING = object()  # a mutation that removes the field
# Values a schema-driven generator rarely produces but clients do send: odd URLs and paths, wrong types,
# extreme numbers, empty and nested containers.
HOSTILE_STRINGS: list[str] = [
    "http://[::1/x",
    "http://[::1]:99999/x",
    "https://",
    "s3://",
    "gs://",
    "file:///etc/passwd",
    "/etc/passwd",
    "/",
    "../../../../etc",
    "a\x00b",
    "",
    " ",
    "\u202e\U0001f600",
    "x" * 5000,
    "y" * 300,
    "9" * 5000,
    "$import os",
    "@bundle_root",
    "%(x)s{0}",
]
HOSTILE: list[Any] = [
    *HOSTILE_STRINGS,
    5,
    -1,
    0,
    2**63,
    10**300,
    1e308,
    0.5,
    True,
    None,
    [],
    [None],
    [[[[]]]],
    {},
    {"": None},
    {"image": 5, "label": []},
    MISSING,
]


def _minimal_bundle(root: Path) -> Path:
    """Metadata and an empty train config: experiments and train jobs can be created, no model can load."""
    meta = {
        "version": "0.1.0",
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "liver"}}}},
    }
    archive = root / "meta_only.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("meta_only/configs/metadata.json", json.dumps(meta))
        zf.writestr("meta_only/configs/train.json", "{}")
    return archive


def _dataset(root: Path) -> Path:
    """A one-image object-store dataset (a manifest and a tiny file)."""
    folder = root / "dataset"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.nii.gz").write_bytes(b"not really an image")
    manifest = {"data": [{"image": {"path": ["images/a.nii.gz"], "id": "img-1"}}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


class Fuzz:
    """The running app, the real resources, and what a campaign saw."""

    def __init__(self, client: TestClient, key: str, token: str, real: dict[str, str], paths: dict[str, str]):
        self.client = client
        self.key = key
        self.headers = {"Authorization": f"Bearer {token}"}
        self.real = real
        self.paths = paths
        self.cases: Counter[str] = Counter()
        self.reached: Counter[str] = Counter()
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.seconds: Counter[str] = Counter()
        self.failures: dict[tuple[str, str], str] = {}

    def request(self, label: str, method: str, url: str, **request: Any) -> Any:
        """Send one request, record its status, check the answer and return it (None for a server crash)."""
        request["headers"] = {**(request.get("headers") or {}), **self.headers}
        sent = f"{method} {url} {json.dumps({k: v for k, v in request.items() if k != 'headers'}, default=str)}"
        self.cases[label] += 1
        started = time.monotonic()
        try:
            response = self.client.request(method, url, **request)
        except Exception as exc:  # the TestClient re-raises what the server did not handle (a 500)
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/medcloud/" in f.filename]
            where = f"{frames[-1].filename.split('/medcloud/')[-1]}:{frames[-1].lineno}" if frames else "?"
            self.failures.setdefault(
                (label, f"{type(exc).__name__} at {where}"), f"{exc}"[:300] + f"\n    {sent[:800]}"
            )
            self.statuses[label][500] += 1
            return None
        finally:
            self.seconds[label] += time.monotonic() - started
        self.statuses[label][response.status_code] += 1
        self._check(label, sent, response)
        return response

    def _check(self, label: str, sent: str, response: Any) -> None:
        status = response.status_code
        if status >= 500:
            self.failures.setdefault((label, f"{status} {response.text[:200]}"), sent[:800])
            return
        if status < 400:
            self.reached[label] += 1
            return
        try:
            body = response.json()
        except ValueError:
            body = None
        if not (
            isinstance(body, dict)
            and set(body) == {"error_desc", "error_code"}
            and isinstance(body["error_desc"], str)
            and body["error_code"] == status
        ):
            self.failures.setdefault((label, f"{status} not in the error shape: {response.text[:200]}"), sent[:800])
            return
        rejected = status == 400 and any(p in body["error_desc"] for p in SCHEMA_REJECTS)
        # A 401/403 of an org route is the auth layer's; login's 401 is its handler's answer.
        if not rejected and not (status in (401, 403) and "/orgs/" in label):
            self.reached[label] += 1

    def send_case(self, case: Any, how: int) -> None:
        """A schemathesis case. `how`: 0 as generated; 1 our org; 2 our org and real ids and paths."""
        if isinstance(case.body, dict) and case.body.get("cloud_type") in ("aws", "gcp"):
            # Unreachable from here, their clients retry for seconds to a minute; azure's fails at once.
            case.body["cloud_type"] = "azure"
        if how >= 1 and "org" in case.path_parameters:
            case.path_parameters["org"] = ORG
        if how >= 2:
            for key in case.path_parameters:
                if key in self.real:
                    case.path_parameters[key] = self.real[key]
            if isinstance(case.body, dict):
                self._real_body_values(case.body)
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        request: dict[str, Any] = {"headers": kwargs.get("headers"), "params": kwargs.get("params") or None}
        if "json" in kwargs:
            request["json"] = kwargs["json"]
        elif isinstance(kwargs.get("data"), bytes | str):
            request["content"] = kwargs["data"]
        elif kwargs.get("data") is not None:
            request["data"] = kwargs["data"]
        response = self.request(case.operation.label, kwargs["method"], kwargs["url"], **request)
        if response is None:
            return
        # The document must say what the server does: documented status, content type and body shape.
        try:
            case.validate_response(response, checks=CONFORMANCE)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (case.operation.label, f"{failure.code} {failure.title} ({response.status_code})")
                self.failures.setdefault(key, failure.message[:400])

    def _real_body_values(self, body: dict[str, Any]) -> None:
        replace = {
            "ngc_api_key": self.key,
            "client_url": self.paths["dataset"],
            "bundle_url": self.paths["bundle"],
            "eval_dataset": self.real["dataset_id"],
            "inference_dataset": self.real["dataset_id"],
            "train_datasets": [self.real["dataset_id"]],
        }
        for key, value in replace.items():
            if key in body:
                body[key] = value

    def summary(self, campaign: str) -> str:
        lines = []
        for label in sorted(self.cases, key=lambda x: x.split(" ", 1)[::-1]):
            codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses[label].items()))
            lines.append(
                f"  {label}: {self.cases[label]} cases, {self.reached[label]} reached the handler ({codes}; "
                f"{self.seconds[label]:.1f} s)"
            )
        total, reached = sum(self.cases.values()), sum(self.reached.values())
        lines.append(f"{campaign}: {total} cases over {len(self.cases)} operations, {reached} reached handlers")
        return "\n".join(lines)

    def assert_clean(self) -> None:
        failures = "\n".join(f"{label}: {what}\n    {sent}" for (label, what), sent in sorted(self.failures.items()))
        assert not self.failures, f"{len(self.failures)} distinct server error(s):\n{failures}"
        unreached = [label for label in self.cases if not self.reached[label]]
        assert not unreached, f"no input reached the handler of {unreached}"


@pytest.fixture
def fuzz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fuzz]:
    # gcsfs otherwise probes a bucket's type over gRPC for 60 s before failing on an offline machine.
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    # Train and batch jobs the fuzzer creates are checked and recorded, but stay Pending: no process starts.
    monkeypatch.setattr(Scheduler, "_schedule", lambda self: None)
    data_dir = tmp_path / "data"
    ctx = Context.build(
        Settings(
            data_dir=data_dir,
            demo=False,
            bundle_allowed_hosts=[],  # no URL leaves the machine; local bundle files only
            bundle_allow_local_paths=True,
            dataset_allow_local_paths=True,
            dataset_local_roots={"*": [str(tmp_path)]},
            max_train_jobs=1,
        )
    )
    bundle, dataset = _minimal_bundle(tmp_path), _dataset(tmp_path)
    with TestClient(create_app(context=ctx)) as client:
        with ctx.db.session() as session:
            key = auth.create_api_key(session, org=ORG, user="fuzzer")
        login = client.post("/api/v1/login", json={"ngc_api_key": key}).json()
        headers = {"Authorization": f"Bearer {login['token']}"}

        def create(path: str, body: dict) -> str:
            resp = client.post(f"{PREFIX}/{path}", json=body, headers=headers)
            assert resp.status_code == 201, resp.text
            return resp.json()["id"]

        real = {"org": ORG, "dataset_id": create("datasets", {"name": "ds", "client_url": str(dataset)})}
        real["image_id"] = "img-1"  # the dataset's one image (not a readable volume: its routes must say so, not crash)
        real["workspace_id"] = create(
            "workspaces",
            {"name": "ws", "cloud_type": "local", "cloud_specific_details": {"cloud_bucket_name": str(tmp_path)}},
        )
        real["experiment_id"] = create(
            "experiments",
            {
                "name": "exp",
                "network_arch": "monai_custom",
                "bundle_url": str(bundle),
                "train_datasets": [real["dataset_id"]],
                "eval_dataset": real["dataset_id"],
                "inference_dataset": real["dataset_id"],
            },
        )
        # A finished train job: the job routes have something real to read, cancel (a no-op) and delete.
        with ctx.db.session() as session:
            job = Job(
                org=ORG,
                user_id=login["user_id"],
                experiment_id=real["experiment_id"],
                action="train",
                status="Done",
                specs={"epochs": 1},
                name="done",
                description="",
                result={"epoch": 1, "key_metric": 0.5, "detailed_status": {"message": "Done."}},
            )
            session.add(job)
            session.flush()
            real["job_id"] = job.id
        log = files.job_dir(data_dir, real["job_id"]) / files.LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("epoch 1\n")
        yield Fuzz(client, key, login["token"], real, {"bundle": str(bundle), "dataset": str(dataset)})
        with ctx.db.session() as session:
            started = [j.id for j in session.query(Job) if j.backend_handle]
        assert not started, f"job processes were started: {started}"


def _order(operation: Any) -> tuple[int, str]:
    # Deletes last, so the real resources serve every other operation first.
    return ({"get": 0, "post": 1, "patch": 2, "delete": 3}.get(operation.method.lower(), 1), operation.path)


@pytest.mark.timeout(600)
def test_generated_requests_every_operation(fuzz: Fuzz) -> None:
    document = fuzz.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=_order)
    assert len(operations) == sum(len(ops) for ops in document["paths"].values())
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode), how=st.sampled_from([2, 1, 2, 0, 2]))
            def run(case: Any, how: int) -> None:
                fuzz.send_case(case, how)

            try:
                run()
            except Unsatisfiable:  # an operation with nothing to violate (no parameter, no body)
                assert mode == GenerationMode.NEGATIVE, operation.label
    print("\n" + fuzz.summary("generated"))
    fuzz.assert_clean()


def _valid_bodies(fuzz: Fuzz) -> list[tuple[str, str, dict[str, Any]]]:
    """(operation label, URL, a body that the operation accepts): the starting points of the mutations."""
    ds, exp, ws, job = (fuzz.real[k] for k in ("dataset_id", "experiment_id", "workspace_id", "job_id"))
    folder = str(Path(fuzz.paths["dataset"]).parent)
    o = "/api/v1/orgs/{org}"
    return [
        ("POST /api/v1/login", "/api/v1/login", {"ngc_api_key": fuzz.key}),
        (
            f"POST {o}/workspaces",
            f"{PREFIX}/workspaces",
            {
                "name": "w",
                "description": "d",
                "cloud_type": "local",
                "cloud_specific_details": {"cloud_bucket_name": folder},
            },
        ),
        (
            f"POST {o}/workspaces",
            f"{PREFIX}/workspaces",
            {
                "name": "w",
                "cloud_type": "azure",
                "cloud_specific_details": {
                    "cloud_bucket_name": "b",
                    "account_name": "a",
                    "access_key": "a2V5",
                    "endpoint_url": "https://medcloud-fuzz.invalid/a",
                    "cloud_region": "r",
                },
            },
        ),
        (
            f"PATCH {o}/workspaces/{{workspace_id}}",
            f"{PREFIX}/workspaces/{ws}",
            {"name": "w2", "description": "d", "cloud_specific_details": {"cloud_bucket_name": folder}},
        ),
        (
            f"POST {o}/datasets",
            f"{PREFIX}/datasets",
            {
                "name": "d",
                "description": "",
                "type": "semantic_segmentation",
                "format": "monai",
                "client_url": fuzz.paths["dataset"],
                "client_id": "id",
                "client_secret": "secret",
            },
        ),
        (
            f"POST {o}/datasets",
            f"{PREFIX}/datasets",
            {"name": "d", "client_url": "https://medcloud-fuzz.invalid/dicom-web", "filters": "Modality=CT"},
        ),
        (
            f"PATCH {o}/datasets/{{dataset_id}}",
            f"{PREFIX}/datasets/{ds}",
            {"name": "d2", "description": "x", "type": "semantic_segmentation", "format": "monai"},
        ),
        (f"POST {o}/datasets/{{dataset_id}}/jobs", f"{PREFIX}/datasets/{ds}/jobs", {"action": "nextimage"}),
        (
            f"POST {o}/datasets/{{dataset_id}}/jobs",
            f"{PREFIX}/datasets/{ds}/jobs",
            {"action": "cacheimage", "specs": {"image": "img-1", "ttl": 60}},
        ),
        (
            f"POST {o}/datasets/{{dataset_id}}/jobs",
            f"{PREFIX}/datasets/{ds}/jobs",
            {
                "action": "notify",
                "specs": {"added": [{"image": "img-1", "label": "l-1"}], "updated": {"image": "img-1", "label": "l"}},
            },
        ),
        (
            f"POST {o}/experiments",
            f"{PREFIX}/experiments",
            {
                "name": "e",
                "description": "",
                "network_arch": "monai_custom",
                "train_datasets": [ds],
                "eval_dataset": ds,
                "inference_dataset": ds,
                "realtime_infer": False,
                "realtime_infer_request_timeout": 60,
                "bundle_url": fuzz.paths["bundle"],
                "workspace": ws,
                "model_params": {"labels": {"1": "liver"}, "override": {"a#b": 1}, "image_key": "image"},
            },
        ),
        (
            f"POST {o}/experiments",
            f"{PREFIX}/experiments",
            {
                "name": "e",
                "network_arch": "monai_custom",
                "base_experiment": [exp],
                "cloud_details": {"cloud_type": "local", "cloud_bucket_name": folder, "access_key": "k"},
            },
        ),
        (
            f"PATCH {o}/experiments/{{experiment_id}}",
            f"{PREFIX}/experiments/{exp}",
            {
                "name": "e",
                "description": "d",
                "realtime_infer": False,
                "realtime_infer_request_timeout": 30,
                "eval_dataset": ds,
                "inference_dataset": ds,
                "train_datasets": [ds],
            },
        ),
        (
            f"POST {o}/experiments/{{experiment_id}}/jobs",
            f"{PREFIX}/experiments/{exp}/jobs",
            {
                "action": "train",
                "name": "t",
                "description": "d",
                "parent_job_id": job,
                "specs": {
                    "epochs": 1,
                    "val_interval": 1,
                    "config_file": "configs/train.json",
                    "num_gpu": 0,
                    "train#trainer#max_epochs": 1,
                },
            },
        ),
        (
            f"POST {o}/experiments/{{experiment_id}}/jobs",
            f"{PREFIX}/experiments/{exp}/jobs",
            {"action": "batchinfer", "specs": {"train_job_id": job}},
        ),
        (
            f"POST {o}/experiments/{{experiment_id}}/jobs",
            f"{PREFIX}/experiments/{exp}/jobs",
            {"action": "inference", "specs": {"image": "img-1", "bundle_params": {"x": 1}, "dataset_id": ds}},
        ),
        (
            f"POST {o}/experiments/{{experiment_id}}/jobs",
            f"{PREFIX}/experiments/{exp}/jobs",
            {
                "action": "annotation",
                "specs": {"round_size": 1, "stop_criteria": {"max_rounds": 1, "key_metric": 0.9}, "train_spec": {}},
            },
        ),
    ]


def _slots(body: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every place in a JSON value: the root and each key or index at any depth."""
    yield path
    items = body.items() if isinstance(body, dict) else enumerate(body) if isinstance(body, list) else ()
    for key, item in items:
        yield from _slots(item, (*path, key))


def _mutated(body: Any, path: tuple, value: Any) -> Any:
    if not path:
        return None if value is MISSING else value
    out = copy.deepcopy(body)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is MISSING:
        node.pop(path[-1])  # from a dict, or a list item
    else:
        node[path[-1]] = value
    return out


@pytest.mark.timeout(600)
def test_hostile_values_in_every_field(fuzz: Fuzz, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="medcloud")
    # Parameters first: the body sweep creates hundreds of resources that lists would then return.
    document = fuzz.client.get("/openapi.json").json()
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {template}"
            names = [p["name"] for p in operation.get("parameters", [])]
            real_path = template.format(**fuzz.real)
            for name in names:
                for value in HOSTILE_STRINGS:
                    if name in fuzz.real:  # a path parameter
                        fuzz.request(
                            label, method.upper(), template.format(**{**fuzz.real, name: quote(value, safe="")})
                        )
                    elif method != "delete":
                        fuzz.request(label, method.upper(), real_path, params={name: value})
    for label, url, body in _valid_bodies(fuzz):
        for path in _slots(body):
            for value in HOSTILE:
                mutated = _mutated(body, path, value)
                resp = fuzz.request(label, "POST" if label.startswith("POST") else "PATCH", url, json=mutated)
                if resp is not None and resp.status_code == 201 and mutated.get("action") == "annotation":
                    # One annotation job per experiment: cancel it so the next mutation is checked in full.
                    fuzz.client.post(f"{url}/{resp.json()}:cancel", headers=fuzz.headers)
    print("\n" + fuzz.summary("mutated"))
    background = sorted({r.getMessage()[:200] for r in caplog.records})
    print("errors logged in the background:\n  " + "\n  ".join(background or ["none"]))
    fuzz.assert_clean()
