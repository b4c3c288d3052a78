"""The viewer's files as served: the vendored NiiVue is the recorded build, and the page's headers."""

from __future__ import annotations

import hashlib

from medcloud.viewer import STATIC_DIR

VENDOR = STATIC_DIR / "vendor"


def test_vendored_niivue_is_the_recorded_build_with_its_licence() -> None:
    recorded = (VENDOR / "niivue.js.sha256").read_text().split()[0]
    assert hashlib.sha256((VENDOR / "niivue.js").read_bytes()).hexdigest() == recorded
    assert (VENDOR / "NIIVUE_VERSION").read_text().strip() == "0.69.0"
    assert "BSD 2-Clause License" in (VENDOR / "LICENSE-niivue.txt").read_text()
    head = (VENDOR / "niivue.js").read_text()[:200_000]
    assert "\nimport " not in head and "import(" not in head  # self-contained: no bundler needed


def test_viewer_page_headers_and_config(api) -> None:  # type: ignore[no-untyped-def]
    client = api.client
    redirect = client.get("/viewer", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/viewer/"
    page = client.get("/viewer/")
    assert page.status_code == 200 and '<script type="module" src="js/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/viewer/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/viewer/vendor/niivue.js").status_code == 200
    assert client.get("/viewer/config.json").json() == {"default_org": api.ctx.settings.demo_org}
    assert client.get("/viewer/../api/v1/health/liveness").status_code in {200, 404}  # no escape, no 500
    assert client.get("/viewer/js/../../__init__.py").status_code == 404
