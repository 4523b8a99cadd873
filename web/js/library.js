// The library: the upload panel; the owner's DICOM studies by patient (PatientID with its issuer,
// so two people with one ID from different issuers stay apart), then study, then series, found by
// QIDO-RS (a search by patient name, patient ID or accession number, and a study-date range, matched
// by the server); and the PNG and JPEG scans, which belong to no study, as "Images", newest first.
import { html, useCallback, useEffect, useMemo, useRef, useState } from "./preact.js";
import { Upload } from "./upload.js";
import { Grid } from "./grid.js";
import { first, personName } from "./dicomweb.js";
import { plural } from "./format.js";

const PAGE_SIZE = 100; // the API's largest page of scans
const STUDIES_PAGE = 50;
const SEARCH_LIMIT = 200; // studies per searched key
const REFRESH_AFTER_MS = 60_000; // at most one reload of stale signed URLs a minute
const STUDY_FIELDS = [
  "00100010", "00100020", "00100021", "00100030", "00100040", // patient: name, ID, issuer, birth date, sex
  "00080020", "00080030", "00081030", "00080050", "00080061", "00201206", "00201208",
].join(",");

// createdAt is UTC with microseconds ("…T16:26:01.123456Z", the fraction left out when it is zero):
// padded to one length, the strings sort as the API sorts (created_at, then id, both descending).
const instant = (iso) => iso.replace(/(?:\.(\d+))?Z$/, (_, fraction = "") => `.${fraction.padEnd(6, "0")}Z`);

function newestFirst(a, b) {
  const [x, y] = [instant(a.createdAt), instant(b.createdAt)];
  if (x !== y) return x < y ? 1 : -1;
  return a.scanId < b.scanId ? 1 : -1;
}

/** A QIDO-RS study result as the library shows it. */
export function studyOf(dataset) {
  const id = first(dataset, "00100020") ?? "";
  const issuer = first(dataset, "00100021") ?? "";
  return {
    uid: first(dataset, "0020000D"),
    patient: {
      key: `${id}\u0000${issuer}`,
      name: personName(dataset, "00100010"),
      id,
      issuer,
      birthDate: first(dataset, "00100030") ?? "",
      sex: first(dataset, "00100040") ?? "",
    },
    date: first(dataset, "00080020") ?? "",
    description: first(dataset, "00081030") ?? "",
    accession: first(dataset, "00080050") ?? "",
    modalities: dataset["00080061"]?.Value ?? [],
    series: Number(first(dataset, "00201206") ?? 0),
    instances: Number(first(dataset, "00201208") ?? 0),
  };
}

/** "20260105" as the browser's medium date ("5 Jan 2026"), or the text as it is. */
export function dicomDate(text) {
  const found = /^(\d{4})(\d{2})(\d{2})$/.exec(text ?? "");
  if (!found) return text || "";
  const date = new Date(Date.UTC(Number(found[1]), Number(found[2]) - 1, Number(found[3])));
  return new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" }).format(date);
}

/** Studies grouped by patient, in the order of each patient's first (newest) study. */
export function byPatient(studies) {
  const patients = new Map();
  for (const study of studies) {
    if (!patients.has(study.patient.key)) patients.set(study.patient.key, { ...study.patient, studies: [] });
    patients.get(study.patient.key).studies.push(study);
  }
  return [...patients.values()];
}

