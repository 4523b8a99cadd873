// A DICOM series as a stack: one slice at a time, stepped with the mouse wheel, the arrow keys
// (Page Up/Down jump ten, Home/End to the ends), the slider or the buttons. The neighbours' previews
// load ahead, so scrolling through is smooth.
import { html, useEffect, useRef, useState } from "./preact.js";
import { decimal, modality } from "./format.js";
import { libraryHref, scanHref } from "./router.js";

const AHEAD = 3;
const WHEEL_STEP_PX = 50; // trackpads send many small deltas: one slice per this much scrolling

export function SeriesViewer({ api, seriesUid }) {
  const [slices, setSlices] = useState(null);
  const [index, setIndex] = useState(0);
  const [error, setError] = useState("");
  const heading = useRef(null);
  const stage = useRef(null);
  const wheel = useRef(0);

  useEffect(() => {
    heading.current.focus();
    api.listSeries(seriesUid).then(
      (items) => (items.length ? setSlices(items) : setError("This series has no scans: they may have been deleted.")),
      (failure) => {
        if (failure.code !== "aborted" && failure.status !== 401) setError(`The series could not be loaded. ${failure.message}`);
      },
    );
  }, [api, seriesUid]);

  const count = slices?.length ?? 0;
  const go = (next) => setIndex((current) => Math.max(0, Math.min(count - 1, typeof next === "function" ? next(current) : next)));

  // The wheel steps through slices instead of scrolling the page (so the listener is not passive).
  useEffect(() => {
    const element = stage.current;
    if (!element || count < 2) return undefined;
    const onWheel = (event) => {
      event.preventDefault();
      const lines = event.deltaMode === WheelEvent.DOM_DELTA_PIXEL ? event.deltaY / WHEEL_STEP_PX : Math.sign(event.deltaY);
      wheel.current += lines;
      const steps = Math.trunc(wheel.current);
      if (steps !== 0) {
        wheel.current -= steps;
        go((current) => current + steps);
      }
    };
    element.addEventListener("wheel", onWheel, { passive: false });
    return () => element.removeEventListener("wheel", onWheel);
  }, [count]);

  useEffect(() => {
    if (!slices) return;
    for (let offset = -AHEAD; offset <= AHEAD; offset += 1) {
      const neighbour = slices[index + offset];
      if (offset !== 0 && neighbour) new Image().src = neighbour.previewUrl;
    }
  }, [slices, index]);

  const keys = (event) => {
    if (event.target.matches("input, select, textarea")) return; // the slider has its own keys
    const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 }[event.key];
    if (step !== undefined) go((current) => current + step);
    else if (event.key === "Home") go(0);
    else if (event.key === "End") go(count - 1);
    else return;
    event.preventDefault();
  };

  const slice = slices?.[index];
  return html`
    <article class="viewer series-viewer" aria-labelledby="series-title" onKeyDown=${keys}>
      <p class="crumbs"><a href=${libraryHref}>← All scans</a></p>
      <h1 id="series-title" tabindex="-1" ref=${heading}>
        ${slices ? `${modality(slices[0])} series of ${count} slices` : error ? "Series not found" : "Loading series…"}
      </h1>
      <p role="alert" class=${error ? "alert" : "alert empty"}>${error}</p>
      ${slice &&
      html`
        <div class="toolbar">
          <button type="button" onClick=${() => go(index - 1)} disabled=${index === 0}>Previous slice</button>
          <button type="button" onClick=${() => go(index + 1)} disabled=${index === count - 1}>Next slice</button>
          <label class="slider">
            Slice
            <input type="range" min="1" max=${count} value=${index + 1} onInput=${(event) => go(Number(event.currentTarget.value) - 1)} />
          </label>
          <a class="button" href=${scanHref(slice.scanId)}>Open this slice</a>
        </div>
        <figure class="stage">
          <div
            class="frame stack"
            style=${{ "--ratio": slice.width / slice.height }}
            ref=${stage}
            tabindex="0"
            role="group"
            aria-label="Slice stack: arrow keys or the mouse wheel step through the slices"
          >
            <img src=${slice.previewUrl} alt=${`${slice.filename}: slice ${index + 1} of ${count}`} width=${slice.width}
              height=${slice.height} />
          </div>
          <figcaption aria-live="polite">
            ${[
              `Slice ${index + 1} of ${count}`,
              slice.filename,
              slice.dicom?.slicePosition == null ? null : `position ${decimal(slice.dicom.slicePosition)} mm`,
              `${slice.findingsCount} ${slice.findingsCount === 1 ? "finding" : "findings"}`,
            ]
              .filter(Boolean)
              .join(" · ")}
          </figcaption>
        </figure>
      `}
    </article>
  `;
}
