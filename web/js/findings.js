// A scan's findings twice: as a table, and as boxes over the image; hovering or focusing one
// highlights the other.
import { html } from "./preact.js";
import { decimal, integer } from "./format.js";

export function FindingsTable({ results, active, onActive }) {
  const { findings } = results;
  const hu = results.analysis?.unit === "HU";
  const mm2 = findings.some((finding) => finding.areaMm2 !== null && finding.areaMm2 !== undefined);
  const columns = hu ? 5 : 4;
  return html`<div class="findings-scroll">
    <table class="findings">
      <caption>Findings</caption>
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
        html`<tr><td colspan=${columns} class="muted">No dense regions found.</td></tr>`}
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
            <td>${finding.label}</td>
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

/** Boxes in the image's own pixel coordinates, laid over it (the table says the same in words). */
export function FindingBoxes({ width, height, findings, active, onActive, onlyActive = false }) {
  const font = Math.max(10, Math.round(Math.max(width, height) / 36));
  // Over the annotated rendering, which outlines every finding itself, only the highlighted one.
  const shown = onlyActive ? findings.filter((finding) => finding.id === active) : findings;
  return html`
    <svg class="overlay" viewBox=${`0 0 ${width} ${height}`} preserveAspectRatio="none" aria-hidden="true"
      font-size=${font}>
      ${shown.map(({ id, bbox }) => {
        const above = bbox.y > font + 2;
        return html`<g key=${id} class=${id === active ? "box active" : "box"}
          onMouseEnter=${() => onActive(id)} onMouseLeave=${() => onActive(null)}>
          <rect x=${bbox.x} y=${bbox.y} width=${bbox.width} height=${bbox.height} vector-effect="non-scaling-stroke" />
          <text x=${bbox.x} y=${above ? bbox.y - 3 : bbox.y + bbox.height + font}>${id}</text>
        </g>`;
      })}
    </svg>
  `;
}
