// The annotation viewer: sign in, next image, auto-segment, clicks, brush, save, learning.
// The page state lives in `state`; NiiVue draws. Everything the tests and benchmarks read is on
// `window.medcloudViewer` (state, metrics, the last request bodies).

import { Niivue, DRAG_MODE, MULTIPLANAR_TYPE, SLICE_TYPE, SHOW_RENDER } from "../vendor/niivue.js";
import { Api } from "./api.js";
import { drawingToNative, invertAffine, mmToVoxel, nativeToRasLut, rasToNativeLut } from "./coords.js";
import { History, countLabels, diff, mergeAnswer } from "./labels.js";
import { LearningPanel } from "./learning.js";
import { parseMultipart } from "./multipart.js";
import { readNrrd, writeLabelNrrd } from "./nrrd.js";
import { cssColor, drawLut, labelsOf } from "./palette.js";

const $ = (selector) => document.querySelector(selector);
const SUPPORTED_ARCHS = ["monai_vista3d", "monai_segmentation", "monai_annotation"];
// Families that take clicks: VISTA-3D (points + point_labels for one class) and DeepEdit (points by label name).
const CLICK_ARCHS = ["monai_vista3d", "monai_annotation"];
const WINDOWS = { soft: [400, 40], lung: [1500, -600], bone: [1800, 400], brain: [80, 40] };
const TOOLS = ["navigate", "foreground", "background", "brush", "eraser"];

const state = {
  api: null,
  experiments: [],
  experiment: null,
  datasetId: null,
  labels: [],
  active: null, // label value for clicks and the brush
  image: null, // {id, meta, fields, sizes, affine, inverse, lut}
  clicks: { label: null, points: [], pointLabels: [] },
  history: new History(50),
  tool: "navigate",
  remaining: null,
  dirty: false,
  counts: null, // voxels per label value, kept up to date from each change
};
const metrics = { pageReadyMs: null, pageStages: null, lastInference: null, lastSave: null };
const stages = {};
const requests = [];
window.medcloudViewer = { state, metrics, requests, ready: false };

// ---------- messages and busy indicator ----------

function showError(error) {
  const box = $("#error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
  console.warn("medcloud viewer:", box.textContent);
}

function clearError() {
  $("#error").hidden = true;
}

function status(text) {
  $("#status").textContent = text;
}

function setBusy(count) {
  $("#busy").hidden = count === 0;
  document.body.setAttribute("aria-busy", count > 0 ? "true" : "false");
}

async function guarded(action) {
  clearError();
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  }
}

// ---------- NiiVue ----------

const nv = new Niivue({
  backColor: [0.07, 0.07, 0.09, 1],
  show3Dcrosshair: true,
  multiplanarShowRender: SHOW_RENDER.ALWAYS,
  multiplanarLayout: MULTIPLANAR_TYPE.GRID, // axial, coronal, sagittal and 3D as a 2×2 grid
  dragAndDropEnabled: false,
  viewModeHotKey: "",
  clipPlaneHotKey: "",
  cycleClipPlaneHotKey: "",
  maxDrawUndoBitmaps: 2, // undo is ours (labels.js History): keep NiiVue's own copies small
  logLevel: "warn",
  loadingText: "",
  mouseEventConfig: {
    leftButton: { primary: DRAG_MODE.crosshair, withCtrl: DRAG_MODE.pan, withShift: DRAG_MODE.windowing },
    rightButton: DRAG_MODE.windowing,
    centerButton: DRAG_MODE.pan,
  },
});
window.medcloudViewer.nv = nv;

function redraw() {
  nv.refreshDrawing(true);
  updateCounts();
}

function applyLut() {
  nv.setDrawColormap(drawLut(state.labels));
}

// ---------- sign in and choosing an experiment ----------

async function signIn(event) {
  event.preventDefault();
  await guarded(async () => {
    const key = $("#api-key").value.trim();
    const org = $("#org").value.trim();
    if (!key || !org) throw new Error("Enter an API key and an org.");
    const token = await Api.login(key);
    sessionStorage.setItem("medcloud.viewer", JSON.stringify({ token, org })); // this tab only
    await startSession(org, token);
  });
}

