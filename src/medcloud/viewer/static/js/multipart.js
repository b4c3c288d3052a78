// Splits the inference answer (multipart/form-data, one part per output file, exactly what
// requests_toolbelt's MultipartEncoder writes) into {name: bytes}. The browser's own
// Response.formData() decodes parts without a filename as text, which would corrupt an NRRD.

function indexOf(haystack, needle, from) {
  // TypedArray.indexOf finds candidates natively: an 8 MB NRRD part is scanned in milliseconds.
  for (let i = haystack.indexOf(needle[0], from); i >= 0; i = haystack.indexOf(needle[0], i + 1)) {
    if (i > haystack.length - needle.length) return -1;
    let j = 1;
    while (j < needle.length && haystack[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

/** {name: {buffer, start, end}}: each part as a byte range of the answer (no copies). */
export function parseMultipart(buffer, contentType) {
  const match = /boundary="?([^";]+)"?/i.exec(contentType || "");
  if (!match) throw new Error("the answer is not multipart/form-data");
  const bytes = new Uint8Array(buffer);
  const delimiter = new TextEncoder().encode(`--${match[1]}`);
  const parts = {};
  let at = indexOf(bytes, delimiter, 0);
  while (at >= 0) {
    const headStart = at + delimiter.length;
    if (bytes[headStart] === 45 && bytes[headStart + 1] === 45) break; // closing "--"
    const headEnd = indexOf(bytes, new Uint8Array([13, 10, 13, 10]), headStart);
    if (headEnd < 0) throw new Error("malformed multipart answer");
    const head = new TextDecoder().decode(bytes.subarray(headStart, headEnd));
    const name = /name="([^"]*)"/i.exec(head);
    const next = indexOf(bytes, delimiter, headEnd + 4);
    if (next < 0) throw new Error("malformed multipart answer");
    // The part ends with CRLF before the delimiter. A view on the answer, not a copy.
    if (name) parts[name[1]] = { buffer, start: headEnd + 4, end: next - 2 };
    at = next;
  }
  return parts;
}
