"""Hostile request bodies (issue #7, finding 12): size cap, lying lengths, deep nesting, huge numbers, odd JSON.

Every refusal is a 4xx in the `{"error_desc", "error_code"}` shape, and the server keeps answering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Api, make_api

from medcloud.devserver import create_key, medcloud_serve

LIMIT = 4096


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Api]:
    with make_api(tmp_path / "data", max_body_bytes=LIMIT) as running:
        yield running


def error(resp: httpx.Response, status: int, *words: str) -> str:
    """Assert the status and the error shape; return the sentence after checking it names `words`."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error_desc", "error_code"} and body["error_code"] == status, body
    for word in words:
        assert word in body["error_desc"], body
    return body["error_desc"]


def login(api: Api, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    return api.client.post("/api/v1/login", **kw)


def test_oversized_body_is_413_and_the_server_still_answers(small: Api) -> None:
    big = json.dumps({"ngc_api_key": "k" * (LIMIT * 4)})
    error(login(small, content=big), 413, "larger than", f"{LIMIT} bytes", "MEDCLOUD_MAX_BODY_BYTES")
    resp = small.post("datasets", content=json.dumps({"name": "x" * LIMIT * 2, "client_url": "/nowhere"}))
    error(resp, 413, "MEDCLOUD_MAX_BODY_BYTES")
    assert login(small, json={"ngc_api_key": small.keys["alice"]}).status_code == 201
    assert small.get("datasets").status_code == 200


def test_body_without_length_is_cut_at_the_limit(small: Api) -> None:
    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse early, only counting protects
        yield b'{"ngc_api_key": "'
        for _ in range(LIMIT // 100 + 10):
            yield b"k" * 100
        yield b'"}'

    error(login(small, content=chunks()), 413, "MEDCLOUD_MAX_BODY_BYTES")
    assert login(small, json={"ngc_api_key": small.keys["bob"]}).status_code == 201


def test_lying_content_length(small: Api) -> None:
    big = json.dumps({"ngc_api_key": "k" * (LIMIT * 2)}).encode()
    # A small declared length does not let a big body through: what arrives is counted.
    error(login(small, content=big, headers={"Content-Length": "10"}), 413, "MEDCLOUD_MAX_BODY_BYTES")
    # A huge declared length is refused before anything is read, however many digits it has.
    error(login(small, content=b"{}", headers={"Content-Length": "9" * 5000}), 413, "MEDCLOUD_MAX_BODY_BYTES")
    error(login(small, content=b"{}", headers={"Content-Length": "ten"}), 400, "Content-Length")
    error(login(small, content=b"{}", headers={"Content-Length": "-1"}), 400, "Content-Length")


def test_deeply_nested_json_on_login_is_400(api: Api) -> None:
    just_over = '{"ngc_api_key": ' + "[" * 64 + "]" * 64 + "}"
    error(login(api, content=just_over), 400, "nests deeper than 64 levels")
    # Deep enough for Python's own parser to give up (RecursionError before the fix: a 500).
    error(login(api, content="[" * 100_000 + "]" * 100_000), 400, "nests deeper than 64 levels")
    error(login(api, content='{"a":' * 50_000 + "1" + "}" * 50_000), 400, "nests deeper than 64 levels")
    # What the API really nests is far from the limit.
    assert login(api, content=json.dumps({"ngc_api_key": api.keys["alice"], "x": [[[[{"y": 1}]]]]})).status_code == 201


def test_huge_and_non_finite_numbers_are_400(api: Api) -> None:
    error(login(api, content='{"ngc_api_key": ' + "9" * 5000 + "}"), 400, "more than 1000 digits")
    error(login(api, content='{"ngc_api_key": -' + "9" * 5000 + "}"), 400, "more than 1000 digits")
    error(login(api, content='{"ngc_api_key": 1e999}'), 400, "out of range")
    for constant in ("NaN", "Infinity", "-Infinity"):
        error(login(api, content='{"ngc_api_key": ' + constant + "}"), 400, f"`{constant}` is not a JSON value")
    # Big but ordinary numbers are the schema's business: a clean 400 naming the field.
    error(login(api, content='{"ngc_api_key": ' + "9" * 500 + "}"), 400, "ngc_api_key")


def test_unpaired_surrogate_is_400(api: Api) -> None:
    error(login(api, content='{"ngc_api_key": "\\ud800"}'), 400, "unpaired surrogate")
    error(login(api, content='{"ngc_api_key": "a", "\\udfff": 1}'), 400, "unpaired surrogate")
    error(login(api, content='{"ngc_api_key": "\\ud800"}'.encode("utf-16")), 400, "unpaired surrogate")
    # A proper pair is an ordinary character.
    error(login(api, content='{"ngc_api_key": "\\ud83d\\ude00"}'), 401, "Invalid API key")


def test_non_json_bodies_are_400(api: Api) -> None:
    error(login(api, content=b"ngc_api_key=abc"), 400, "not valid JSON")
    error(login(api, content=b"\xff\xfe\x00garbage"), 400, "not valid JSON")
    error(login(api, content=b""), 400, "empty")
    error(login(api, content=b'{"ngc_api_key": "a"} trailing'), 400, "not valid JSON")


def test_json_that_is_not_an_object_is_400(api: Api) -> None:
    for body in ("[]", '[{"ngc_api_key": "a"}]', '"ngc_api_key"', "5", "null", "true"):
        error(login(api, content=body), 400, "must be a JSON object")
    error(api.post("datasets", content="[1, 2]"), 400, "must be a JSON object")


def test_unknown_routes_and_methods_answer_in_the_error_shape(api: Api) -> None:
    error(api.client.get("/api/v1/nowhere"), 404, "/api/v1/nowhere")
    error(api.get("datasets/a/b/c"), 404, "Not Found")
    resp = api.client.put("/api/v1/login", json={})
    error(resp, 405, "PUT", "/api/v1/login")
    assert resp.headers["allow"] == "POST"
    error(api.client.request("PATCH", api.url("datasets"), headers=api.headers()), 405, "PATCH")


def test_bodies_without_a_json_content_type_are_accepted(api: Api, local_dataset: Path) -> None:
    body = json.dumps({"name": "no content type", "client_url": str(local_dataset)})
    resp = api.client.post(api.url("datasets"), content=body, headers=api.headers())
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "no content type"
    plain = {**api.headers(), "Content-Type": "text/plain"}
    resp = api.client.patch(api.url(f"datasets/{resp.json()['id']}"), content='{"name": "plain"}', headers=plain)
    assert resp.status_code == 200 and resp.json()["name"] == "plain"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert login(api, content=json.dumps({"ngc_api_key": api.keys["bob"]}), headers=form).status_code == 201


def test_real_server_refuses_big_bodies_and_keeps_answering(tmp_path: Path) -> None:
    """Through uvicorn: the early 413 (Content-Length), the counted one (chunked), then a normal login."""
    data_dir = tmp_path / "serve"
    data_dir.mkdir()
    key = create_key(data_dir, "acme", "alice")
    with (
        medcloud_serve(data_dir, env={"MEDCLOUD_MAX_BODY_BYTES": str(LIMIT)}) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        error(client.post("/api/v1/login", content=b"x" * (LIMIT * 256)), 413, "MEDCLOUD_MAX_BODY_BYTES")
        error(client.post("/api/v1/login", content=iter([b"x" * 1024] * 64)), 413, "MEDCLOUD_MAX_BODY_BYTES")
        error(client.post("/api/v1/login", content="[" * 3000), 400, "nests deeper")  # under the size cap
        resp = client.post("/api/v1/login", content=json.dumps({"ngc_api_key": key}))
        assert resp.status_code == 201, resp.text
