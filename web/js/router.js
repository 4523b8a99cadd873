// Routes live in the URL's fragment (#/scans/<id>), so the page is one static file on any host
// (S3 behind CloudFront needs no rewrite rules) and the back button moves between views.
import { useEffect, useState } from "./preact.js";

export function parseRoute(hash = location.hash) {
  const path = hash.replace(/^#/, "");
  let found = path.match(/^\/scans\/([^/]+)$/);
  if (found) return { name: "scan", scanId: decodeURIComponent(found[1]) };
  found = path.match(/^\/series\/([^/]+)$/);
  if (found) return { name: "series", seriesUid: decodeURIComponent(found[1]) };
  return { name: "library" };
}

export const libraryHref = "#/";
export const scanHref = (scanId) => `#/scans/${encodeURIComponent(scanId)}`;
export const seriesHref = (seriesUid) => `#/series/${encodeURIComponent(seriesUid)}`;

export function useRoute() {
  const [route, setRoute] = useState(() => parseRoute());
  useEffect(() => {
    const changed = () => setRoute(parseRoute());
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return route;
}
