// A scan, a series or a multi-frame instance as a stack, drawn from its pixel values (DICOMweb
// frames for DICOM, the original for PNG and JPEG): window and level by drag, presets or numbers,
// zoom and pan, a length measured in mm, cine, the analysis' regions over the image; its details,
// the original to download, and delete with confirmation.
import { html, useCallback, useEffect, useMemo, useRef, useState } from "./preact.js";
import { ConfirmDialog } from "./dialog.js";
import { RegionsTable, regionsOf, shownRegions } from "./findings.js";
import { DASH, bytes, decimal, modality, plural, precise, when } from "./format.js";
import { libraryHref, scanHref, seriesHref } from "./router.js";
import { oneScanPerInstance } from "./grid.js";
import { describeFrame, fetchFrame } from "./dicomweb.js";
import { CT_PRESETS, defaultWindow } from "./pixels.js";
import { Stage, clampZoom, lengthText } from "./stage.js";

const AHEAD = 3; // pictures loaded ahead of the one shown, each way
const KEPT = 40; // pictures kept in memory
const RATES = [5, 10, 15, 20, 30];
const FIT = { zoom: 1, x: null, y: null };

/** #/scans/<id>: one scan (all the frames of a multi-frame one). */
export function Viewer({ api, scanId, summary, onDeleted }) {
  const [state, setState] = useState({ scan: null, items: null, seriesSize: 0, error: "" });
  const reloaded = useRef(false);

  const load = useCallback(async () => {
    try {
      const scan = await api.getScan(scanId);
      const uid = scan.dicom?.seriesInstanceUid;
      // Another instance in its series? (Other uploads of this same instance do not make a series.)
      const inSeries = uid ? oneScanPerInstance((await api.listScans({ seriesInstanceUid: uid, limit: 10 })).items).length : 0;
      const frames = scan.dicom?.frameCount ?? 1;
      const items = Array.from({ length: frames }, (_, index) => ({ scan, frame: index + 1, frames }));
      setState({ scan, items, seriesSize: inSeries, error: "" });
    } catch (failure) {
      if (failure.code === "aborted" || failure.status === 401) return;
      setState((s) => ({
        ...s,
        error:
          failure.status === 404
            ? "This scan does not exist: it may have been deleted."
            : `The scan could not be loaded. ${failure.message}`,
      }));
    }
  }, [api, scanId]);

  useEffect(() => {
    load();
  }, [load]);

  const known = state.scan ?? summary;
  const title = known?.filename ?? (state.error ? "Scan not found" : "Loading scan…");
  const series = known?.dicom?.seriesInstanceUid;
  return html`<${ImageViewer}
    api=${api}
    title=${title}
    error=${state.error}
    items=${state.items}
    single=${state.scan}
    crumbs=${series && state.seriesSize > 1 ? html` · <a href=${seriesHref(series)}>Open its series</a>` : null}
    onDeleted=${onDeleted}
    onImageExpired=${() => {
      if (!reloaded.current) {
        reloaded.current = true;
        load();
      }
    }}
  />`;
}

/** #/series/<uid>: a series in reading order, one slice (each frame of a multi-frame one) at a time. */
export function SeriesViewer({ api, seriesUid }) {
  const [state, setState] = useState({ items: null, title: "Loading series…", error: "" });

  useEffect(() => {
    api.listSeries(seriesUid).then(
      (scans) => {
        if (scans.length === 0) {
          setState({ items: null, title: "Series not found", error: "This series has no scans: they may have been deleted." });
          return;
        }
        const items = oneScanPerInstance(scans).flatMap((scan) => {
          const frames = scan.dicom?.frameCount ?? 1;
          return Array.from({ length: frames }, (_, index) => ({ scan, frame: index + 1, frames }));
        });
        const noun = items.every((item) => item.frames === 1) ? "slice" : "image";
        setState({ items, title: `${modality(scans[0])} series of ${plural(items.length, noun)}`, error: "" });
      },
      (failure) => {
        if (failure.code !== "aborted" && failure.status !== 401) {
          setState({ items: null, title: "Series not found", error: `The series could not be loaded. ${failure.message}` });
        }
      },
    );
  }, [api, seriesUid]);

  return html`<${ImageViewer} api=${api} title=${state.title} error=${state.error} items=${state.items} series=${true} />`;
}

