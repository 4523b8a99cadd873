// The library: the upload panel and the grid of the user's scans, newest first, a page at a time
// (the API's nextCursor), the next page loading as the end of the grid scrolls into view.
import { html, useCallback, useEffect, useMemo, useRef, useState } from "./preact.js";
import { Upload } from "./upload.js";
import { Grid } from "./grid.js";
import { plural } from "./format.js";

const PAGE_SIZE = 100; // the API's largest page: one request for a screenful of thumbnails and more
const REFRESH_AFTER_MS = 60_000; // at most one reload of stale signed URLs a minute

// createdAt is UTC with microseconds ("…T16:26:01.123456Z", the fraction left out when it is zero):
// padded to one length, the strings sort as the API sorts (created_at, then id, both descending).
const instant = (iso) => iso.replace(/(?:\.(\d+))?Z$/, (_, fraction = "") => `.${fraction.padEnd(6, "0")}Z`);

function newestFirst(a, b) {
  const [x, y] = [instant(a.createdAt), instant(b.createdAt)];
  if (x !== y) return x < y ? 1 : -1;
  return a.scanId < b.scanId ? 1 : -1;
}

/** The loaded scans and what can be done to them; the functions keep their identity. */
export function useLibrary(api) {
  const [state, setState] = useState({ items: [], nextCursor: null, loading: true, loaded: false, error: "" });
  const current = useRef(state);
  current.current = state;
  const busy = useRef(false);
  const refreshed = useRef(0);

  const load = useCallback(
    async (fromStart) => {
      if (busy.current) return;
      busy.current = true;
      setState((s) => ({ ...s, loading: true, error: "" }));
      try {
        const cursor = fromStart ? undefined : current.current.nextCursor;
        const page = await api.listScans({ limit: PAGE_SIZE, cursor });
        setState((s) => {
          const kept = fromStart ? [] : s.items;
          const known = new Set(kept.map((item) => item.scanId));
          const items = [...kept, ...page.items.filter((item) => !known.has(item.scanId))];
          return { items, nextCursor: page.nextCursor, loading: false, loaded: true, error: "" };
        });
      } catch (error) {
        if (error.code === "aborted" || error.status === 401) return;
        setState((s) => ({ ...s, loading: false, error: `The scans could not be loaded. ${error.message}` }));
      } finally {
        busy.current = false;
      }
    },
    [api],
  );

  useEffect(() => {
    load(true);
  }, [load]);

  return useMemo(
    () => ({
      state,
      loadMore: () => load(false),
      // Signed image URLs expire (an hour or two): a page left open all day fetches fresh ones.
      refresh() {
        if (Date.now() - refreshed.current < REFRESH_AFTER_MS) return;
        refreshed.current = Date.now();
        load(true);
      },
      add(scan) {
        setState((s) => ({
          ...s,
          items: [scan, ...s.items.filter((item) => item.scanId !== scan.scanId)].sort(newestFirst),
        }));
      },
      remove(scanId) {
        setState((s) => ({ ...s, items: s.items.filter((item) => item.scanId !== scanId) }));
      },
      find: (scanId) => state.items.find((item) => item.scanId === scanId),
    }),
    [state, load],
  );
}

export function Library({ hidden, api, library, focusKey, onStatus }) {
  const { items, nextCursor, loading, loaded, error } = library.state;
  const heading = useRef(null);
  const section = useRef(null);
  const more = useRef(null);

  // Focus: the heading when the library first shows, the tile that was open when coming back.
  useEffect(() => {
    if (hidden) return;
    const tile = focusKey && section.current.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
    (tile || heading.current).focus({ preventScroll: Boolean(tile) });
  }, [hidden]);

  // The next page loads as the button that asks for it comes near the viewport.
  useEffect(() => {
    const button = more.current;
    if (!button || hidden) return undefined;
    const observer = new IntersectionObserver(
      (entries) => entries.some((entry) => entry.isIntersecting) && library.loadMore(),
      { rootMargin: "600px" },
    );
    observer.observe(button);
    return () => observer.disconnect();
  }, [nextCursor, hidden, library.loadMore]);

  const stored = useCallback((scan) => library.add(scan), [library.add]);

  return html`
    <div class="library" hidden=${hidden} ref=${section}>
      <h1 id="library-title" tabindex="-1" ref=${heading}>Scans</h1>
      <${Upload} api=${api} onStored=${stored} onStatus=${onStatus} />
      <section aria-labelledby="grid-title" class="panel">
        <h2 id="grid-title">
          Newest first <span class="muted count">${loaded ? plural(items.length, "scan") + (nextCursor ? " loaded" : "") : ""}</span>
        </h2>
        <p role="alert" class=${error ? "alert" : "alert empty"}>${error}</p>
        ${loaded && items.length === 0 && html`<p class="empty-state">No scans yet. Upload DICOM, PNG or JPEG files above.</p>`}
        <${Grid} items=${items} onImageError=${library.refresh} />
        ${loading && html`<p class="muted" role="status">Loading scans…</p>`}
        ${nextCursor &&
        html`<button type="button" class="more" ref=${more} disabled=${loading} onClick=${library.loadMore}>
          Load more scans
        </button>`}
      </section>
    </div>
  `;
}
