// The labels panel: one row per label (select, colour, name, voxel count, show, prompt), the
// active label, the drawing's colour table and the per-label voxel counts.

import { countLabels } from "./labels.js";
import { cssColor, drawLut } from "./palette.js";
import { nv, state } from "./state.js";
import { $ } from "./ui.js";

export function applyLut() {
  nv.setDrawColormap(drawLut(state.labels));
}

export function renderLabels() {
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

export function selectLabel(value) {
  state.active = value;
  for (const radio of document.querySelectorAll("#labels input[type=radio]")) {
    radio.checked = Number(radio.closest("li").dataset.value) === value;
  }
  if (state.tool === "brush") nv.setPenValue(value, false);
}

/** Voxel counts per label: recounted from the bitmap, or updated from a change (idx/old) just applied. */
export function updateCounts(change) {
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
