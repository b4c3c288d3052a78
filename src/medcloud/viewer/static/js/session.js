// Signing in and out (the token lives in this tab's sessionStorage), the experiments offered and
// choosing one: its dataset, its labels, which click tools it takes, its learning panel.

import { Api } from "./api.js";
import { applyLut, renderLabels } from "./labellist.js";
import { LearningPanel } from "./learning.js";
import { labelsOf } from "./palette.js";
import { state } from "./state.js";
import { $, guarded, setBusy, showError } from "./ui.js";

const SUPPORTED_ARCHS = ["monai_vista3d", "monai_segmentation", "monai_annotation"];
// Families that take clicks: VISTA-3D (points + point_labels for one class) and DeepEdit (points by label name).
const CLICK_ARCHS = ["monai_vista3d", "monai_annotation"];
const STORAGE_KEY = "medcloud.viewer";

export let learning = null; // the LearningPanel of this session

export async function signIn(event) {
  event.preventDefault();
  await guarded(async () => {
    const key = $("#api-key").value.trim();
    const org = $("#org").value.trim();
    if (!key || !org) throw new Error("Enter an API key and an org.");
    const token = await Api.login(key);
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ token, org })); // this tab only
    await startSession(org, token);
  });
}

export function signOut() {
  sessionStorage.removeItem(STORAGE_KEY);
  location.reload();
}

/** Offer the server's org first, then carry on with this tab's saved session if there is one. */
export async function resumeSession() {
  try {
    const config = await (await fetch("/viewer/config.json")).json();
    if (!$("#org").value) $("#org").value = config.default_org || "";
  } catch (_) {
    // the org field stays empty; the user types it
  }
  const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
  if (saved && saved.token) {
    await guarded(() => startSession(saved.org, saved.token));
  }
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

export async function chooseExperiment(id) {
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