async function startSession(org, token) {
  state.api = new Api(org, token, setBusy);
  learning = new LearningPanel($("#learning"), state.api, { intervalMs: 5000, onError: showError });
  const { experiments } = await state.api.experiments();
  state.experiments = experiments.filter((e) => e.realtime_infer && SUPPORTED_ARCHS.includes(e.network_arch));
  const select = $("#experiment");
  select.replaceChildren();
  for (const experiment of state.experiments) {
    const option = document.createElement("option");
    option.value = experiment.id;
    option.textContent = `${experiment.name} (${experiment.network_arch})`;
    select.append(option);
  }
  $("#signin").hidden = true;
  $("#session").hidden = false;
  $("#whoami").textContent = `org ${org}`;
  if (!state.experiments.length) {
    throw new Error("No experiment with real-time inference in this org: create one (realtime_infer: true) first.");
  }
  await chooseExperiment(state.experiments[0].id);
}

async function chooseExperiment(id) {
  const experiment = state.experiments.find((e) => e.id === id);
  state.experiment = experiment;
  state.datasetId = experiment.inference_dataset || experiment.train_datasets[0] || null;
  state.labels = labelsOf(experiment);
  state.active = state.labels.length ? state.labels[0].value : null;
  const vista = experiment.network_arch === "monai_vista3d";
  const clickable = CLICK_ARCHS.includes(experiment.network_arch);
  for (const tool of ["foreground", "background"]) $(`[data-tool=${tool}]`).disabled = !clickable;
  $("#segment-checked").disabled = !vista;
  renderLabels();
  applyLut();
  $("#dataset").textContent = state.datasetId ? `dataset ${state.datasetId}` : "no dataset";
  learning.show(experiment.id);
  window.medcloudViewer.ready = true;
  if (!state.datasetId) throw new Error("This experiment has no inference_dataset or train dataset to annotate.");
}

// ---------- labels panel ----------

function renderLabels() {
  const list = $("#labels");
  list.replaceChildren();
  for (const label of state.labels) {
    const row = document.createElement("li");
    row.dataset.value = String(label.value);
    row.innerHTML = `<input type="radio" name="active-label" title="draw and click with this label">
      <span class="swatch"></span><span class="name"></span><span class="count">0</span>
      <input type="checkbox" class="visible" title="show" checked>
      <input type="checkbox" class="prompt" title="include in 'Segment checked'">`;
    row.querySelector(".swatch").style.background = cssColor(label.color);
    row.querySelector(".name").textContent = `${label.value} ${label.name}`;
    const radio = row.querySelector("input[type=radio]");
    radio.checked = label.value === state.active;
    radio.addEventListener("change", () => selectLabel(label.value));
    row.querySelector(".visible").addEventListener("change", (e) => {
      label.visible = e.target.checked;
      applyLut();
    });
    list.append(row);
  }
}

function selectLabel(value) {
  state.active = value;
  for (const radio of document.querySelectorAll("#labels input[type=radio]")) {
    radio.checked = Number(radio.closest("li").dataset.value) === value;
  }
  if (state.tool === "brush") nv.setPenValue(value, false);
}

/** Voxel counts per label: recounted from the bitmap, or updated from a change (idx/old) just applied. */
function updateCounts(change) {
  if (!nv.drawBitmap) return;
  if (!change || !state.counts) {
    state.counts = countLabels(nv.drawBitmap);
  } else {
    const bitmap = nv.drawBitmap;
    for (let n = 0; n < change.idx.length; n++) {
      const now = bitmap[change.idx[n]];
      const was = change.old[n];
      state.counts[was] = (state.counts[was] || 0) - 1;
      state.counts[now] = (state.counts[now] || 0) + 1;
    }
  }
  const counts = state.counts;
  for (const row of document.querySelectorAll("#labels li")) {
    row.querySelector(".count").textContent = String(counts[row.dataset.value] || 0);
  }
  window.medcloudViewer.counts = counts;
}

// ---------- tools ----------

