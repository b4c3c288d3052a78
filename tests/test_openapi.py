"""The OpenAPI document: valid, and describing the bodies, actions, lists and errors that handlers parse by hand."""

from __future__ import annotations

import pytest

BODIES = {
    ("post", "/api/v1/login"): "LoginRequest",
    ("post", "/api/v1/orgs/{org}/workspaces"): "WorkspaceCreate",
    ("patch", "/api/v1/orgs/{org}/workspaces/{workspace_id}"): "WorkspacePatch",
    ("post", "/api/v1/orgs/{org}/datasets"): "DatasetCreate",
    ("patch", "/api/v1/orgs/{org}/datasets/{dataset_id}"): "DatasetPatch",
    ("post", "/api/v1/orgs/{org}/experiments"): "ExperimentCreate",
    ("patch", "/api/v1/orgs/{org}/experiments/{experiment_id}"): "ExperimentPatch",
}
ACTIONS = {
    "/api/v1/orgs/{org}/datasets/{dataset_id}/jobs": {"nextimage", "cacheimage", "notify"},
    "/api/v1/orgs/{org}/experiments/{experiment_id}/jobs": {"inference", "train", "annotation", "batchinfer"},
}


@pytest.fixture
def document(api) -> dict:  # type: ignore[no-untyped-def]
    resp = api.client.get("/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def test_document_validates(document: dict) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)
    import schemathesis

    schema = schemathesis.openapi.from_dict(document)
    assert all(result.ok() for result in schema.get_all_operations())


def test_every_body_is_described(document: dict) -> None:
    paths = document["paths"]
    for (method, path), model in BODIES.items():
        body = paths[path][method]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert model in document["components"]["schemas"]
    # Nested request shapes are components too.
    assert {"CloudDetails", "ModelParams", "CacheImageSpecs", "NotifySpecs", "TrainSpecs"} <= set(
        document["components"]["schemas"]
    )


def test_every_action_is_described(document: dict) -> None:
    schemas = document["components"]["schemas"]
    for path, actions in ACTIONS.items():
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(body["discriminator"]["mapping"]) == actions
        for ref in body["oneOf"]:
            name = ref["$ref"].rsplit("/", 1)[-1]
            assert schemas[name]["properties"]["action"]["const"] in actions
    inference = document["paths"]["/api/v1/orgs/{org}/experiments/{experiment_id}/jobs"]["post"]["responses"]["201"]
    assert set(inference["content"]) == {"application/json", "multipart/form-data"}
    # The colon routes are there, with their own answers.
    jobs = "/api/v1/orgs/{org}/experiments/{experiment_id}/jobs/{job_id}"
    assert "application/gzip" in document["paths"][f"{jobs}:download"]["get"]["responses"]["200"]["content"]
    assert document["paths"][f"{jobs}:cancel"]["post"]["responses"]["200"]["content"]["application/json"]
    assert "/api/v1/orgs/{org}/experiments:base" in document["paths"]


def test_errors_auth_and_lists_are_described(document: dict) -> None:
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)  # schema violations are 400 here
            names = {p["name"].lower() for p in operation.get("parameters", [])}
            assert "authorization" not in names, (method, path)
            if path.startswith("/api/v1/health"):
                continue
            for status in ["400"] + (["401", "403"] if "/orgs/" in path else []):
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            if "/orgs/" in path:
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}]  # Bearer token or ApiKey header
            if "requestBody" in operation:
                assert "413" in responses
    assert set(document["components"]["schemas"]["ErrorBody"]["required"]) == {"error_desc", "error_code"}
    listing = document["paths"]["/api/v1/orgs/{org}/experiments"]["get"]
    assert {"skip", "size", "sort", "name", "type", "network_arch", "format", "user_only"} <= {
        p["name"] for p in listing["parameters"]
    }
    ok = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ExperimentList"}
