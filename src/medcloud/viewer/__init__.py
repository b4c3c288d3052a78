"""The built-in annotation viewer: static HTML/JS served at `/viewer`, same origin as the API.

The page is plain ES modules (no build step) around a vendored NiiVue (`static/vendor/`, see
docs/viewer.md). It talks only to the public API with the user's own bearer token; the server adds
nothing privileged here except `/viewer/config.json`, which says which org to offer first.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from medcloud.config import Settings

STATIC_DIR = Path(__file__).parent / "static"

# Same-origin only; NiiVue compiles WebGL shaders but needs no eval; images come as blobs.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class _ViewerFiles(StaticFiles):
    """Static files with the viewer's security headers; the HTML is never cached stale."""

    async def get_response(self, path: str, scope):  # type: ignore[no-untyped-def]
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if path.endswith((".html", ".js", ".css")) or path in ("", "."):
            response.headers["Cache-Control"] = "no-cache"
        return response


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the viewer at /viewer (and /viewer/config.json with the org to offer first)."""

    @app.get("/viewer", include_in_schema=False)
    async def viewer_root() -> RedirectResponse:
        return RedirectResponse("/viewer/", status_code=307)

    @app.get("/viewer/config.json", include_in_schema=False)
    async def viewer_config() -> JSONResponse:
        return JSONResponse({"default_org": settings.demo_org}, headers={"Cache-Control": "no-store"})

    app.mount("/viewer/", _ViewerFiles(directory=STATIC_DIR, html=True), name="viewer")
