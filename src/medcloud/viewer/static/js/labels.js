// The label layer's rules, independent of the page: merging a model answer into the drawing,
// undo as voxel diffs, and per-label voxel counts. Arrays are NiiVue's drawing bitmap (RAS grid);
// answers come in native order and are written through the native → drawing LUT (coords.js).

export const NOT_REACHED = 255; // VISTA-3D: voxels no point window reached (API §3.4)

/**
 * Merge a model answer into `bitmap` in place and return the voxels changed (for undo).
 * `updated` holds the classes the request asked for: their old voxels are cleared, the answer's
 * voxels of any class are written, but never over a label the request did not update (another
 * class's voxels are the annotator's and stay), and voxels the answer did not reach (255) keep
 * what they had.
 */
export function mergeAnswer(bitmap, answer, nativeToRas, updated) {
  const isUpdated = new Uint8Array(256);
  for (const c of updated) isUpdated[c] = 1;
  const changedIdx = [];
  const changedOld = [];
  // In the answer's own (native) order: sequential reads, and a click's answer is mostly 255.
  for (let n = 0; n < answer.length; n++) {
    const a = answer[n];
    if (a === NOT_REACHED) continue;
    const r = nativeToRas[n];
    const cur = bitmap[r];
    let next = cur;
    if (a !== 0) {
      if (cur === 0 || isUpdated[cur]) next = a;
    } else if (isUpdated[cur]) {
      next = 0;
    }
    if (next !== cur) {
      changedIdx.push(r);
      changedOld.push(cur);
      bitmap[r] = next;
    }
  }
  return { idx: Int32Array.from(changedIdx), old: Uint8Array.from(changedOld) };
}

/** The voxels where `after` differs from `before`, with their old values. */
export function diff(before, after) {
  const idx = [];
  const old = [];
  for (let r = 0; r < after.length; r++) {
    if (before[r] !== after[r]) {
      idx.push(r);
      old.push(before[r]);
    }
  }
  return { idx: Int32Array.from(idx), old: Uint8Array.from(old) };
}

/** Voxel count per label value (0 left out). */
export function countLabels(bitmap) {
  const counts = new Float64Array(256);
  for (let r = 0; r < bitmap.length; r++) counts[bitmap[r]]++;
  const out = {};
  for (let v = 1; v < 256; v++) if (counts[v]) out[v] = counts[v];
  return out;
}

/** Undo history of voxel diffs, each with what the page needs to restore (e.g. the click list). */
export class History {
  constructor(limit = 50) {
    this.limit = limit;
    this.entries = [];
  }

  push(change, state) {
    if (!change.idx.length && state === undefined) return false;
    this.entries.push({ change, state });
    if (this.entries.length > this.limit) this.entries.shift();
    return true;
  }

  /** Put the old values back into `bitmap`; returns the entry's state, or undefined if empty. */
  undo(bitmap) {
    const entry = this.entries.pop();
    if (!entry) return undefined;
    const { idx, old } = entry.change;
    for (let n = 0; n < idx.length; n++) bitmap[idx[n]] = old[n];
    return entry.state === undefined ? null : entry.state;
  }

  clear() {
    this.entries = [];
  }

  get size() {
    return this.entries.length;
  }
}