/** The pictures of a stack: loaded on demand and ahead, kept a while, each once. */
function usePictures(api, items) {
  const cache = useRef(new Map());
  const metadata = useRef(new Map()); // series key -> Promise(Map sop -> dataset)
  const [, setLoaded] = useState(0);

  const seriesMetadata = useCallback(
    (scan) => {
      const { studyInstanceUid: study, seriesInstanceUid: series } = scan.dicom;
      const key = `${study}/${series}`;
      if (!metadata.current.has(key)) {
        const path = `/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/metadata`;
        const promise = api.dicomweb(path).then(
          (datasets) => new Map(datasets.map((dataset) => [dataset["00080018"]?.Value?.[0], dataset])),
        );
        promise.catch(() => metadata.current.delete(key)); // try again next time
        metadata.current.set(key, promise);
      }
      return metadata.current.get(key);
    },
    [api],
  );

  const request = useCallback(
    (item) => {
      const key = `${item.scan.scanId}:${item.frame}`;
      if (cache.current.has(key)) return cache.current.get(key);
      const entry = { state: "loading", picture: null, error: "" };
      cache.current.set(key, entry);
      loadPicture(api, item, seriesMetadata).then(
        (picture) => Object.assign(entry, { state: "ready", picture }),
        (failure) => Object.assign(entry, { state: "failed", error: failure.message ?? String(failure) }),
      ).finally(() => {
        if (cache.current.size > KEPT) {
          const oldest = cache.current.keys().next().value;
          if (oldest !== key) cache.current.delete(oldest);
        }
        setLoaded((n) => n + 1);
      });
      return entry;
    },
    [api, seriesMetadata],
  );

  return { request, reset: () => cache.current.clear() };
}

/** One frame of an item as a picture: {width, height, values, image, colour, channels, meta}. */
async function loadPicture(api, { scan, frame }, seriesMetadata) {
  if (scan.dicom) {
    const datasets = await seriesMetadata(scan);
    const dataset = datasets.get(scan.dicom.sopInstanceUid);
    if (!dataset) throw new Error("The image's DICOMweb description is missing.");
    const meta = describeFrame(dataset, frame - 1);
    const { studyInstanceUid: study, seriesInstanceUid: series, sopInstanceUid: sop } = scan.dicom;
    const path = `/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/instances/${encodeURIComponent(sop)}`;
    const values = await fetchFrame(api.dicomwebBytes, path, meta, frame);
    return {
      width: meta.columns,
      height: meta.rows,
      values,
      colour: meta.samples === 3,
      channels: 3,
      image: { slope: meta.slope, intercept: meta.intercept, invert: meta.photometric === "MONOCHROME1" },
      meta,
    };
  }
  // PNG and JPEG: the original, decoded by the browser. Grey images window their grey levels (8 bits
  // as the browser decodes them); colour is shown as it is.
  const blob = await api.signedImage(scan.results?.imageUrl ?? scan.imageUrl);
  const bitmap = await createImageBitmap(blob);
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  let grey = true;
  for (let i = 0; i < rgba.length; i += 4) {
    if (rgba[i] !== rgba[i + 1] || rgba[i] !== rgba[i + 2]) {
      grey = false;
      break;
    }
  }
  const values = grey ? Uint8Array.from({ length: rgba.length / 4 }, (_, i) => rgba[i * 4]) : rgba;
  const depth = scan.results?.analysis?.bitDepth ?? 8;
  const fileWindow = scan.results?.analysis?.window;
  const scale = 255 / (2 ** Math.min(depth, 16) - 1); // the analysis' window is in the file's own levels
  const meta = {
    modality: modality(scan),
    rows: bitmap.height,
    columns: bitmap.width,
    samples: grey ? 1 : 3,
    hounsfield: false,
    window: fileWindow ? { center: fileWindow.center * scale, width: Math.max(1, fileWindow.width * scale), fn: fileWindow.function } : null,
    spacing: { row: 1, column: 1, unit: "px", note: "no pixel spacing" },
    frames: 1,
  };
  bitmap.close();
  return { width: meta.columns, height: meta.rows, values, colour: !grey, channels: 4, image: { slope: 1, intercept: 0, invert: false }, meta };
}

