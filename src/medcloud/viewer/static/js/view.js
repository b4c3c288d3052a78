// How the image is shown: window/level presets, zoom, the 3D view, and the voxel and value under
// the crosshair.

import { SHOW_RENDER } from "../vendor/niivue.js";
import { mmToVoxel } from "./coords.js";
import { nv, state } from "./state.js";
import { $ } from "./ui.js";

const WINDOWS = { soft: [400, 40], lung: [1500, -600], bone: [1800, 400], brain: [80, 40] };

export function isCt(meta, volume) {
  return meta.Modality === "CT" || (volume.global_min < -500 && volume.global_max > 300);
}

export function setWindow(name) {
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

/** Zoom the 2D views by `factor`; 0 resets zoom and pan. */
export function zoom(factor) {
  if (factor === 0) nv.scene.pan2Dxyzmm = [0, 0, 0, 1];
  else nv.scene.pan2Dxyzmm[3] = Math.min(8, Math.max(0.5, nv.scene.pan2Dxyzmm[3] * factor));
  nv.drawScene();
}

export function show3d(on) {
  nv.opts.multiplanarShowRender = on ? SHOW_RENDER.ALWAYS : SHOW_RENDER.NEVER;
  nv.drawScene();
}

/** NiiVue's onLocationChange: the native voxel and the image value under the crosshair. */
export function showLocation(location) {
  if (!state.image) return;
  const voxel = mmToVoxel(state.image.inverse, state.image.sizes, location.mm);
  const value = location.values && location.values[0] ? Math.round(location.values[0].value) : "";
  $("#location").textContent = voxel ? `voxel [${voxel.join(", ")}] · ${value}` : "";
}
