// Coordinates between the API and NiiVue.
//
// The API speaks the image's own voxel order (points as [i, j, k] indices of the original image;
// NRRD outputs first axis fastest). NiiVue shows a volume reoriented to RAS: its drawing bitmap
// is indexed in that reoriented grid (`dimsRAS`), and `img2RASstart/step` say which native voxel
// each RAS-grid voxel is. These functions are the only place the two meet.

/** Invert a row-major 4×4 affine (general inverse; obliques included). */
export function invertAffine(m) {
  const [a, b, c, d, e, f, g, h, i] = [m[0], m[1], m[2], m[4], m[5], m[6], m[8], m[9], m[10]];
  const det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
  if (!det) throw new Error("the image's affine is singular");
  const r = [
    (e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det,
    (f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det,
    (d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det,
  ];
  const t = [m[3], m[7], m[11]];
  const out = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
  for (let row = 0; row < 3; row++) {
    for (let col = 0; col < 3; col++) out[row * 4 + col] = r[row * 3 + col];
    out[row * 4 + 3] = -(r[row * 3] * t[0] + r[row * 3 + 1] * t[1] + r[row * 3 + 2] * t[2]);
  }
  return out;
}

/** RAS millimetres → the nearest native voxel index [i, j, k], or null outside the volume. */
export function mmToVoxel(inverseAffine, sizes, mm) {
  const voxel = [0, 1, 2].map((row) => Math.round(
    inverseAffine[row * 4] * mm[0] + inverseAffine[row * 4 + 1] * mm[1]
    + inverseAffine[row * 4 + 2] * mm[2] + inverseAffine[row * 4 + 3]));
  return voxel.every((v, axis) => v >= 0 && v < sizes[axis]) ? voxel : null;
}

/** Native voxel index → RAS millimetres. */
export function voxelToMm(affine, voxel) {
  return [0, 1, 2].map((row) => affine[row * 4] * voxel[0] + affine[row * 4 + 1] * voxel[1]
    + affine[row * 4 + 2] * voxel[2] + affine[row * 4 + 3]);
}

/**
 * For each voxel of NiiVue's RAS grid (x fastest), the offset of the same voxel in the native
 * array: `native[lut[r]]` is drawing voxel `r`. Built from the volume's img2RASstart/step.
 */
export function rasToNativeLut(volume) {
  const dims = volume.dimsRAS;
  const start = volume.img2RASstart;
  const step = volume.img2RASstep;
  const lut = new Int32Array(dims[1] * dims[2] * dims[3]);
  let r = 0;
  for (let z = 0; z < dims[3]; z++) {
    const zi = start[2] + z * step[2];
    for (let y = 0; y < dims[2]; y++) {
      const yi = zi + start[1] + y * step[1];
      for (let x = 0; x < dims[1]; x++) lut[r++] = yi + start[0] + x * step[0];
    }
  }
  return lut;
}

/** The inverse LUT: for each native offset, the drawing (RAS grid) voxel. */
export function nativeToRasLut(lut) {
  const inverse = new Int32Array(lut.length);
  for (let r = 0; r < lut.length; r++) inverse[lut[r]] = r;
  return inverse;
}

/** A drawing bitmap (RAS grid) → a native-order label array. */
export function drawingToNative(bitmap, lut) {
  const native = new Uint8Array(bitmap.length);
  for (let r = 0; r < lut.length; r++) native[lut[r]] = bitmap[r];
  return native;
}

/** A native-order label array → a drawing bitmap (RAS grid). */
export function nativeToDrawing(native, lut) {
  const bitmap = new Uint8Array(lut.length);
  for (let r = 0; r < lut.length; r++) bitmap[r] = native[lut[r]];
  return bitmap;
}
