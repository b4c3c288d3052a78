"""`/docs` loads Swagger UI from this server only (api/docs.py); `/redoc` is off; a setting turns `/docs` off."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from browser import browser, new_page
from conftest import Api, make_api

from medcloud.api.docs import ASSETS, assets_folder

URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""", re.IGNORECASE)


def test_docs_reference_no_other_host_and_their_assets_are_served(api: Api) -> None:
    resp = api.client.get("/docs")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert URL.findall(html) == [], URL.findall(html)  # no http://, https:// nor protocol-relative //host
    assert "cdn.jsdelivr.net" not in html and "fastapi.tiangolo.com" not in html
    assert '"validatorUrl": null' in html  # Swagger UI would send the document's URL to validator.swagger.io
    assert "url: '/openapi.json'" in html
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "'sha256-" in csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]  # scripts: ours and by hash

    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(referenced) == sorted(f"/docs/assets/{name}" for name in ASSETS)
    for path in referenced:
        asset = api.client.get(path)
        assert asset.status_code == 200, path
        name = path.rsplit("/", 1)[1]
        assert asset.content == (assets_folder() / name).read_bytes()
        assert asset.headers["content-type"].split(";")[0] == ASSETS[name].split(";")[0]
    assert b"SwaggerUIBundle" in api.client.get("/docs/assets/swagger-ui-bundle.js").content


def test_only_the_listed_assets_are_served(api: Api) -> None:
    assert (assets_folder() / "index.html").is_file()  # the package's demo page (it points at petstore.swagger.io)
    for name in (
        "index.html",
        "swagger-initializer.js",
        "swagger-ui-bundle.js.map",
        "..%2F__init__.py",
        "%2Fetc%2Fpasswd",
    ):
        resp = api.client.get(f"/docs/assets/{name}")
        assert resp.status_code == 404, name
        assert resp.json()["error_code"] == 404


def test_redoc_is_not_served_and_the_document_still_is(api: Api) -> None:
    for path in ("/redoc", "/docs/oauth2-redirect"):
        resp = api.client.get(path)
        assert resp.status_code == 404, path
        assert resp.json() == {"error_desc": f"Not Found: no API route {path}.", "error_code": 404}
    assert api.client.get("/openapi.json").json()["info"]["title"] == "medcloud"


def test_the_setting_turns_docs_off(tmp_path: Path) -> None:
    with make_api(tmp_path / "data", api_docs=False) as api:
        for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/redoc"):
            assert api.client.get(path).status_code == 404, path
        assert api.client.get("/openapi.json").status_code == 200


def test_the_page_renders_in_a_browser_that_reaches_no_other_host(api: Api) -> None:
    """Chromium loads /docs with the CSP; every request is answered by the app, none leaves for another host."""
    outside: list[str] = []
    served: list[str] = []

    def answer(route) -> None:  # type: ignore[no-untyped-def]
        url = urlsplit(route.request.url)
        if url.netloc != "testserver":
            outside.append(route.request.url)
            route.abort()
            return
        resp = api.client.request(route.request.method, url.path + (f"?{url.query}" if url.query else ""))
        served.append(url.path)
        route.fulfill(status=resp.status_code, headers=dict(resp.headers), body=resp.content)

    with browser() as chromium:
        page = new_page(chromium, "http://testserver")
        page.route("**/*", answer)
        page.goto("/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)  # operations drawn from /openapi.json
        paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
        errors = list(page.errors)  # type: ignore[attr-defined]
    assert any("/api/v1/login" in p for p in paths), paths
    assert outside == [] and errors == [], (outside, errors)
    assert {"/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/openapi.json"} <= set(served)
