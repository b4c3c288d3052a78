// Opening images: the dataset's next unlabeled image (`nextimage`, then `cacheimage` and the
// volume), loading it into NiiVue with an empty drawing, its metadata panel, and the timings of
// each stage (metrics.pageReadyMs, metrics.pageStages).

import { SLICE_TYPE } from "../vendor/niivue.js";
import { invertAffine, nativeToRasLut, rasToNativeLut } from "./coords.js";
import { setTool } from "./drawing.js";
import { applyLut, updateCounts } from "./labellist.js";
import { readNrrd } from "./nrrd.js";
import { metrics, nv, stages, state } from "./state.js";
import { $, guarded, status } from "./ui.js";
import { isCt, setWindow } from "./view.js";

export async function nextImage() {
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
