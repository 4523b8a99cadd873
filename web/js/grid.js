// The grid: one tile per scan, and one per DICOM series of more than one instance (its slices
// stacked), in the order of the newest scan in each (a study's come in reading order). Every image is the signed thumbnail URL the list already carries: loading
// the grid costs one list request and then only the images themselves.
import { html, useMemo } from "./preact.js";
import { modality, plural, when } from "./format.js";
import { scanHref, seriesHref } from "./router.js";

const THUMBNAIL_SIDE = 256; // the API's thumbnails fit in 256 × 256

/**
 * One scan per DICOM instance: uploads of one SOP Instance UID (the same image in two encodings, say)
 * are one image, shown as the newest of them. Scans without a SOP Instance UID all stay.
 */
export function oneScanPerInstance(scans) {
  const newest = new Map();
  for (const scan of scans) {
    const uid = scan.dicom?.sopInstanceUid;
    if (!uid) continue;
    const held = newest.get(uid);
    if (!held || scan.createdAt > held.createdAt || (scan.createdAt === held.createdAt && scan.scanId > held.scanId)) {
      newest.set(uid, scan);
    }
  }
  return scans.filter((scan) => !scan.dicom?.sopInstanceUid || newest.get(scan.dicom.sopInstanceUid) === scan);
}

/** Scans grouped by DICOM series (in order of first appearance), one scan per instance; anything else stands alone. */
export function groupBySeries(items) {
  const groups = [];
  const bySeries = new Map();
  for (const scan of oneScanPerInstance(items)) {
    const uid = scan.dicom?.seriesInstanceUid;
    if (uid && bySeries.has(uid)) {
      bySeries.get(uid).scans.push(scan);
      continue;
    }
    const group = { key: uid ? `series:${uid}` : `scan:${scan.scanId}`, seriesUid: uid, scans: [scan] };
    if (uid) bySeries.set(uid, group);
    groups.push(group);
  }
  for (const group of groups) {
    if (group.scans.length > 1) group.scans.sort(readingOrder);
  }
  return groups;
}

function readingOrder(a, b) {
  const key = (scan) => [scan.dicom.instanceNumber ?? Infinity, scan.dicom.slicePosition ?? Infinity];
  const [ia, pa] = key(a);
  const [ib, pb] = key(b);
  return ia - ib || pa - pb || a.filename.localeCompare(b.filename, undefined, { numeric: true });
}

function thumbnailSize(scan) {
  const scale = Math.min(1, THUMBNAIL_SIDE / Math.max(scan.width, scan.height));
  return { width: Math.max(1, Math.round(scan.width * scale)), height: Math.max(1, Math.round(scan.height * scale)) };
}

function Thumbnail({ scan, onError }) {
  const { width, height } = thumbnailSize(scan);
  return html`<span class="thumb">
    <img src=${scan.thumbnailUrl} alt=${scan.filename} width=${width} height=${height} loading="lazy" decoding="async"
      onError=${onError} />
  </span>`;
}

export function Grid({ items, onImageError }) {
  const groups = useMemo(() => groupBySeries(items), [items]);
  if (groups.length === 0) return null;
  return html`<ul class="grid">
    ${groups.map(
      (group) => html`<li key=${group.key}>
        ${group.scans.length > 1
          ? html`<${SeriesTile} group=${group} onImageError=${onImageError} />`
          : html`<${ScanTile} scan=${group.scans[0]} onImageError=${onImageError} />`}
      </li>`,
    )}
  </ul>`;
}

/** "2 dense regions" (CT), "3 bright regions" (PNG, JPEG), or nothing: other images have none measured. */
export function regionCount(scan) {
  if (!scan.dicom) return plural(scan.findingsCount, "bright region");
  if (scan.dicom.modality === "CT") return plural(scan.findingsCount, "dense region");
  return null;
}

function ScanTile({ scan, onImageError }) {
  const regions = regionCount(scan);
  const frames = scan.dicom?.frameCount > 1 ? plural(scan.dicom.frameCount, "frame") : null;
  const label = [scan.filename, modality(scan), frames, regions, `uploaded ${when(scan.createdAt)}`].filter(Boolean).join(", ");
  return html`<a class=${frames ? "tile series" : "tile"} href=${scanHref(scan.scanId)} aria-label=${label} data-key=${`scan:${scan.scanId}`}>
    <${Thumbnail} scan=${scan} onError=${onImageError} />
    ${frames && html`<span class="badge" aria-hidden="true">${frames}</span>`}
    <span class="tile-name" aria-hidden="true">${scan.filename}</span>
    <span class="tile-meta" aria-hidden="true">${[modality(scan), regions].filter(Boolean).join(" · ")}</span>
  </a>`;
}

function SeriesTile({ group, onImageError }) {
  const { scans } = group;
  const first = scans[0];
  const last = scans[scans.length - 1];
  const middle = scans[Math.floor((scans.length - 1) / 2)]; // the series' middle shows most of it
  const label = `Series of ${scans.length} slices, ${first.filename} to ${last.filename}, ${modality(first)}`;
  return html`<a class="tile series" href=${seriesHref(group.seriesUid)} aria-label=${label} data-key=${group.key}>
    <${Thumbnail} scan=${middle} onError=${onImageError} />
    <span class="badge" aria-hidden="true">${plural(scans.length, "slice")}</span>
    <span class="tile-name" aria-hidden="true">${first.filename} – ${last.filename}</span>
    <span class="tile-meta" aria-hidden="true">${modality(first)} series</span>
  </a>`;
}