function setTool(tool) {
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

// ---------- next image ----------

async function nextImage() {
  if (!state.api || !state.datasetId) return;
  if (state.dirty && !confirm("The current labels are not saved. Open the next image anyway?")) return;
  await guarded(async () => {
    const started = performance.now();
    const answer = await state.api.datasetAction(state.datasetId, "nextimage", {});
    stages.nextimage = performance.now() - started;
    if (typeof answer.unlabeled === "number") state.remaining = answer.unlabeled;
    await openImage(answer.image, answer.meta || {});
    const t = performance.now();
    nv.drawScene();
    nv.gl.finish(); // the first image is rendered (3D view included), not just queued
    stages.render = performance.now() - t;
    await new Promise((resolve) => requestAnimationFrame(() => resolve()));
    metrics.pageReadyMs = performance.now() - started;
    metrics.pageStages = { ...stages };
    status(`Image ${answer.image} ready in ${metrics.pageReadyMs.toFixed(0)} ms`);
  });
}

async function openImage(imageId, meta) {
  // As the OHIF plugin does when a series opens: ask the server to keep it cached.
  let t = performance.now();
  await state.api.datasetAction(state.datasetId, "cacheimage", { image: imageId, ttl: 3600 });
  stages.cacheimage = performance.now() - t;
  t = performance.now();
  const buffer = await state.api.volume(state.datasetId, imageId);
  stages.volume = performance.now() - t;
  t = performance.now();
  const volume = await readNrrd(buffer);
  for (const old of [...nv.volumes]) nv.removeVolume(old);
  await nv.loadFromArrayBuffer(buffer, "image.nrrd");
  stages.niivue = performance.now() - t;
  t = performance.now();
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  nv.createEmptyDrawing();
  applyLut();
  nv.setDrawOpacity(Number($("#opacity").value));
  const back = nv.volumes[0];
  state.image = {
    id: imageId,
    meta,
    fields: volume.fields,
    sizes: volume.geometry.sizes,
    affine: volume.geometry.affine,
    inverse: invertAffine(volume.geometry.affine),
    lut: rasToNativeLut(back),
  };
  state.image.toRas = nativeToRasLut(state.image.lut);
  state.clicks = { label: null, points: [], pointLabels: [] };
  state.history.clear();
  state.dirty = false;
  if (isCt(meta, back)) setWindow("soft");
  showMeta(imageId, meta, volume.geometry.sizes);
  setTool(state.tool);
  state.counts = null;
  updateCounts();
  stages.prepare = performance.now() - t; // drawing layer, lookup tables, window
}

function isCt(meta, volume) {
  return meta.Modality === "CT" || (volume.global_min < -500 && volume.global_max > 300);
}

function showMeta(imageId, meta, sizes) {
  const rows = [["image", imageId], ["size", sizes.join(" × ")]];
  for (const [key, name] of [["PatientID", "patient"], ["StudyInstanceUID", "study"], ["StudyDate", "study date"], ["Modality", "modality"]]) {
    if (meta[key] !== undefined) rows.push([name, String(meta[key])]);
  }
  const dl = $("#meta");
  dl.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }
  $("#remaining").textContent = state.remaining === null ? "" : `${state.remaining} unlabeled`;
}

function setWindow(name) {
  const volume = nv.volumes[0];
  if (!volume) return;
  if (name === "auto") {
    volume.cal_min = volume.robust_min;
    volume.cal_max = volume.robust_max;
  } else {
    const [width, level] = WINDOWS[name];
    volume.cal_min = level - width / 2;
    volume.cal_max = level + width / 2;
  }
  nv.updateGLVolume();
}

// ---------- inference: auto-segment and clicks ----------

function answerVolume(parts) {
  const names = Object.keys(parts).filter((n) => n.endsWith(".nrrd"));
  if (!names.length) throw new Error(`The model answered no segmentation (parts: ${Object.keys(parts).join(", ") || "none"}).`);
  return parts[names[0]];
}

