"""`/docs`: Swagger UI served from an installed package's files (`swagger-ui-bundle-v2`), never from a CDN.

FastAPI's stock `/docs` and `/redoc` pages load their scripts from cdn.jsdelivr.net: a page that holds
a user's bearer token would run whatever that host serves. Here the page loads three files of the
installed package (`/docs/assets/...`), under a Content-Security-Policy that lets it reach this
server only (the inline start-up script is allowed by its hash). Swagger UI's online validator is
off: it would send the document's URL to validator.swagger.io. `/redoc` is not served (no vendored
copy); `MEDCLOUD_API_DOCS=false` turns `/docs` off too. `/openapi.json` is always served.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from medcloud.errors import NotFound

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# The only files served, with their media types: the package's folder holds more (a demo index.html
# that points at petstore.swagger.io, source maps).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def assets_folder() -> Path:
    """Where `swagger-ui-bundle-v2` (imported as `swagger_ui_bundle`) keeps Swagger UI's distribution files."""
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def _page(openapi_url: str, title: str) -> tuple[bytes, str]:
    """The page's HTML and its Content-Security-Policy (only this server; the inline script by hash)."""
    html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    ).body
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html.decode())
    )
    csp = (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return bytes(html), csp


def install(app: FastAPI, *, enabled: bool) -> None:
    """Serve `/docs` and its assets when `enabled` (build the app with `docs_url=None, redoc_url=None`)."""
    if not enabled or app.openapi_url is None:
        return
    html, csp = _page(app.openapi_url, f"{app.title} - API docs")
    folder = assets_folder()
    headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html, headers={**headers, "Content-Security-Policy": csp, "Cache-Control": "no-cache"})

    @app.get(f"{ASSETS_PATH}/{{name}}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise NotFound(f"No such file of the API docs: {name}.")
        # FileResponse reads in a worker thread: the event loop never waits on the disk.
        return FileResponse(
            folder / name, media_type=ASSETS[name], headers={**headers, "Cache-Control": "max-age=3600"}
        )
