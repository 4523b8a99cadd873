// One scan: the full-size preview (or the annotated rendering), its findings as a table and as
// boxes over the image, its details, the original to download, and delete with confirmation.
import { html, useCallback, useEffect, useRef, useState } from "./preact.js";
import { ConfirmDialog } from "./dialog.js";
import { FindingBoxes, FindingsTable } from "./findings.js";
import { DASH, bytes, decimal, modality, precise, when } from "./format.js";
import { libraryHref, seriesHref } from "./router.js";

export function Viewer({ api, scanId, summary, onDeleted }) {
  const [scan, setScan] = useState(null);
  const [error, setError] = useState("");
  const [annotated, setAnnotated] = useState(false);
  const [active, setActive] = useState(null);
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState("");
  const heading = useRef(null);
  const reloaded = useRef(false);

  const load = useCallback(async () => {
    try {
      setScan(await api.getScan(scanId));
    } catch (failure) {
      if (failure.code === "aborted" || failure.status === 401) return;
      setError(
        failure.status === 404
          ? "This scan does not exist: it may have been deleted."
          : `The scan could not be loaded. ${failure.message}`,
      );
    }
  }, [api, scanId]);

  useEffect(() => {
    load();
    heading.current.focus();
  }, [load]);


  // A signed URL that has expired (the page was left open): fetch the scan again, once, for new ones.
  const imageFailed = () => {
    if (reloaded.current) return;
    reloaded.current = true;
    load();
  };

  async function remove() {
    setDeleting(true);
    setDeleteError("");
    try {
      await api.deleteScan(scanId);
      setConfirming(false);
      onDeleted(scan ?? summary);
    } catch (failure) {
      if (failure.code === "aborted" || failure.status === 401) return;
      setDeleteError(`The scan was not deleted. ${failure.message}`);
    } finally {
      setDeleting(false);
    }
  }

  const known = scan ?? summary;
  const title = known?.filename ?? (error ? "Scan not found" : "Loading scan…");
  const series = known?.dicom?.seriesInstanceUid;
  const imageUrl = scan ? (annotated ? scan.results.annotatedImageUrl : scan.results.previewUrl) : summary?.previewUrl;

  return html`
    <article class="viewer" aria-labelledby="viewer-title">
      <p class="crumbs">
        <a href=${libraryHref}>← All scans</a>
        ${series && html` · <a href=${seriesHref(series)}>Open its series</a>`}
      </p>
      <h1 id="viewer-title" tabindex="-1" ref=${heading}>${title}</h1>
      <p role="alert" class=${error ? "alert" : "alert empty"}>${error}</p>
      ${known &&
      html`
        <div class="toolbar">
          <button type="button" aria-pressed=${annotated} disabled=${!scan} onClick=${() => setAnnotated(!annotated)}>
            Show annotations
          </button>
          ${scan && html`<${DownloadLink} href=${scan.results.imageUrl} filename=${scan.filename} />`}
          <button type="button" class="danger" onClick=${() => setConfirming(true)}>Delete scan</button>
        </div>
        <div class="viewer-body">
          <figure class="stage">
            <div class="frame" style=${{ "--ratio": known.width / known.height }}>
              <img
                src=${imageUrl}
                alt=${`${known.filename}: ${annotated ? "annotated, findings outlined and numbered" : "preview"}`}
                width=${known.width}
                height=${known.height}
                onError=${imageFailed}
              />
              ${scan &&
              html`<${FindingBoxes}
                width=${scan.width}
                height=${scan.height}
                findings=${scan.results.findings}
                active=${active}
                onActive=${setActive}
                onlyActive=${annotated}
              />`}
            </div>
            <figcaption class="muted">
              ${annotated ? "Annotated rendering" : "Preview"} · ${known.width} × ${known.height} px
            </figcaption>
          </figure>
          <div class="side">
            ${scan
              ? html`<${FindingsTable} results=${scan.results} active=${active} onActive=${setActive} />`
              : html`<p class="muted">Loading findings…</p>`}
            <${Details} scan=${known} results=${scan?.results} />
          </div>
        </div>
        <${ConfirmDialog}
          open=${confirming}
          title="Delete this scan?"
          confirmLabel="Delete"
          busy=${deleting}
          error=${deleteError}
          onConfirm=${remove}
          onCancel=${() => { setConfirming(false); setDeleteError(""); }}
        >
          <p><strong>${known.filename}</strong> and its renderings will be deleted for good. Its image links stop working.</p>
        <//>
      `}
    </article>
  `;
}

/** The original file. A link on another origin (an API elsewhere) ignores `download`: fetch it then. */
function DownloadLink({ href, filename }) {
  const click = async (event) => {
    if (new URL(href, location.href).origin === location.origin) return;
    event.preventDefault();
    const response = await fetch(href, { credentials: "omit" });
    const url = URL.createObjectURL(await response.blob());
    const link = Object.assign(document.createElement("a"), { href: url, download: filename });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  };
  return html`<a class="button" href=${href} download=${filename} onClick=${click}>Download original</a>`;
}

function Details({ scan, results }) {
  const dicom = scan.dicom;
  const window_ = results?.analysis?.window;
  const body = results?.body;
  const row = (name, value) => html`<dt>${name}</dt><dd>${value ?? DASH}</dd>`;
  return html`
    <section class="details" aria-labelledby="details-title">
      <h2 id="details-title">Details</h2>
      <dl>
        ${row("File name", scan.filename)}
        ${row("File size", bytes(scan.fileSize))}
        ${row("Dimensions", `${scan.width} × ${scan.height} px`)}
        ${row("Modality", dicom ? `${modality(scan)} (DICOM)` : `${modality(scan)} image`)}
        ${row("Uploaded", html`<time datetime=${scan.createdAt}>${when(scan.createdAt)}</time>`)}
        ${dicom && row("Instance", dicom.instanceNumber)}
        ${dicom && row("Slice position", dicom.slicePosition === null ? null : `${decimal(dicom.slicePosition)} mm`)}
        ${dicom?.pixelSpacingMm && row("Pixel spacing", `${dicom.pixelSpacingMm.map(precise).join(" × ")} mm`)}
        ${dicom?.sliceThicknessMm && row("Slice thickness", `${precise(dicom.sliceThicknessMm)} mm`)}
        ${window_ && row("Window", `W ${decimal(window_.width)} / L ${decimal(window_.center)} (${window_.source})`)}
        ${body?.areaMm2 && row("Body area", `${decimal(body.areaMm2)} mm²`)}
      </dl>
    </section>
  `;
}
