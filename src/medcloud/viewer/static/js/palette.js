// Label names and colours from an experiment's `model_params.labels`, and NiiVue's drawing LUT.

// Distinct, colour-blind-friendly first colours (Okabe-Ito, then Tol's), then golden-angle hues.
const FIRST = [
  [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0],
  [204, 121, 167], [68, 170, 153], [136, 34, 85], [153, 153, 51], [221, 204, 119], [51, 34, 136],
];

function hueColor(n) {
  const h = (n * 137.508) % 360;
  const s = 0.65;
  const l = 0.55;
  const f = (k) => {
    const a = s * Math.min(l, 1 - l);
    const x = (k + h / 30) % 12;
    return Math.round(255 * (l - a * Math.max(-1, Math.min(x - 3, 9 - x, 1))));
  };
  return [f(0), f(8), f(4)];
}

/** [{value, name, color:[r,g,b], visible}] sorted by value; values 1..254 only. */
export function labelsOf(experiment) {
  const raw = (experiment && experiment.model_params && experiment.model_params.labels) || {};
  const out = [];
  for (const [key, name] of Object.entries(raw)) {
    const value = Number(key);
    if (!Number.isInteger(value) || value < 1 || value > 254) continue;
    const label = typeof name === "string" ? name : (name && name.name) || `label ${value}`;
    if (label.toLowerCase() === "background") continue;
    out.push({ value, name: label, visible: true });
  }
  out.sort((a, b) => a.value - b.value);
  out.forEach((label, i) => { label.color = i < FIRST.length ? FIRST[i] : hueColor(i); });
  return out;
}

/** NiiVue's drawing colormap: index = label value; hidden labels get alpha 0. */
export function drawLut(labels) {
  const R = new Array(256).fill(255);
  const G = new Array(256).fill(0);
  const B = new Array(256).fill(0);
  const A = new Array(256).fill(255);
  const names = Array.from({ length: 256 }, (_, i) => String(i));
  A[0] = 0;
  names[0] = "";
  A[255] = 0; // never drawn: "not reached" is not a label
  for (const label of labels) {
    [R[label.value], G[label.value], B[label.value]] = label.color;
    A[label.value] = label.visible ? 255 : 0;
    names[label.value] = label.name;
  }
  return { R, G, B, A, I: Array.from({ length: 256 }, (_, i) => i), labels: names };
}

export function cssColor([r, g, b]) {
  return `rgb(${r}, ${g}, ${b})`;
}
