// What the analysis measured, in the words of what it is: on CT, regions at or above a density
// threshold in HU ("Dense regions"); on PNG and JPEG, regions brighter than the rest ("Bright
// regions"); on other modalities nothing, and why. Never "findings": a threshold is not a diagnosis.
import { html } from "./preact.js";
import { decimal, integer } from "./format.js";

const NO_THRESHOLD_MEANING = "a density threshold means nothing on this kind of image";

/**
 * {kind: "dense" | "bright" | "none", label, threshold, reason}: from results.regions where the API
 * says it, else (scans analyzed before it did) from the unit and the format, as the API now decides.
 */
export function regionsOf(scan, results) {
  const declared = results?.regions;
  if (declared?.kind) return { label: null, threshold: null, reason: null, ...declared };
  const analysis = results?.analysis;
  if (analysis?.unit === "HU") {
    const value = analysis.denseThreshold ?? analysis.thresholds?.dense;
    return { kind: "dense", label: "Dense regions", threshold: value == null ? null : { value, unit: "HU" }, reason: null };
  }
  if (scan && !scan.dicom) return { kind: "bright", label: "Bright regions", threshold: null, reason: null };
  const modality = scan?.dicom?.modality || "This DICOM image";
  return { kind: "none", label: null, threshold: null, reason: `${modality}: ${NO_THRESHOLD_MEANING}.` };
}

/** The regions a scan has on screen: none where the analysis says none (older results included). */
export function shownRegions(scan, results) {
  return regionsOf(scan, results).kind === "none" ? [] : (results?.findings ?? []);
}

export function RegionsTable({ scan, results, active, onActive }) {
  const regions = regionsOf(scan, results);
  if (regions.kind === "none") {
    return html`<section class="no-regions" aria-labelledby="regions-title">
      <h2 id="regions-title">Regions</h2>
      <p class="muted">No regions are measured on this image: ${regions.reason}</p>
    </section>`;
  }
  const findings = results.findings;
  const hu = regions.kind === "dense";
  const mm2 = findings.some((finding) => finding.areaMm2 !== null && finding.areaMm2 !== undefined);
  const columns = hu ? 5 : 4;
  const threshold = regions.threshold
    ? ` (${regions.threshold.unit === "HU" ? "≥ " : ""}${decimal(regions.threshold.value)} ${regions.threshold.unit})`
    : "";
  return html`<div class="findings-scroll">
    <table class="findings">
      <caption>${regions.label}${threshold}</caption>
      <thead>
        <tr>
          <th scope="col" class="num">#</th>
          <th scope="col">Region</th>
          <th scope="col" class="num">${mm2 ? "Area (mm²)" : "Area (px)"}</th>
          ${hu
            ? html`<th scope="col" class="num">Mean HU</th><th scope="col" class="num">Max HU</th>`
            : html`<th scope="col" class="num">Mean brightness</th>`}
        </tr>
      </thead>
      <tbody>
        ${findings.length === 0 &&
        html`<tr><td colspan=${columns} class="muted">No ${regions.label.toLowerCase()} found.</td></tr>`}
        ${findings.map(
          (finding) => html`<tr
            key=${finding.id}
            tabindex="0"
            class=${finding.id === active ? "active" : ""}
            onMouseEnter=${() => onActive(finding.id)}
            onMouseLeave=${() => onActive(null)}
            onFocus=${() => onActive(finding.id)}
            onBlur=${() => onActive(null)}
          >
            <td class="num">${finding.id}</td>
            <td>${regions.kind} region ${finding.id}</td>
            <td class="num">${mm2 ? decimal(finding.areaMm2) : integer(finding.areaPx)}</td>
            ${hu
              ? html`<td class="num">${decimal(finding.meanHu)}</td><td class="num">${decimal(finding.maxHu)}</td>`
              : html`<td class="num">${integer(finding.meanIntensity * 100)} %</td>`}
          </tr>`,
        )}
      </tbody>
    </table>
  </div>`;
}
