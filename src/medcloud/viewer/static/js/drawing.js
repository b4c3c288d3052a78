// Editing the labels by hand and keeping them: the tools (navigate, clicks, brush, eraser) and the
// pen size, the pointer on the slices (a stroke becomes one undo step, a short left click on a
// slice becomes a foreground/background click), undo, and save.

import { drawingToNative } from "./coords.js";
import { diff } from "./labels.js";
import { updateCounts } from "./labellist.js";
import { writeLabelNrrd } from "./nrrd.js";
import { click } from "./prompts.js";
import { learning } from "./session.js";
import { metrics, nv, state } from "./state.js";
import { $, guarded, status } from "./ui.js";

const TOOLS = ["navigate", "foreground", "background", "brush", "eraser"];

export function setTool(tool) {
  if (!TOOLS.includes(tool)) return;
  state.tool = tool;
  for (const button of document.querySelectorAll("[data-tool]")) button.classList.toggle("active", button.dataset.tool === tool);
  const drawing = tool === "brush" || tool === "eraser";
  nv.setDrawingEnabled(drawing && Boolean(state.image));
  if (drawing) {
    nv.setPenValue(tool === "eraser" ? 0 : state.active || 1, false);
    nv.opts.penSize = Number($("#pen-size").value);
  }
  $("#view").dataset.tool = tool;
}

export function setPenSize(delta) {
  const input = $("#pen-size");
  input.value = String(Math.max(1, Math.min(30, Number(input.value) + delta)));
  nv.opts.penSize = Number(input.value);
}

// ---------- the pointer on the slices: strokes and clicks ----------

let strokeBefore = null; // the bitmap before a brush/eraser stroke, for its undo step
let pointerStart = null; // [x, y, button] of the pointer going down

export function onPointerDown(event) {
  pointerStart = [event.clientX, event.clientY, event.button];
  if (nv.opts.drawingEnabled && nv.drawBitmap) strokeBefore = nv.drawBitmap.slice();
}

/** NiiVue's onDrawingChanged: a finished stroke is one undo step. */
export function onDrawingChanged(action) {
  if (action !== "draw" || !strokeBefore) return;
  const change = diff(strokeBefore, nv.drawBitmap);
  strokeBefore = null;
  if (state.history.push(change, undefined)) state.dirty = true;
  updateCounts(change);
}

export function onPointerUp(event) {
  const start = pointerStart;
  pointerStart = null;
  if (!start || start[2] !== 0 || !state.image) return;
  if (Math.hypot(event.clientX - start[0], event.clientY - start[1]) > 4) return; // a drag, not a click
  if (state.tool !== "foreground" && state.tool !== "background") return;
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  const frac = nv.canvasPos2frac([(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr]);
  if (!frac || frac[0] < 0) return; // the 3D view or outside the volume
  // NiiVue has moved its crosshair to the click: read the world position from it.
  setTimeout(() => {
    const mm = nv.frac2mm(nv.scene.crosshairPos, 0, true);
    click([mm[0], mm[1], mm[2]], state.tool === "foreground");
  }, 0);
}

// ---------- undo and save ----------

function redraw() {
  nv.refreshDrawing(true);
  updateCounts();
}

export function undo() {
  if (!nv.drawBitmap) return;
  const restored = state.history.undo(nv.drawBitmap);
  if (restored === undefined) {
    status("Nothing to undo.");
    return;
  }
  if (restored && restored.clicks) state.clicks = restored.clicks;
  state.counts = null; // recount: the undone change is gone
  redraw();
  status("Undone.");
}

export async function save() {
  if (!state.image) return;
  await guarded(async () => {
    const image = state.image;
    const t0 = performance.now();
    const native = drawingToNative(nv.drawBitmap, image.lut);
    const body = writeLabelNrrd(image.fields, native);
    const answer = await state.api.saveLabel(state.datasetId, image.id, state.experiment.id, body);
    metrics.lastSave = { ms: performance.now() - t0, answer };
    state.dirty = false;
    if (answer.notify === "added" && typeof state.remaining === "number" && state.remaining > 0) {
      state.remaining -= 1;
      $("#remaining").textContent = `${state.remaining} unlabeled`;
    }
    status(`Saved: label ${answer.label} (${answer.notify}); the annotation job was notified.`);
    learning.refresh();
  });
}