/** The library's data and what can be done to it; the functions keep their identity. */
export function useLibrary(api) {
  const [images, setImages] = useState({ items: [], nextCursor: null, loading: true, loaded: false, error: "" });
  const [studies, setStudies] = useState({ items: [], more: false, loading: true, loaded: false, error: "", query: null });
  const [version, setVersion] = useState(0); // bumped when stored or deleted DICOM changes the studies
  const current = useRef({ images, studies });
  current.current = { images, studies };
  const refreshed = useRef(0);
  // The images' paging, kept where the state is set rather than read back from a render: the next
  // cursor (undefined: the first page is still to come), the request in flight (one at a time), and
  // every cursor already asked for since the first page, so a cursor is requested once however often
  // the observer fires (as it does when it is subscribed, and for each scroll past the button).
  // `added` and `removed`: images uploaded or deleted here while a first page was on its way (null:
  // none on its way). That page may have been listed before they were stored or deleted: the uploads
  // are kept in, the deleted left out.
  const paging = useRef({ cursor: undefined, inFlight: false, asked: new Set(), added: null, removed: null });

  const loadImages = useCallback(
    async (fromStart) => {
      const state = paging.current;
      if (state.inFlight) return;
      const cursor = fromStart ? undefined : state.cursor;
      if (!fromStart && (!cursor || state.asked.has(cursor))) return;
      if (fromStart) state.asked = new Set();
      else state.asked.add(cursor);
      state.inFlight = true;
      if (fromStart) [state.added, state.removed] = [new Map(), new Set()];
      setImages((s) => ({ ...s, loading: true, error: "" }));
      try {
        const page = await api.listScans({ limit: PAGE_SIZE, cursor, dicom: false });
        state.cursor = page.nextCursor || undefined;
        const added = fromStart ? [...state.added.values()] : [];
        const removed = fromStart ? state.removed : new Set();
        setImages((s) => {
          const kept = fromStart ? added : s.items;
          const known = new Set([...kept.map((item) => item.scanId), ...removed]);
          const items = [...kept, ...page.items.filter((item) => !known.has(item.scanId))].sort(newestFirst);
          return { items, nextCursor: page.nextCursor, loading: false, loaded: true, error: "" };
        });
      } catch (error) {
        if (!fromStart) state.asked.delete(cursor); // not answered: "Load more images" may ask again
        if (error.code === "aborted" || error.status === 401) return;
        setImages((s) => ({ ...s, loading: false, error: `The images could not be loaded. ${error.message}` }));
      } finally {
        state.inFlight = false;
        if (fromStart) [state.added, state.removed] = [null, null];
      }
    },
    [api],
  );
  const loadMoreImages = useCallback(() => loadImages(false), [loadImages]);

  const loadStudies = useCallback(
    async (query, fromStart) => {
      setStudies((s) => ({ ...s, loading: true, error: "", query }));
      try {
        const dates = query?.from || query?.to ? { StudyDate: `${compact(query.from)}-${compact(query.to)}` } : {};
        let found;
        let more = false;
        if (query?.text) {
          // One QIDO-RS query per key (PS3.18 has no "or"), the same wildcards OHIF sends.
          const pattern = `*${query.text}*`;
          const pages = await Promise.all(
            ["PatientName", "PatientID", "AccessionNumber"].map((key) =>
              api.dicomweb("/studies", { [key]: pattern, ...dates, includefield: STUDY_FIELDS, limit: SEARCH_LIMIT }),
            ),
          );
          const unique = new Map();
          for (const dataset of pages.flat()) unique.set(first(dataset, "0020000D"), dataset);
          found = [...unique.values()].map(studyOf).sort((a, b) => (a.date < b.date ? 1 : a.date > b.date ? -1 : 0));
        } else {
          const offset = fromStart ? 0 : current.current.studies.items.length;
          const page = await api.dicomweb("/studies", { ...dates, includefield: STUDY_FIELDS, limit: STUDIES_PAGE + 1, offset });
          more = page.length > STUDIES_PAGE;
          found = page.slice(0, STUDIES_PAGE).map(studyOf);
          if (!fromStart) found = [...current.current.studies.items, ...found];
        }
        setStudies({ items: found, more, loading: false, loaded: true, error: "", query });
      } catch (error) {
        if (error.code === "aborted" || error.status === 401) return;
        setStudies((s) => ({ ...s, loading: false, error: `The studies could not be loaded. ${error.message}` }));
      }
    },
    [api],
  );

  useEffect(() => {
    loadImages(true);
    loadStudies(null, true);
  }, [loadImages, loadStudies]);

  // Stored or deleted DICOM: the studies again, once the burst is over.
  const pending = useRef(0);
  const studiesChanged = useCallback(() => {
    clearTimeout(pending.current);
    pending.current = setTimeout(() => {
      setVersion((v) => v + 1);
      loadStudies(current.current.studies.query, true);
    }, 800);
  }, [loadStudies]);
  useEffect(() => () => clearTimeout(pending.current), []);

  return useMemo(
    () => ({
      images,
      studies,
      version,
      loadMoreImages,
      loadMoreStudies: () => loadStudies(current.current.studies.query, false),
      search: (query) => loadStudies(query, true),
      // Signed image URLs expire (an hour or two): a page left open all day fetches fresh ones.
      refresh() {
        if (Date.now() - refreshed.current < REFRESH_AFTER_MS) return;
        refreshed.current = Date.now();
        loadImages(true);
        setVersion((v) => v + 1);
      },
      add(scan) {
        if (scan.dicom) {
          studiesChanged();
          return;
        }
        paging.current.added?.set(scan.scanId, scan);
        setImages((s) => ({ ...s, items: [scan, ...s.items.filter((item) => item.scanId !== scan.scanId)].sort(newestFirst) }));
      },
      remove(scan) {
        paging.current.added?.delete(scan.scanId);
        paging.current.removed?.add(scan.scanId);
        if (scan.dicom) studiesChanged();
        setImages((s) => ({ ...s, items: s.items.filter((item) => item.scanId !== scan.scanId) }));
      },
      find: (scanId) => images.items.find((item) => item.scanId === scanId),
    }),
    [images, studies, version, loadImages, loadMoreImages, loadStudies, studiesChanged],
  );
}

