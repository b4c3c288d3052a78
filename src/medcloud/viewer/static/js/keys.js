// Keyboard shortcuts (listed in the page's Keys box): N next, A auto-segment, F/G clicks, B brush,
// E eraser, V navigate, Z and Ctrl+Z undo, S and Ctrl+S save, 1–9 label, [ ] pen size, + − 0 zoom.
// Keys typed into a text field, password field, select or textarea are left alone.

import { setPenSize, setTool, save, undo } from "./drawing.js";
import { nextImage } from "./images.js";
import { selectLabel } from "./labellist.js";
import { autoSegment } from "./prompts.js";
import { state } from "./state.js";
import { zoom } from "./view.js";

const KEYS = {
  n: nextImage, z: undo, b: () => setTool("brush"), e: () => setTool("eraser"),
  f: () => setTool("foreground"), g: () => setTool("background"), v: () => setTool("navigate"),
  a: () => autoSegment(false), s: save, "+": () => zoom(1.25), "-": () => zoom(0.8), "0": () => zoom(0),
  "[": () => setPenSize(-1), "]": () => setPenSize(1),
};

export function onKey(event) {
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
