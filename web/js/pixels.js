// Drawing stored pixel values as a radiographer reads them, in the browser: the modality rescale
// (slope, intercept: Hounsfield units for CT), the VOI window (PS3.3 C.11.2.1.2: LINEAR,
// LINEAR_EXACT, SIGMOID) and MONOCHROME1's inversion, folded into one lookup table over every
// possible stored value, so that a new window costs one pass over the table (65,536 entries at
// most) and one over the pixels.

// CT presets in HU: [label, width, center] (DESIGN.md: soft tissue W400/L40, lung W1500/L-600,
// bone W2000/L300; brain W80/L40).
export const CT_PRESETS = [
  ["Soft tissue", 400, 40],
  ["Lung", 1500, -600],
  ["Bone", 2000, 300],
  ["Brain", 80, 40],
];

const OPAQUE = 0xff000000;

/** A value in the rescaled units (HU for CT) windowed to 0-255, as the window's function says. */
export function windowed(x, { center, width, fn = "LINEAR" }) {
  if (fn === "SIGMOID") return 255 / (1 + Math.exp((-4 * (x - center)) / width));
  if (fn === "LINEAR_EXACT") {
    if (x <= center - width / 2) return 0;
    if (x > center + width / 2) return 255;
    return ((x - center) / width + 0.5) * 255;
  }
  if (width <= 1) return x > center - 0.5 ? 255 : 0;
  if (x <= center - 0.5 - (width - 1) / 2) return 0;
  if (x > center - 0.5 + (width - 1) / 2) return 255;
  return ((x - (center - 0.5)) / (width - 1) + 0.5) * 255;
}

/** The range of stored values an image's typed array can hold, as [offset, size] of its table. */
function domain(values) {
  if (values instanceof Int16Array) return [32768, 65536];
  if (values instanceof Uint16Array) return [0, 65536];
  if (values instanceof Int8Array) return [128, 256];
  return [0, 256];
}

/**
 * The table from stored value to an opaque grey RGBA word (little-endian ABGR, as ImageData's bytes
 * read through a Uint32Array): rescale, window, inversion for MONOCHROME1.
 */
export function greyTable(values, { slope = 1, intercept = 0, invert = false }, window) {
  const [offset, size] = domain(values);
  const table = new Uint32Array(size);
  for (let index = 0; index < size; index += 1) {
    let grey = Math.round(windowed((index - offset) * slope + intercept, window));
    if (invert) grey = 255 - grey;
    table[index] = (OPAQUE | (grey << 16) | (grey << 8) | grey) >>> 0;
  }
  return { table, offset };
}

/** Paint grey values through their table into ImageData (one Uint32 write a pixel). */
export function paintGrey(values, { table, offset }, imageData) {
  const out = new Uint32Array(imageData.data.buffer);
  const count = Math.min(out.length, values.length);
  for (let i = 0; i < count; i += 1) out[i] = table[values[i] + offset];
}

/** Paint interleaved 8-bit RGB (or RGBA when `channels` is 4) as it is: colour is not windowed. */
export function paintColour(values, imageData, channels = 3) {
  const out = new Uint32Array(imageData.data.buffer);
  for (let i = 0, j = 0; i < out.length; i += 1, j += channels) {
    out[i] = (OPAQUE | (values[j + 2] << 16) | (values[j + 1] << 8) | values[j]) >>> 0;
  }
}

/** The lowest and highest rescaled value of a frame (the default window's range when the file has none). */
export function valueRange(values, { slope = 1, intercept = 0 }) {
  let low = Infinity;
  let high = -Infinity;
  for (let i = 0; i < values.length; i += 1) {
    const v = values[i];
    if (v < low) low = v;
    if (v > high) high = v;
  }
  const a = low * slope + intercept;
  const b = high * slope + intercept;
  return [Math.min(a, b), Math.max(a, b)];
}

/** The window an image opens with: the file's, else soft tissue for CT in HU, else its own range. */
export function defaultWindow(image, values) {
  if (image.window) return image.window;
  if (image.hounsfield) return { center: 40, width: 400, fn: "LINEAR" };
  const [low, high] = valueRange(values, image);
  return { center: (low + high) / 2, width: Math.max(1, high - low), fn: "LINEAR_EXACT" };
}