async function infer(bundleParams, updated, state_) {
  const image = state.image;
  const specs = { image: image.id, dataset_id: state.datasetId };
  if (bundleParams) specs.bundle_params = bundleParams;
  requests.push({ action: "inference", specs: JSON.parse(JSON.stringify(specs)) });
  const t0 = performance.now();
  const { contentType, buffer } = await state.api.infer(state.experiment.id, specs);
  const t1 = performance.now();
  if (state.image !== image) return; // the annotator moved on meanwhile
  const part = answerVolume(parseMultipart(buffer, contentType));
  const answer = await readNrrd(part.buffer, part.start, part.end);
  if (answer.voxels.length !== image.lut.length) throw new Error("The model's answer is not on the image's grid.");
  const t2 = performance.now();
  const change = mergeAnswer(nv.drawBitmap, answer.voxels, image.toRas, updated);
  const t3 = performance.now();
  state.history.push(change, state_);
  nv.refreshDrawing(true);
  nv.gl.finish(); // the overlay is on screen, not just queued for the GPU
  const tRefresh = performance.now();
  updateCounts(change);
  const tCounts = performance.now();
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const t4 = performance.now();
  state.dirty = true;
  // Resource Timing splits the request: the server's time to the first byte, then the transfer.
  // (the learning panel GETs the same URL: take the entry that started with this request)
  const timing = performance.getEntriesByType("resource")
    .filter((e) => e.name.endsWith(`/experiments/${state.experiment.id}/jobs`) && e.startTime >= t0 - 1)
    .sort((a, b) => a.startTime - b.startTime)[0];
  const serverMs = timing && timing.responseStart > 0 ? timing.responseStart - timing.requestStart : null;
  const transferMs = timing && timing.responseStart > 0 ? timing.responseEnd - timing.responseStart : null;
  performance.clearResourceTimings();
  metrics.lastInference = {
    requestMs: t1 - t0, serverMs, transferMs, parseMs: t2 - t1, mergeMs: t3 - t2, drawMs: t4 - t3,
    refreshMs: tRefresh - t3, countMs: tCounts - tRefresh, frameMs: t4 - tCounts,
    viewerMs: (transferMs || 0) + (t4 - t1), totalMs: t4 - t0, changed: change.idx.length, bytes: buffer.byteLength,
  };
  status(`Model answered in ${(t1 - t0).toFixed(0)} ms; merged and drawn in ${(t4 - t1).toFixed(0)} ms (${change.idx.length} voxels changed)`);
}

function promptable(values) {
  return values.filter((v) => v >= 1 && v <= 132);
}

async function autoSegment(onlyChecked) {
  if (!state.image) return;
  await guarded(async () => {
    const vista = state.experiment.network_arch === "monai_vista3d";
    if (!vista) {
      await infer(null, state.labels.map((l) => l.value), undefined);
      return;
    }
    let classes = state.labels.map((l) => l.value);
    if (onlyChecked) {
      classes = [...document.querySelectorAll("#labels li")].filter((li) => li.querySelector(".prompt").checked)
        .map((li) => Number(li.dataset.value));
      if (!classes.length) throw new Error("Check the classes to segment first (the second checkbox of each label).");
    }
    const prompts = promptable(classes);
    if (!prompts.length) throw new Error("None of these classes can be segmented without clicks (VISTA-3D classes 1–132).");
    await infer({ label_prompt: prompts }, prompts, undefined);
  });
}

// The clicks of the active label as the experiment's family takes them.
function clickParams(clicks) {
  if (state.experiment.network_arch === "monai_annotation") {
    // DeepEdit: {"<label name>": [[i,j,k], ...], "background": [...]}, as the bundle's label_names define them
    const label = state.labels.find((l) => l.value === clicks.label);
    const pick = (wanted) => clicks.points.filter((_, n) => clicks.pointLabels[n] === wanted);
    return { [label.name]: pick(1), background: pick(0) };
  }
  return { label_prompt: [clicks.label], points: clicks.points, point_labels: clicks.pointLabels };
}

