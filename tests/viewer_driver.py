"""Drive the built-in viewer in a real browser the way an annotator does, and read back what it did.

Used by the end-to-end viewer tests and by bench/viewer_speed.py. Every action goes through the
page (clicks on buttons, keys, real mouse clicks and drags on the WebGL canvas); reads go through
`window.medcloudViewer` and the requests the page sent. `Client` is the API next to the browser, for
the tests' set-up and read-back.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

ORG = "viewer-org"  # the org the viewer tests' keys are made for and the annotator signs in to

# In-page helpers: the native-order label volume, and the canvas pixel that shows a native voxel.
_NATIVE_LABELS = """
async () => {
  const coords = await import('/viewer/js/coords.js');
  const v = window.medcloudViewer;
  const native = coords.drawingToNative(v.nv.drawBitmap, v.state.image.lut);
  let s = '';
  for (let i = 0; i < native.length; i += 0x8000) s += String.fromCharCode.apply(null, native.subarray(i, i + 0x8000));
  return btoa(s);
}
"""

_PIXEL_FOR_VOXEL = """
async ({voxel}) => {
  const coords = await import('/viewer/js/coords.js');
  const v = window.medcloudViewer;
  const nv = v.nv;
  const image = v.state.image;
  // Scroll the views to the voxel (what the annotator does with the wheel), then find the pixel of
  // the axial view (NiiVue's axCorSag 0) that shows exactly that voxel.
  nv.scene.crosshairPos = nv.mm2frac(coords.voxelToMm(image.affine, voxel));
  nv.drawScene();
  const tile = nv.screenSlices.find((s) => s.axCorSag === 0);
  if (!tile) return null;
  const [left, top, width, height] = tile.leftTopWidthHeight;
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || 1;
  for (let y = Math.ceil(top); y < top + height; y += 1) {
    for (let x = Math.ceil(left); x < left + width; x += 1) {
      const frac = nv.canvasPos2frac([x, y]);
      if (!frac || frac[0] < 0) continue;
      const mm = nv.frac2mm(frac, 0, true);
      const hit = coords.mmToVoxel(image.inverse, image.sizes, [mm[0], mm[1], mm[2]]);
      if (hit && hit[0] === voxel[0] && hit[1] === voxel[1] && hit[2] === voxel[2]) {
        return [rect.left + x / dpr, rect.top + y / dpr];
      }
    }
  }
  return null;
}
"""


class Client:
    """The API as a script would call it, next to the browser (set-up and read-back only)."""

    def __init__(self, url: str, key: str) -> None:
        token = httpx.post(f"{url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
        self.http = httpx.Client(
            base_url=f"{url}/api/v1/orgs/{ORG}/", headers={"Authorization": f"Bearer {token}"}, timeout=300
        )

    def post(self, path: str, body: dict) -> dict | str:
        resp = self.http.post(path, json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def get(self, path: str) -> dict:
        resp = self.http.get(path)
        assert resp.status_code == 200, resp.text
        return resp.json()


@dataclass
class SentRequest:
    method: str
    path: str
    body: bytes | None


@dataclass
class ViewerDriver:
    page: Any
    sent: list[SentRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        def record(request: Any) -> None:
            if "/api/v1/" in request.url:
                path = request.url.split("/api/v1", 1)[1]
                self.sent.append(SentRequest(request.method, path, request.post_data_buffer))

        self.page.on("request", record)

    # ---- reading the page ----

    def wait_until(self, predicate: str, arg: Any = None, timeout_ms: float = 60_000) -> Any:
        """Poll a JS function `(arg) => value` until it is truthy. (Not page.wait_for_function: that
        evaluates strings with eval, which the viewer's Content-Security-Policy rightly forbids.)"""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            value = self.page.evaluate(predicate, arg)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the viewer did not reach {predicate!r} within {timeout_ms / 1000:.0f} s")
            time.sleep(0.05)

    def state(self, expression: str) -> Any:
        return self.page.evaluate(f"() => {{ const v = window.medcloudViewer; return {expression}; }}")

    def error_text(self) -> str | None:
        box = self.page.locator("#error")
        return None if box.is_hidden() else box.inner_text()

    def native_labels(self) -> np.ndarray:
        """The label layer in the image's own voxel order, shaped (x, y, z)."""
        data = base64.b64decode(self.page.evaluate(_NATIVE_LABELS))
        sizes = self.state("v.state.image.sizes")
        return np.frombuffer(data, np.uint8).reshape(tuple(sizes), order="F").copy()

    def requests_to(self, method: str, fragment: str) -> list[SentRequest]:
        return [r for r in self.sent if r.method == method and fragment in r.path]

    def last_inference_specs(self) -> dict:
        posts = [r for r in self.requests_to("POST", "/jobs") if r.body and b'"inference"' in r.body]
        return json.loads(posts[-1].body)["specs"]

    # ---- acting like an annotator ----

    @classmethod
    def open(cls, chromium: Any, base_url: str, **page_options: Any) -> ViewerDriver:
        """A new page on the viewer, its module booted."""
        from browser import new_page

        driver = cls(new_page(chromium, base_url, **page_options))
        driver.page.goto("/viewer/")
        driver.wait_until("() => window.medcloudViewer && window.medcloudViewer.booted")
        return driver

    def sign_in(self, key: str, org: str) -> None:
        self.page.fill("#api-key", key)
        self.page.fill("#org", org)
        self.page.click("#signin button[type=submit]")

    def wait_ready(self, timeout_ms: float = 60_000) -> None:
        self.wait_until("() => window.medcloudViewer.ready === true", timeout_ms=timeout_ms)

    def next_image(self, timeout_ms: float = 120_000) -> str:
        before = self.state("v.state.image && v.state.image.id")
        self.page.locator("body").press("n")
        self.wait_until(
            "(before) => { const s = window.medcloudViewer.state; return s.image && s.image.id !== before && "
            "window.medcloudViewer.metrics.pageReadyMs !== null && document.body.getAttribute('aria-busy') !== 'true'; }",
            arg=before,
            timeout_ms=timeout_ms,
        )
        return self.state("v.state.image.id")

    def _act_and_wait(self, metric: str, action: Any, timeout_ms: float) -> None:
        """Do `action`, wait until `metrics[metric]` changes (or an error shows), and fail on an error."""
        before = self.state(f"v.metrics.{metric}")
        action()
        self.wait_until(
            "([metric, before]) => { const m = window.medcloudViewer.metrics[metric]; "
            "return (m && JSON.stringify(m) !== JSON.stringify(before)) || !document.querySelector('#error').hidden; }",
            arg=[metric, before],
            timeout_ms=timeout_ms,
        )
        error = self.error_text()
        assert error is None, f"the viewer shows an error: {error}"

    def _wait_inference(self, action: Any, timeout_ms: float) -> dict:
        self._act_and_wait("lastInference", action, timeout_ms)
        return self.state("v.metrics.lastInference")

    def auto_segment(self, timeout_ms: float = 180_000) -> dict:
        return self._wait_inference(lambda: self.page.click("#segment-all"), timeout_ms)

    def select_label(self, position: int) -> None:
        self.page.locator("body").press(str(position))

    def canvas_pixel(self, voxel: tuple[int, int, int]) -> tuple[float, float]:
        pixel = self.page.evaluate(_PIXEL_FOR_VOXEL, {"voxel": list(voxel)})
        assert pixel is not None, f"no pixel of the axial view shows voxel {voxel}"
        return pixel[0], pixel[1]

    def click_voxel(self, voxel: tuple[int, int, int], foreground: bool, timeout_ms: float = 180_000) -> dict:
        self.page.locator("body").press("f" if foreground else "g")
        x, y = self.canvas_pixel(voxel)
        return self._wait_inference(lambda: self.page.mouse.click(x, y), timeout_ms)

    def brush_stroke(self, voxel: tuple[int, int, int], length_px: int = 12) -> None:
        self.page.locator("body").press("b")
        x, y = self.canvas_pixel(voxel)
        before = self.state("v.state.history.size")
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        for step in range(1, length_px + 1):
            self.page.mouse.move(x + step, y)
        self.page.mouse.up()
        self.wait_until("(n) => window.medcloudViewer.state.history.size > n", arg=before)
        self.page.locator("body").press("v")

    def undo(self) -> None:
        before = self.state("v.state.history.size")
        self.page.locator("body").press("z")
        self.wait_until("(n) => window.medcloudViewer.state.history.size < n", arg=before)

    def save(self, timeout_ms: float = 120_000) -> dict:
        self._act_and_wait("lastSave", lambda: self.page.locator("body").press("s"), timeout_ms)
        return self.state("v.metrics.lastSave.answer")