const compact = (date) => (date ?? "").replaceAll("-", "");

export function Library({ hidden, api, library, focusKey, onStatus, onUploadsChanged, deleted }) {
  const { images, studies } = library;
  const heading = useRef(null);
  const section = useRef(null);

  // Focus: the heading when the library first shows, the tile that was open when coming back.
  useEffect(() => {
    if (hidden) return;
    const tile = focusKey && section.current.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
    (tile || heading.current).focus({ preventScroll: Boolean(tile) });
  }, [hidden]);

  // The next page of images loads as the button that asks for it comes near the viewport. One
  // observer for the library's life, watching the button whenever it is there (a callback ref); it
  // calls the latest loadMoreImages, which asks for each cursor once.
  const loadMore = useRef(library.loadMoreImages);
  loadMore.current = library.loadMoreImages;
  const observer = useMemo(
    () =>
      new IntersectionObserver((entries) => entries.some((entry) => entry.isIntersecting) && loadMore.current(), {
        rootMargin: "600px",
      }),
    [],
  );
  useEffect(() => () => observer.disconnect(), [observer]);
  const more = useCallback(
    (button) => {
      observer.disconnect();
      if (button) observer.observe(button);
    },
    [observer],
  );

  const stored = useCallback((scan) => library.add(scan), [library.add]);
  const nothing = images.loaded && studies.loaded && !studies.query && images.items.length === 0 && studies.items.length === 0;

  return html`
    <div class="library" hidden=${hidden} ref=${section}>
      <h1 id="library-title" tabindex="-1" ref=${heading}>Scans</h1>
      <${Upload} api=${api} onStored=${stored} onStatus=${onStatus} deleted=${deleted} />
      ${nothing && html`<p class="empty-state">No scans yet. Upload DICOM, PNG or JPEG files above.</p>`}
      <${Studies} api=${api} library=${library} />
      <section aria-labelledby="images-title" class="panel" hidden=${images.loaded && images.items.length === 0}>
        <h2 id="images-title">
          Images <span class="muted count">${images.loaded ? plural(images.items.length, "PNG or JPEG scan", "PNG and JPEG scans") + (images.nextCursor ? " loaded" : "") : ""}</span>
        </h2>
        <p role="alert" class=${images.error ? "alert" : "alert empty"}>${images.error}</p>
        <${Grid} items=${images.items} onImageError=${library.refresh} />
        ${images.loading && html`<p class="muted" role="status">Loading images…</p>`}
        ${images.nextCursor &&
        html`<button type="button" class="more" ref=${more} disabled=${images.loading} onClick=${library.loadMoreImages}>
          Load more images
        </button>`}
      </section>
    </div>
  `;
}

