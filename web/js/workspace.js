// The logged-in page: a header with Log out, the library (upload and grid), and the scan and series
// viewers, chosen by the URL's fragment.
import { html, useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "./preact.js";
import { createApi } from "./api.js";
import { libraryHref, useRoute } from "./router.js";
import { Library, useLibrary } from "./library.js";
import { SeriesViewer, Viewer } from "./viewer.js";

const LONGEST_TIMER_MS = 2 ** 31 - 1;
const STATUS_MS = 10_000;

export function Workspace({ apiBaseUrl, session, onExpired, onLoggedOut }) {
  const aborter = useMemo(() => new AbortController(), []);
  const api = useMemo(
    () => createApi({ baseUrl: apiBaseUrl, token: session.token, signal: aborter.signal, onUnauthorized: onExpired }),
    [apiBaseUrl, session.token, aborter, onExpired],
  );
  const route = useRoute();
  const library = useLibrary(api);
  const [status, setStatus] = useState("");

  // A status message stays for a while, then goes (screen readers have read it by then).
  useEffect(() => {
    if (!status) return undefined;
    const timer = setTimeout(() => setStatus(""), STATUS_MS);
    return () => clearTimeout(timer);
  }, [status]);

  // Leaving (log out, expiry) cancels every request and upload still running.
  useEffect(() => () => aborter.abort(), [aborter]);

  // The token's own expiry: back to the login form then, even if the page sits idle. (A timer
  // cannot wait longer than 2^31 - 1 ms, about 24.8 days: a longer wait is taken in steps.)
  useEffect(() => {
    let timer;
    const wait = () => {
      const left = Date.parse(session.expiresAt) - Date.now();
      if (left <= 0) onExpired();
      else timer = setTimeout(wait, Math.min(left, LONGEST_TIMER_MS));
    };
    wait();
    return () => clearTimeout(timer);
  }, [session.expiresAt, onExpired]);

  // The grid keeps its place while a scan is open: remember the scroll position, and the tile to
  // give focus back to.
  const place = useRef({ scrollY: 0, opened: null });
  const previous = useRef(route.name);
  useLayoutEffect(() => {
    if (previous.current === "library" && route.name !== "library") place.current.scrollY = window.scrollY;
    if (route.name === "library" && previous.current !== "library") window.scrollTo(0, place.current.scrollY);
    if (route.name !== "library") {
      place.current.opened = route.name === "scan" ? `scan:${route.scanId}` : `series:${route.seriesUid}`;
      window.scrollTo(0, 0); // a scan opens at its top, wherever the grid was scrolled
    }
    previous.current = route.name;
  }, [route]);

  const logOut = useCallback(() => {
    const ending = api.endSession();
    onLoggedOut();
    ending.catch(() => {}); // the session is forgotten here either way
  }, [api, onLoggedOut]);

  const [gone, setGone] = useState(() => new Set()); // deleted scans: their upload rows lose their links
  const deleted = useCallback(
    (scan) => {
      library.remove(scan);
      setGone((all) => new Set(all).add(scan.scanId));
      setStatus(`Deleted ${scan.filename}.`);
      location.replace(libraryHref); // the deleted scan's view is not kept in the history
    },
    [library],
  );

  return html`
    <header class="topbar">
      <a class="brand" href=${libraryHref}>CT scan store</a>
      <span class="who">Logged in as <strong>${session.username}</strong></span>
      <button type="button" class="quiet" onClick=${logOut}>Log out</button>
    </header>
    <p role="status" class="status">${status}</p>
    <main id="main">
      <${Library}
        hidden=${route.name !== "library"}
        api=${api}
        library=${library}
        focusKey=${place.current.opened}
        onStatus=${setStatus}
        deleted=${gone}
      />
      ${route.name === "scan" &&
      html`<${Viewer}
        key=${route.scanId}
        api=${api}
        scanId=${route.scanId}
        summary=${library.find(route.scanId)}
        onDeleted=${deleted}
      />`}
      ${route.name === "series" &&
      html`<${SeriesViewer} key=${route.seriesUid} api=${api} seriesUid=${route.seriesUid} />`}
    </main>
  `;
}
