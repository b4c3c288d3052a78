// Reading and writing the NRRD files the API speaks: the image volume and segmentation outputs
// (raw, little endian, first axis fastest, space right-anterior-superior) and the label volume
// the viewer saves. Only what medcloud writes and needs is supported; anything else is an error
// with a sentence, never a silent misread.

const TYPES = {
  "uint8": Uint8Array, "uchar": Uint8Array, "unsigned char": Uint8Array,
  "int8": Int8Array, "signed char": Int8Array,
  "int16": Int16Array, "short": Int16Array, "signed short": Int16Array,
  "uint16": Uint16Array, "ushort": Uint16Array, "unsigned short": Uint16Array,
  "int32": Int32Array, "int": Int32Array, "uint32": Uint32Array, "unsigned int": Uint32Array,
  "float": Float32Array, "double": Float64Array,
};

function parseVector(text) {
  // "(1,0,0)" -> [1, 0, 0]; "none" -> null
  const t = text.trim();
  if (t === "none") return null;
  return t.replace(/[()]/g, "").split(",").map(Number);
}

/** Parse an NRRD's header; returns {fields, dataOffset}. Throws on anything that is not NRRD. */
export function parseNrrdHeader(buffer, begin = 0, finish = buffer.byteLength) {
  const bytes = new Uint8Array(buffer, begin, finish - begin);
  const magic = new TextDecoder().decode(bytes.subarray(0, 4));
  if (magic !== "NRRD") throw new Error("not an NRRD file");
  let end = -1;
  const limit = Math.min(bytes.length - 1, 65536);
  for (let i = 0; i < limit; i++) {
    if (bytes[i] === 10 && bytes[i + 1] === 10) { end = i; break; }
  }
  if (end < 0) throw new Error("NRRD header has no end");
  const lines = new TextDecoder().decode(bytes.subarray(0, end)).split("\n");
  const fields = {};
  for (const line of lines.slice(1)) {
    if (!line || line.startsWith("#")) continue;
    const at = line.indexOf(": ");
    if (at < 0) continue; // key:=value pairs are not used by medcloud
    fields[line.slice(0, at).trim()] = line.slice(at + 2).trim();
  }
  return { fields, dataOffset: end + 2, headerText: lines.join("\n") };
}

/** Geometry of an NRRD header: sizes [x,y,z], the 4×4 voxel → RAS mm affine (row-major). */
export function nrrdGeometry(fields) {
  const sizes = fields["sizes"].split(/\s+/).map(Number);
  if (sizes.length !== 3) throw new Error(`expected a 3-D volume, got ${sizes.length} dimensions`);
  const space = (fields["space"] || "right-anterior-superior").toLowerCase();
  const flip = space === "left-posterior-superior" ? [-1, -1, 1]
    : space === "right-anterior-superior" ? [1, 1, 1] : null;
  if (!flip) throw new Error(`unsupported NRRD space ${space}`);
  const dirs = (fields["space directions"] || "(1,0,0) (0,1,0) (0,0,1)")
    .match(/\([^)]*\)|none/g).map(parseVector).filter((v) => v !== null);
  const origin = fields["space origin"] ? parseVector(fields["space origin"]) : [0, 0, 0];
  const affine = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
  for (let row = 0; row < 3; row++) {
    for (let col = 0; col < 3; col++) affine[row * 4 + col] = flip[row] * dirs[col][row];
    affine[row * 4 + 3] = flip[row] * origin[row];
  }
  return { sizes, affine };
}

/** Voxels of a raw (or gzip, via DecompressionStream) little-endian NRRD as a typed array; the
 * NRRD is `buffer` or its bytes [begin, finish) (a multipart part). */
export async function readNrrd(buffer, begin = 0, finish = buffer.byteLength) {
  const header = parseNrrdHeader(buffer, begin, finish);
  const { fields, headerText } = header;
  const dataOffset = begin + header.dataOffset;
  const Type = TYPES[(fields["type"] || "").toLowerCase()];
  if (!Type) throw new Error(`unsupported NRRD type ${fields["type"]}`);
  const geometry = nrrdGeometry(fields);
  const count = geometry.sizes[0] * geometry.sizes[1] * geometry.sizes[2];
  let data = buffer;
  let end = finish;
  const encoding = (fields["encoding"] || "raw").toLowerCase();
  if (encoding === "gzip" || encoding === "gz") {
    const stream = new Blob([buffer.slice(dataOffset, finish)]).stream().pipeThrough(new DecompressionStream("gzip"));
    data = await new Response(stream).arrayBuffer();
    end = data.byteLength;
  } else if (encoding !== "raw") {
    throw new Error(`unsupported NRRD encoding ${encoding}`);
  }
  if ((fields["endian"] || "little") !== "little" && Type.BYTES_PER_ELEMENT > 1) {
    throw new Error("big-endian NRRD is not supported");
  }
  const bytes = count * Type.BYTES_PER_ELEMENT;
  if (end - (data === buffer ? dataOffset : 0) < bytes) throw new Error("NRRD data is truncated");
  // The OHIF plugin reads the last N bytes: so do we (a header may be padded). A view, not a copy,
  // when the offset allows it (always for uint8 labels).
  const start = end - bytes;
  const voxels = start % Type.BYTES_PER_ELEMENT === 0 ? new Type(data, start, count) : new Type(data.slice(start, end));
  return { fields, headerText, geometry, voxels };
}

/** A raw uint8 NRRD with the geometry lines of `imageFields` (the image the labels belong to). */
export function writeLabelNrrd(imageFields, voxels) {
  const lines = ["NRRD0004", "type: uint8", "dimension: 3", `sizes: ${imageFields["sizes"]}`];
  for (const key of ["space", "space directions", "space origin"]) {
    if (imageFields[key]) lines.push(`${key}: ${imageFields[key]}`);
  }
  lines.push("kinds: domain domain domain", "endian: little", "encoding: raw", "", "");
  const header = new TextEncoder().encode(lines.join("\n"));
  const out = new Uint8Array(header.length + voxels.length);
  out.set(header, 0);
  out.set(voxels, header.length);
  return out;
}
