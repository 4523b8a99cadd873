// DICOMweb for the viewer and the library (PS3.18, the API's /api/v1/dicomweb root): QIDO-RS
// searches, a series' metadata read into what drawing needs, and frames as pixel values.
//
// Frames come decoded (Explicit VR Little Endian, the server decodes a compressed original) while a
// decoded frame fits one response; past that (a 2,000 x 2,500 CR decodes to ~10 MB, a response
// carries ~4.4 MB) as JPEG Lossless SV1, decoded here by jpeg-lossless-decoder-js, which is loaded
// then and only then (it is not part of the first load).

export const EXPLICIT_VR_LE = "1.2.840.10008.1.2.1";
export const JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70";
// What the browser asks for a decoded frame at most: a response carries ~4.4 MB, the parts' headers too.
export const MAX_DECODED_FRAME_BYTES = 4_000_000;
const DECODER_MODULE = "../vendor/jpeg-lossless-decoder-js-2.1.2/lossless.js";

const ACCEPT_DECODED = `multipart/related; type="application/octet-stream"; transfer-syntax=${EXPLICIT_VR_LE}`;
const ACCEPT_LOSSLESS = `multipart/related; type="application/octet-stream"; transfer-syntax=${JPEG_LOSSLESS_SV1}`;
// Projection images: their ImagerPixelSpacing is at the detector, not at the patient (PS3.3 C.8.11.7).
const PROJECTION = new Set(["CR", "DX", "MG", "IO", "PX", "RF", "XA"]);

/** The first value of a DICOM JSON element (PS3.18 F.2), or undefined. */
export function first(dataset, tag) {
  const element = dataset?.[tag];
  return element?.Value?.[0];
}

/** A person name's alphabetic group as read aloud in lists: "Doe^Jane^Q" -> "Doe, Jane Q" (PS3.5 6.2). */
export function personName(dataset, tag) {
  const name = first(dataset, tag)?.Alphabetic;
  if (!name) return "";
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = name.split("^").map((part) => part.trim());
  const rest = [prefix, given, middle, suffix].filter(Boolean).join(" ");
  return [family, rest].filter(Boolean).join(", ");
}

function numbers(dataset, tag) {
  return (dataset?.[tag]?.Value ?? []).map(Number).filter(Number.isFinite);
}

/** The item of an enhanced multi-frame object's functional group for one frame: per-frame, else shared. */
function group(dataset, frameIndex, tag) {
  const perFrame = dataset["52009230"]?.Value?.[frameIndex]?.[tag]?.Value?.[0];
  return perFrame ?? dataset["52009229"]?.Value?.[0]?.[tag]?.Value?.[0];
}

/**
 * What drawing and measuring one frame of an instance needs, from its DICOM JSON: the pixel module,
 * the rescale (for enhanced objects the frame's own), the file's window and the spacing a length is
 * measured with, and what that spacing means.
 */
export function describeFrame(dataset, frameIndex = 0) {
  const rescale = group(dataset, frameIndex, "00289145") ?? dataset;
  const voi = "00281050" in dataset ? dataset : group(dataset, frameIndex, "00289132");
  const measures = group(dataset, frameIndex, "00289110");
  const modality = first(dataset, "00080060") ?? "";
  const center = numbers(voi, "00281050")[0];
  const width = numbers(voi, "00281051")[0];
  const slope = Number(first(rescale, "00281053") ?? 1);
  const intercept = Number(first(rescale, "00281052") ?? 0);
  return {
    sopInstanceUid: first(dataset, "00080018"),
    modality,
    rows: Number(first(dataset, "00280010")),
    columns: Number(first(dataset, "00280011")),
    samples: Number(first(dataset, "00280002") ?? 1),
    bitsAllocated: Number(first(dataset, "00280100") ?? 16),
    bitsStored: Number(first(dataset, "00280101") ?? first(dataset, "00280100") ?? 16),
    signed: Number(first(dataset, "00280103") ?? 0) === 1,
    photometric: String(first(dataset, "00280004") ?? "MONOCHROME2").trim(),
    frames: Math.max(1, Number(first(dataset, "00280008") ?? 1)),
    slope: Number.isFinite(slope) && slope !== 0 ? slope : 1,
    intercept: Number.isFinite(intercept) ? intercept : 0,
    hounsfield: modality === "CT" && "00281053" in rescale,
    window:
      Number.isFinite(center) && Number.isFinite(width) && width > 0
        ? { center, width, fn: String(first(voi, "00281056") ?? "LINEAR").trim().toUpperCase() }
        : null,
    spacing: spacingOf(dataset, measures, modality),
  };
}

