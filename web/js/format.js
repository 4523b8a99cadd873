// How numbers, sizes and times read: in the browser's own locale.
const oneDecimal = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const upToThree = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export const DASH = "—";

export function decimal(value) {
  return value === null || value === undefined ? DASH : oneDecimal.format(value);
}

/** A measurement as precise as it was given, to three decimals (pixel spacing). */
export function precise(value) {
  return value === null || value === undefined ? DASH : upToThree.format(value);
}

export function integer(value) {
  return value === null || value === undefined ? DASH : whole.format(value);
}

export function bytes(size) {
  if (size === null || size === undefined) return DASH;
  if (size < 1000) return `${whole.format(size)} B`;
  if (size < 1_000_000) return `${oneDecimal.format(size / 1000)} KB`;
  return `${oneDecimal.format(size / 1_000_000)} MB`;
}

export function when(iso) {
  return dateTime.format(new Date(iso));
}

/** "CT", "MR"… for DICOM (its Modality), else the file's format. */
export function modality(scan) {
  if (scan.dicom) return scan.dicom.modality || "DICOM";
  return scan.contentType === "image/png" ? "PNG" : "JPEG";
}

export function plural(count, one, many = `${one}s`) {
  return `${integer(count)} ${count === 1 ? one : many}`;
}
