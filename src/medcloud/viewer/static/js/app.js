// The annotation viewer's entry point: wires the page's controls to the modules that do the work
// and boots (NiiVue on the canvas, the org offered, this tab's session resumed).
//
//   state.js      what the modules share: `state`, `metrics`, NiiVue, window.medcloudViewer
//   ui.js         error box, status line, busy spinner, `guarded`
//   session.js    sign in/out, the experiments, choosing one
//   labellist.js  the labels panel, the active label, colours and voxel counts
//   images.js     next/open image, its metadata, the page's timings
//   view.js       window presets, zoom, the 3D view, the crosshair's voxel
//   prompts.js    inference: auto-segment and clicks
//   drawing.js    tools, pen size, pointer strokes and clicks, undo, save
//   keys.js       keyboard shortcuts

import { onDrawingChanged, onPointerDown, onPointerUp, save, setTool, undo } from "./drawing.js";
import { nextImage } from "./images.js";
import { onKey } from "./keys.js";
import { autoSegment } from "./prompts.js";
import { chooseExperiment, resumeSession, signIn, signOut } from "./session.js";
import { nv, state } from "./state.js";
import { $, guarded, showError } from "./ui.js";
import { setWindow, show3d, showLocation, zoom } from "./view.js";

nv.onDrawingChanged = onDrawingChanged;

async function boot() {
  await nv.attachToCanvas($("#gl"));
  nv.canvas.addEventListener("pointerdown", onPointerDown, true);
  nv.canvas.addEventListener("pointerup", onPointerUp, true);
  nv.onLocationChange = showLocation;
  $("#signin").addEventListener("submit", signIn);
  $("#experiment").addEventListener("change", (e) => guarded(() => chooseExperiment(e.target.value)));
  $("#next").addEventListener("click", nextImage);
  $("#segment-all").addEventListener("click", () => autoSegment(false));
  $("#segment-checked").addEventListener("click", () => autoSegment(true));
  $("#undo").addEventListener("click", undo);
  $("#save").addEventListener("click", save);
  for (const button of document.querySelectorAll("[data-tool]")) button.addEventListener("click", () => setTool(button.dataset.tool));
  for (const button of document.querySelectorAll("[data-window]")) button.addEventListener("click", () => setWindow(button.dataset.window));
  for (const button of document.querySelectorAll("[data-zoom]")) button.addEventListener("click", () => zoom(Number(button.dataset.zoom)));
  $("#pen-size").addEventListener("input", (e) => { nv.opts.penSize = Number(e.target.value); });
  $("#opacity").addEventListener("input", (e) => nv.setDrawOpacity(Number(e.target.value)));
  $("#show-3d").addEventListener("change", (e) => show3d(e.target.checked));
  $("#signout").addEventListener("click", signOut);
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (event) => { if (state.dirty) event.preventDefault(); });
  await resumeSession();
  window.medcloudViewer.booted = true;
}

boot().catch(showError);