async function click(mm, foreground) {
  if (!state.image || state.active === null) return;
  const voxel = mmToVoxel(state.image.inverse, state.image.sizes, mm);
  if (!voxel) return;
  await guarded(async () => {
    const previous = { ...state.clicks, points: [...state.clicks.points], pointLabels: [...state.clicks.pointLabels] };
    if (state.clicks.label !== state.active) state.clicks = { label: state.active, points: [], pointLabels: [] };
    state.clicks.points.push(voxel);
    state.clicks.pointLabels.push(foreground ? 1 : 0);
    try {
      await infer(clickParams(state.clicks), [state.active], { clicks: previous });
    } catch (error) {
      state.clicks = previous; // a refused click is not kept
      throw error;
    }
  });
}

// ---------- brush, eraser, undo ----------

let strokeBefore = null;

function onPointerDown(event) {
  pointerStart = [event.clientX, event.clientY, event.button];
  if (nv.opts.drawingEnabled && nv.drawBitmap) strokeBefore = nv.drawBitmap.slice();
}

nv.onDrawingChanged = (action) => {
  if (action !== "draw" || !strokeBefore) return;
  const change = diff(strokeBefore, nv.drawBitmap);
  strokeBefore = null;
  if (state.history.push(change, undefined)) state.dirty = true;
  updateCounts(change);
};

function undo() {
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

// ---------- clicks on the slices ----------

let pointerStart = null;

function onPointerUp(event) {
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

// ---------- save ----------

async function save() {
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

// ---------- zoom ----------

function zoom(factor) {
  if (factor === 0) nv.scene.pan2Dxyzmm = [0, 0, 0, 1];
  else nv.scene.pan2Dxyzmm[3] = Math.min(8, Math.max(0.5, nv.scene.pan2Dxyzmm[3] * factor));
  nv.drawScene();
}

// ---------- keyboard ----------

const KEYS = {
  n: nextImage, z: undo, b: () => setTool("brush"), e: () => setTool("eraser"),
  f: () => setTool("foreground"), g: () => setTool("background"), v: () => setTool("navigate"),
  a: () => autoSegment(false), s: save, "+": () => zoom(1.25), "-": () => zoom(0.8), "0": () => zoom(0),
  "[": () => setPenSize(-1), "]": () => setPenSize(1),
};

function setPenSize(delta) {
  const input = $("#pen-size");
  input.value = String(Math.max(1, Math.min(30, Number(input.value) + delta)));
  nv.opts.penSize = Number(input.value);
}

function onKey(event) {
  if (event.target.closest("input[type=text], input[type=password], select, textarea")) return;
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && (key === "z" || key === "s")) {
    event.preventDefault();
    (key === "z" ? undo : save)();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[1-9]$/.test(event.key) && state.labels[Number(event.key) - 1]) {
    selectLabel(state.labels[Number(event.key) - 1].value);
    return;
  }
  const action = KEYS[key];
  if (action) {
    event.preventDefault();
    action();
  }
}

// ---------- start ----------

let learning = null;

async function boot() {
  await nv.attachToCanvas($("#gl"));
  nv.canvas.addEventListener("pointerdown", onPointerDown, true);
  nv.canvas.addEventListener("pointerup", onPointerUp, true);
  nv.onLocationChange = (location) => {
    if (!state.image) return;
    const voxel = mmToVoxel(state.image.inverse, state.image.sizes, location.mm);
    const value = location.values && location.values[0] ? Math.round(location.values[0].value) : "";
    $("#location").textContent = voxel ? `voxel [${voxel.join(", ")}] · ${value}` : "";
  };
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
  $("#show-3d").addEventListener("change", (e) => {
    nv.opts.multiplanarShowRender = e.target.checked ? SHOW_RENDER.ALWAYS : SHOW_RENDER.NEVER;
    nv.drawScene();
  });
  $("#signout").addEventListener("click", () => { sessionStorage.removeItem("medcloud.viewer"); location.reload(); });
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (event) => { if (state.dirty) event.preventDefault(); });
  try {
    const config = await (await fetch("/viewer/config.json")).json();
    if (!$("#org").value) $("#org").value = config.default_org || "";
  } catch (_) {
    // the org field stays empty; the user types it
  }
  const saved = JSON.parse(sessionStorage.getItem("medcloud.viewer") || "null");
  if (saved && saved.token) {
    await guarded(() => startSession(saved.org, saved.token));
  }
  window.medcloudViewer.booted = true;
}

boot().catch(showError);
