"""Login, bearer tokens, org membership and the error body shape."""

from __future__ import annotations

import json


def test_login_accepts_body_without_json_content_type(api):
    resp = api.client.post("/api/v1/login", data=json.dumps({"ngc_api_key": api.keys["alice"]}))
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {"user_id", "token"}
    again = api.client.post("/api/v1/login", json={"ngc_api_key": api.keys["alice"]}).json()
    assert again["user_id"] == body["user_id"]  # stable per user


def test_login_with_bad_key_is_401_with_error_body(api):
    resp = api.client.post("/api/v1/login", json={"ngc_api_key": "mck_nope"})
    assert resp.status_code == 401
    assert resp.json() == {"error_desc": "Invalid API key.", "error_code": 401}


def test_login_with_malformed_bodies_is_400(api):
    for body in ("not json", "[1]", json.dumps({"ngc_api_key": 5}), json.dumps({}), ""):
        resp = api.client.post("/api/v1/login", content=body)
        assert resp.status_code == 400, body
        assert "error_desc" in resp.json()


def test_requests_without_or_with_bad_token_are_401(api):
    assert api.client.get(api.url("datasets")).status_code == 401
    resp = api.client.get(api.url("datasets"), headers={"Authorization": "Bearer garbage"})
    assert resp.status_code == 401
    assert resp.json()["error_code"] == 401


def test_other_org_is_403(api):
    resp = api.get("datasets", user="eve", org="acme")
    assert resp.status_code == 403
    assert api.get("datasets", user="eve", org="other").status_code == 200


def test_health_needs_no_token(api):
    assert api.client.get("/api/v1/health/liveness").json() == {"status": "ok"}


def test_non_uuid_id_is_400_with_reference_sentence(api):
    resp = api.get("datasets/not-a-uuid")
    assert resp.status_code == 400
    assert resp.json()["error_desc"] == "Dataset ID passed is not a valid UUID"
    assert api.get("experiments/123").json()["error_desc"] == "Experiment ID passed is not a valid UUID"