/** {row, column, unit, note}: mm per pixel and what they mean, or px when nothing calibrates the image. */
function spacingOf(dataset, measures, modality) {
  const pixel = numbers(dataset, "00280030").length === 2 ? numbers(dataset, "00280030") : numbers(measures, "00280030");
  const imager = numbers(dataset, "00181164");
  if (modality === "US") {
    // Ultrasound: only a calibrated region (PS3.3 C.8.5.5.1, physical units 3 = cm) gives lengths.
    const region = dataset["00186011"]?.Value?.[0];
    const deltaX = numbers(region, "0018602C")[0];
    const deltaY = numbers(region, "0018602E")[0];
    if (region && Number(first(region, "00186024")) === 3 && Number(first(region, "00186026")) === 3 && deltaX > 0 && deltaY > 0) {
      return { row: deltaY * 10, column: deltaX * 10, unit: "mm", note: "" };
    }
    return { row: 1, column: 1, unit: "px", note: "no calibrated region" };
  }
  if (pixel.length === 2 && pixel.every((v) => v > 0)) {
    return { row: pixel[0], column: pixel[1], unit: "mm", note: PROJECTION.has(modality) ? "calibrated" : "" };
  }
  if (imager.length === 2 && imager.every((v) => v > 0)) {
    const note = PROJECTION.has(modality) ? "at the detector" : "";
    return { row: imager[0], column: imager[1], unit: "mm", note };
  }
  return { row: 1, column: 1, unit: "px", note: "no pixel spacing" };
}

/** Bytes of one decoded frame (Explicit VR Little Endian, PS3.5 8.1.1). */
export function decodedFrameBytes(image) {
  const samples = image.rows * image.columns * image.samples;
  return image.bitsAllocated === 1 ? Math.ceil(samples / 8) : samples * (image.bitsAllocated / 8);
}

/** The body of the first part of a multipart/related response, and that part's Content-Type. */
export function firstPart(buffer, contentType) {
  const boundary = /boundary="?([^";]+)"?/i.exec(contentType ?? "")?.[1];
  if (!boundary) throw new Error("The frame response is not multipart/related.");
  const bytes = new Uint8Array(buffer);
  const marker = new TextEncoder().encode(`--${boundary}`);
  const start = indexOf(bytes, marker, 0);
  const headersEnd = indexOf(bytes, new TextEncoder().encode("\r\n\r\n"), start);
  const end = indexOf(bytes, new TextEncoder().encode(`\r\n--${boundary}`), headersEnd + 4);
  if (start < 0 || headersEnd < 0 || end < 0) throw new Error("The frame response is malformed.");
  const headers = new TextDecoder().decode(bytes.subarray(start + marker.length, headersEnd));
  const type = /content-type:\s*([^\r\n]+)/i.exec(headers)?.[1] ?? "";
  return { body: bytes.subarray(headersEnd + 4, end), contentType: type };
}

function indexOf(haystack, needle, from) {
  const head = needle[0];
  outer: for (let i = haystack.indexOf(head, from); i >= 0 && i <= haystack.length - needle.length; i = haystack.indexOf(head, i + 1)) {
    for (let j = 1; j < needle.length; j += 1) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * One frame's stored values (rows x columns x samples), as a typed array of the pixel
 * representation, masked to BitsStored (signed values sign-extended from it).
 */
export async function fetchFrame(call, path, image, frameNumber, signal) {
  const lossless = decodedFrameBytes(image) > MAX_DECODED_FRAME_BYTES;
  const { buffer, contentType } = await call(`${path}/frames/${frameNumber}`, {
    accept: lossless ? ACCEPT_LOSSLESS : ACCEPT_DECODED,
    signal,
  });
  const part = firstPart(buffer, contentType);
  const syntax = /transfer-syntax=([0-9.]+)/.exec(part.contentType)?.[1] ?? EXPLICIT_VR_LE;
  let values;
  if (syntax === JPEG_LOSSLESS_SV1) {
    const { Decoder } = await import(DECODER_MODULE);
    // decode() returns a typed array: Uint8Array up to 8 bits of precision, else Uint16Array, unless
    // told the bytes per sample (words with 8 or fewer bits stored would come back as bytes).
    values = new Decoder().decode(part.body.slice().buffer, 0, part.body.length, image.bitsAllocated > 8 ? 2 : 1);
  } else {
    const copy = part.body.slice(); // aligned, and owned
    values = image.bitsAllocated > 8 ? new Uint16Array(copy.buffer) : copy;
  }
  return storedValues(values, image);
}

/** Unsigned words as the image's stored values: masked to BitsStored, sign-extended when signed. */
export function storedValues(unsigned, image) {
  const bits = image.bitsStored;
  const width = image.bitsAllocated > 8 ? 16 : 8;
  if (!image.signed) {
    if (bits >= width) return unsigned;
    const mask = (1 << bits) - 1;
    for (let i = 0; i < unsigned.length; i += 1) unsigned[i] &= mask;
    return unsigned;
  }
  const signed = width === 16 ? new Int16Array(unsigned.buffer, unsigned.byteOffset, unsigned.length)
    : new Int8Array(unsigned.buffer, unsigned.byteOffset, unsigned.length);
  if (bits < width) {
    // The low `bits` bits are the value, two's complement: shifted to the top of a 32-bit integer
    // and back, its sign bit fills the rest.
    const shift = 32 - bits;
    for (let i = 0; i < signed.length; i += 1) signed[i] = (signed[i] << shift) >> shift;
  }
  return signed;
}
