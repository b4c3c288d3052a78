// Inference: auto-segmentation (class prompts, or none for automatic families) and clicks (in the
// experiment family's own form); each answer is merged into the drawing as one undo step, with its
// timings in metrics.lastInference and its request body in window.medcloudViewer.requests.

import { mmToVoxel } from "./coords.js";
import { mergeAnswer } from "./labels.js";
import { updateCounts } from "./labellist.js";
import { parseMultipart } from "./multipart.js";
import { readNrrd } from "./nrrd.js";
import { metrics, nv, requests, state } from "./state.js";
import { guarded, status } from "./ui.js";

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

export async function autoSegment(onlyChecked) {
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

/** A foreground or background click at world position `mm` (NiiVue's), for the active label. */
export async function click(mm, foreground) {
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