function Studies({ api, library }) {
  const { studies } = library;
  const [text, setText] = useState("");
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const patients = useMemo(() => byPatient(studies.items), [studies.items]);
  const searched = studies.query && (studies.query.text || studies.query.from || studies.query.to);

  const submit = (event) => {
    event.preventDefault();
    library.search({ text: text.trim(), from, to });
  };
  const clear = () => {
    setText("");
    setFrom("");
    setTo("");
    library.search(null);
  };

  if (studies.loaded && !searched && studies.items.length === 0) return null;
  return html`
    <section class="panel" aria-labelledby="studies-title">
      <h2 id="studies-title">Patients and studies</h2>
      <form class="search" role="search" aria-label="Studies" onSubmit=${submit}>
        <label>Search
          <input type="search" value=${text} placeholder="Patient name, patient ID or accession number"
            onInput=${(event) => setText(event.currentTarget.value)} />
        </label>
        <label>Study date from <input type="date" value=${from} onInput=${(event) => setFrom(event.currentTarget.value)} /></label>
        <label>to <input type="date" value=${to} onInput=${(event) => setTo(event.currentTarget.value)} /></label>
        <button type="submit" class="primary">Find studies</button>
        ${searched && html`<button type="button" onClick=${clear}>Clear search</button>`}
      </form>
      <p role="alert" class=${studies.error ? "alert" : "alert empty"}>${studies.error}</p>
      <p class="muted" aria-live="polite">
        ${studies.loading ? "Loading studies…" : studies.loaded ? `${plural(patients.length, "patient")}, ${plural(studies.items.length, "study", "studies")}${searched ? " found" : ""}` : ""}
      </p>
      ${patients.map((patient) => html`<${Patient} key=${patient.key} api=${api} patient=${patient} version=${library.version}
        onImageError=${library.refresh} />`)}
      ${studies.more &&
      html`<button type="button" class="more" disabled=${studies.loading} onClick=${library.loadMoreStudies}>Load more studies</button>`}
    </section>
  `;
}

function Patient({ api, patient, version, onImageError }) {
  const name = patient.name || "Unnamed patient";
  const facts = [
    patient.id ? `ID ${patient.id}${patient.issuer ? ` (${patient.issuer})` : ""}` : "no patient ID",
    patient.birthDate && `born ${dicomDate(patient.birthDate)}`,
    patient.sex && { F: "female", M: "male", O: "other" }[patient.sex],
  ].filter(Boolean);
  const id = `patient-${patient.key.replace(/[^A-Za-z0-9]/g, "_")}`;
  return html`
    <section class="patient" aria-labelledby=${id}>
      <h3 id=${id}>${name} <span class="muted patient-facts">${facts.join(" · ")}</span></h3>
      ${patient.studies.map((study) => html`<${Study} key=${study.uid} api=${api} study=${study} version=${version}
        onImageError=${onImageError} />`)}
    </section>
  `;
}

/** A study: its line, and its series as tiles, read from the REST list when it comes into view. */
function Study({ api, study, version, onImageError }) {
  const [scans, setScans] = useState(null);
  const [error, setError] = useState("");
  const element = useRef(null);

  useEffect(() => {
    let cancelled = false;
    const observer = new IntersectionObserver(
      (entries) => {
        if (!entries.some((entry) => entry.isIntersecting)) return;
        observer.disconnect();
        api.listSeries(undefined, study.uid).then(
          (items) => !cancelled && setScans(items),
          (failure) => !cancelled && failure.code !== "aborted" && setError(`The study's scans could not be loaded. ${failure.message}`),
        );
      },
      { rootMargin: "400px" },
    );
    observer.observe(element.current);
    return () => {
      cancelled = true;
      observer.disconnect();
    };
  }, [api, study.uid, version]);

  const line = [
    dicomDate(study.date) || "no study date",
    study.description || "no description",
    study.modalities.join(", "),
    `${plural(study.series, "series", "series")}, ${plural(study.instances, "instance")}`,
    study.accession && `accession ${study.accession}`,
  ].filter(Boolean);
  return html`
    <section class="study" aria-label=${`Study: ${line.slice(0, 2).join(", ")}`} ref=${element}>
      <h4>${line.join(" · ")}</h4>
      <p role="alert" class=${error ? "alert" : "alert empty"}>${error}</p>
      ${scans ? html`<${Grid} items=${scans} inStudy=${true} onImageError=${onImageError} />` : html`<p class="muted">Loading series…</p>`}
    </section>
  `;
}