function ImageViewer({ api, title, error, items, single, series, crumbs, onDeleted, onImageExpired }) {
  const heading = useRef(null);
  const [index, setIndex] = useState(0);
  const [window_, setWindow] = useState(null);
  const [view, setView] = useState(FIT);
  const [tool, setTool] = useState("window");
  const [measurement, setMeasurement] = useState(null);
  const [showRegions, setShowRegions] = useState(true);
  const [active, setActive] = useState(null);
  const [playing, setPlaying] = useState(false);
  const [rate, setRate] = useState(10);
  const [details, setDetails] = useState(new Map()); // scanId -> scan JSON (results)
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState("");
  const pictures = usePictures(api, items);

  useEffect(() => heading.current.focus(), []);

  const count = items?.length ?? 0;
  const go = useCallback(
    (next) => setIndex((current) => Math.max(0, Math.min(count - 1, typeof next === "function" ? next(current) : next))),
    [count],
  );
  const step = useCallback((delta) => go((current) => current + delta), [go]);

  const item = items?.[index];
  const entry = item ? pictures.request(item) : null;
  for (let offset = 1; items && offset <= AHEAD; offset += 1) {
    if (items[index + offset]) pictures.request(items[index + offset]);
    if (items[index - offset]) pictures.request(items[index - offset]);
  }
  const picture = entry?.state === "ready" ? entry.picture : null;

  // The first picture's own window until one is chosen; the stack keeps a chosen window (and the
  // zoom) from slice to slice.
  const opening = useMemo(() => (picture ? defaultWindow(picture.meta, picture.values) : null), [picture]);
  const shownWindow = window_ ?? opening;

  // The scan JSON (regions, details) of the shown slice.
  const scan = item?.scan;
  const scanJson = single ?? (scan && details.get(scan.scanId));
  useEffect(() => {
    if (!scan || single || details.has(scan.scanId)) return;
    api.getScan(scan.scanId).then(
      (json) => setDetails((all) => new Map(all).set(scan.scanId, json)),
      () => {},
    );
  }, [scan, single]);

  // Cine: the stack plays at the chosen rate, round and round.
  useEffect(() => {
    if (!playing || count < 2) return undefined;
    const timer = setInterval(() => setIndex((current) => (current + 1) % count), 1000 / rate);
    return () => clearInterval(timer);
  }, [playing, rate, count]);

  const keys = (event) => {
    if (event.target.matches("input, select, textarea")) return;
    const move = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 }[event.key];
    if (move !== undefined) step(move);
    else if (event.key === "Home") go(0);
    else if (event.key === "End") go(count - 1);
    else return;
    event.preventDefault();
  };

  async function remove() {
    setDeleting(true);
    setDeleteError("");
    try {
      await api.deleteScan(single.scanId);
      setConfirming(false);
      onDeleted(single);
    } catch (failure) {
      if (failure.code === "aborted" || failure.status === 401) return;
      setDeleteError(`The scan was not deleted. ${failure.message}`);
    } finally {
      setDeleting(false);
    }
  }

  const meta = picture?.meta;
  const grey = picture && !picture.colour;
  const regions = scanJson ? shownRegions(scan, scanJson.results) : [];
  const kind = scanJson ? regionsOf(scan, scanJson.results).kind : null;
  const position = count > 1 ? `${series ? "Slice" : "Frame"} ${index + 1} of ${count}` : null;
  const windowText = shownWindow && grey ? `W ${decimal(shownWindow.width)} / L ${decimal(shownWindow.center)}` : null;
  const measured = measurement && meta ? lengthText(measurement, meta.spacing) : null;
  const label = scan ? [scan.filename, position, windowText].filter(Boolean).join(": ") : "";
  const setNumber = (name) => (event) => {
    const value = Number(event.currentTarget.value);
    if (!Number.isFinite(value) || !shownWindow || event.currentTarget.value === "") return;
    setWindow({ ...shownWindow, [name]: name === "width" ? Math.max(1, value) : value });
  };
  const frameHref = item && (item.frames > 1 ? null : scanHref(item.scan.scanId));

  return html`
    <article class="viewer" aria-labelledby="viewer-title" onKeyDown=${keys}>
      <p class="crumbs"><a href=${libraryHref}>← All scans</a>${crumbs}</p>
      <h1 id="viewer-title" tabindex="-1" ref=${heading}>${title}</h1>
      <p role="alert" class=${error ? "alert" : "alert empty"}>${error}</p>
      ${item &&
      html`
        <div class="toolbar" role="toolbar" aria-label="Image tools">
          <div class="tool-group" role="group" aria-label="Window">
            ${CT_PRESETS.map(
              ([name, width, center]) => html`<button type="button" key=${name} disabled=${!grey || !meta?.hounsfield}
                onClick=${() => setWindow({ center, width, fn: "LINEAR" })}>${name}</button>`,
            )}
            <button type="button" disabled=${!grey} onClick=${() => picture && setWindow(defaultWindow(meta, picture.values))}>
              Reset window
            </button>
            <label class="number">Window center
              <input type="number" step="any" value=${shownWindow ? Math.round(shownWindow.center * 10) / 10 : ""} disabled=${!grey}
                onChange=${setNumber("center")} />
            </label>
            <label class="number">Window width
              <input type="number" step="any" min="1" value=${shownWindow ? Math.round(shownWindow.width * 10) / 10 : ""} disabled=${!grey}
                onChange=${setNumber("width")} />
            </label>
          </div>
          <div class="tool-group" role="group" aria-label="View">
            <button type="button" onClick=${() => setView((v) => ({ ...v, zoom: clampZoom(v.zoom * 2) }))}>Zoom in</button>
            <button type="button" onClick=${() => setView((v) => ({ ...v, zoom: clampZoom(v.zoom / 2) }))}>Zoom out</button>
            <button type="button" onClick=${() => setView(FIT)}>Fit</button>
            <button type="button" aria-pressed=${tool === "pan"} onClick=${() => setTool(tool === "pan" ? "window" : "pan")}>Pan</button>
            <button type="button" aria-pressed=${tool === "measure"}
              onClick=${() => { setTool(tool === "measure" ? "window" : "measure"); }}>Measure</button>
            ${kind !== "none" &&
            html`<button type="button" aria-pressed=${showRegions} onClick=${() => setShowRegions(!showRegions)}>
              Show annotations
            </button>`}
          </div>
          ${count > 1 &&
          html`<div class="tool-group" role="group" aria-label="Stack">
            <button type="button" onClick=${() => step(-1)} disabled=${index === 0}>Previous ${series ? "slice" : "frame"}</button>
            <button type="button" onClick=${() => step(1)} disabled=${index === count - 1}>Next ${series ? "slice" : "frame"}</button>
            <label class="slider">${series ? "Slice" : "Frame"}
              <input type="range" min="1" max=${count} value=${index + 1} onInput=${(event) => go(Number(event.currentTarget.value) - 1)} />
            </label>
            <button type="button" aria-pressed=${playing} onClick=${() => setPlaying(!playing)}>Play</button>
            <label class="number">Frames per second
              <select value=${rate} onChange=${(event) => setRate(Number(event.currentTarget.value))}>
                ${RATES.map((r) => html`<option key=${r} value=${r}>${r}</option>`)}
              </select>
            </label>
            ${series && frameHref && html`<a class="button" href=${frameHref}>Open this slice</a>`}
          </div>`}
          ${single &&
          html`<div class="tool-group" role="group" aria-label="File">
            <${DownloadLink} href=${single.results.imageUrl} filename=${single.filename} />
            <button type="button" class="danger" onClick=${() => setConfirming(true)}>Delete scan</button>
          </div>`}
        </div>
        <div class="viewer-body">
          <figure class="stage">
            <div class="frame">
              <${Stage}
                picture=${picture}
                window=${shownWindow}
                onWindow=${setWindow}
                tool=${tool}
                view=${view}
                onView=${setView}
                measurement=${measurement}
                onMeasure=${setMeasurement}
                measureText=${measured}
                regions=${regions}
                showRegions=${showRegions}
                active=${active}
                onActive=${setActive}
                onStep=${count > 1 ? step : null}
                label=${label}
              />
              ${entry?.state === "loading" && html`<p class="stage-note">Loading image…</p>`}
              ${entry?.state === "failed" && html`<p class="stage-note alert" role="alert">The image could not be shown. ${entry.error}</p>`}
            </div>
            <figcaption aria-live="polite">
              ${[position, scan?.filename, scan?.dicom?.slicePosition == null ? null : `position ${decimal(scan.dicom.slicePosition)} mm`,
                windowText, `zoom ${Math.round(view.zoom * 100)} %`]
                .filter(Boolean)
                .join(" · ")}
              ${measured && html` · <output aria-label="Measured length">${measured}</output>`}
            </figcaption>
          </figure>
          <div class="side">
            ${scanJson
              ? html`<${RegionsTable} scan=${scan} results=${scanJson.results} active=${active} onActive=${setActive} />`
              : html`<p class="muted">Loading the analysis…</p>`}
            ${scanJson && html`<${Details} scan=${scanJson} results=${scanJson.results} meta=${meta} />`}
          </div>
        </div>
        ${single &&
        html`<${ConfirmDialog}
          open=${confirming}
          title="Delete this scan?"
          confirmLabel="Delete"
          busy=${deleting}
          error=${deleteError}
          onConfirm=${remove}
          onCancel=${() => { setConfirming(false); setDeleteError(""); }}
        >
          <p><strong>${single.filename}</strong> and its renderings will be deleted for good. Its image links stop working.</p>
        <//>`}
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

function Details({ scan, results, meta }) {
  const dicom = scan.dicom;
  const window_ = results?.analysis?.window;
  const body = results?.body;
  const spacing = meta?.spacing;
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
        ${dicom?.frameCount > 1 && row("Frames", dicom.frameCount)}
        ${dicom && row("Slice position", dicom.slicePosition === null ? null : `${decimal(dicom.slicePosition)} mm`)}
        ${spacing?.unit === "mm"
          ? row("Pixel spacing", `${precise(spacing.row)} × ${precise(spacing.column)} mm${spacing.note === "at the detector" ? " (at the detector)" : ""}`)
          : dicom?.pixelSpacingMm && row("Pixel spacing", `${dicom.pixelSpacingMm.map(precise).join(" × ")} mm`)}
        ${dicom?.sliceThicknessMm && row("Slice thickness", `${precise(dicom.sliceThicknessMm)} mm`)}
        ${window_ && row("Window", `W ${decimal(window_.width)} / L ${decimal(window_.center)} (${window_.source})`)}
        ${body?.areaMm2 && row("Body area", `${decimal(body.areaMm2)} mm²`)}
      </dl>
    </section>
  `;
}
