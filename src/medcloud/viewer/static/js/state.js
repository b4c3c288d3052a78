// What the viewer's modules share: the page state, the timings, the NiiVue instance. Everything
// the tests and benchmarks read is on `window.medcloudViewer` (state, metrics, the last request
// bodies, NiiVue, the label counts), set up here once.

import { Niivue, DRAG_MODE, MULTIPLANAR_TYPE, SHOW_RENDER } from "../vendor/niivue.js";
import { History } from "./labels.js";

export const state = {
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
export const metrics = { pageReadyMs: null, pageStages: null, lastInference: null, lastSave: null };
export const stages = {}; // the current image's opening, stage by stage (metrics.pageStages)
export const requests = []; // the inference request bodies sent, for the tests
window.medcloudViewer = { state, metrics, requests, ready: false };

export const nv = new Niivue({
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
