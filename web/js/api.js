// The API as openapi.json documents it: every call goes to `${apiBaseUrl}/api/v1/...` with the
// session's bearer token; errors arrive as {"error": {"code", "message"}} and become ApiErrors.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const UNREACHABLE = "The service could not be reached. Check the connection and try again.";

function apiUrl(baseUrl, path, query = {}) {
  const url = new URL(`${baseUrl}/api/v1${path}`, location.href);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, value);
  }
  return url.href;
}

function errorFrom(status, body, statusText = "") {
  const detail = body?.error;
  if (detail && typeof detail.message === "string") return new ApiError(status, detail.code, detail.message);
  return new ApiError(status, `http_${status}`, `The service answered ${status} ${statusText}`.trim());
}

async function send(url, { method = "GET", token, json, signal, keepalive = false } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      credentials: "omit", // the token is the only credential; no cookies
      cache: "no-store",
      signal,
      keepalive,
    });
  } catch (error) {
    if (error?.name === "AbortError") throw new ApiError(0, "aborted", "Cancelled.");
    throw new ApiError(0, "network_error", UNREACHABLE);
  }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) throw errorFrom(response.status, body, response.statusText);
  return body;
}

/** POST /auth/sessions: {token, expiresAt}. */
export function logIn(baseUrl, username, password) {
  return send(apiUrl(baseUrl, "/auth/sessions"), { method: "POST", json: { username, password } });
}

/**
 * The calls a logged-in page makes. A 401 means the session has ended (expired, logged out
 * elsewhere, password changed): onUnauthorized is told once. Aborting `signal` (at logout) cancels
 * every request and upload still running.
 */
export function createApi({ baseUrl, token, signal, onUnauthorized }) {
  async function call(path, { query, ...options } = {}) {
    try {
      return await send(apiUrl(baseUrl, path, query), { ...options, token, signal });
    } catch (error) {
      if (error.status === 401) onUnauthorized();
      throw error;
    }
  }

  return {
    listScans: ({ cursor, limit, seriesInstanceUid } = {}) =>
      call("/scans", { query: { cursor, limit, seriesInstanceUid } }),
    getScan: (scanId) => call(`/scans/${encodeURIComponent(scanId)}`),
    deleteScan: (scanId) => call(`/scans/${encodeURIComponent(scanId)}`, { method: "DELETE" }),
    // Not cancelled with the rest when the page leaves the session (it is what leaving sends), and
    // kept alive should the tab close at once.
    endSession: () =>
      send(apiUrl(baseUrl, "/auth/sessions/current"), { method: "DELETE", token, keepalive: true }),

    /** Every scan of one series in reading order, following nextCursor. */
    async listSeries(seriesInstanceUid) {
      const items = [];
      let cursor;
      do {
        const page = await call("/scans", { query: { seriesInstanceUid, limit: 100, cursor } });
        items.push(...page.items);
        cursor = page.nextCursor;
      } while (cursor);
      return items;
    },

    /**
     * POST /scans/analyze with XMLHttpRequest, whose upload events report progress (fetch has none):
     * onProgress(sentBytes, totalBytes). Resolves with the upload's JSON (`duplicate` says whether the
     * file was already stored), rejects with an ApiError carrying the API's own message.
     */
    upload(file, onProgress) {
      return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", apiUrl(baseUrl, "/scans/analyze"));
        xhr.setRequestHeader("Authorization", `Bearer ${token}`);
        xhr.responseType = "json";
        xhr.upload.addEventListener("progress", (event) => {
          if (event.lengthComputable) onProgress(event.loaded, event.total);
        });
        xhr.addEventListener("load", () => {
          if (xhr.status === 200 || xhr.status === 201) {
            resolve(xhr.response);
            return;
          }
          if (xhr.status === 401) onUnauthorized();
          reject(errorFrom(xhr.status, xhr.response, xhr.statusText));
        });
        xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", UNREACHABLE)));
        xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", "Cancelled.")));
        signal?.addEventListener("abort", () => xhr.abort(), { once: true });
        const form = new FormData();
        form.append("file", file, file.name);
        xhr.send(form);
      });
    },
  };
}

/** An upload's answer (a scan with its analysis) as a list item, the shape GET /scans returns. */
export function summaryOf(scan) {
  const { results, duplicate: _duplicate, ...metadata } = scan;
  return {
    ...metadata,
    imageUrl: results.imageUrl,
    previewUrl: results.previewUrl,
    annotatedImageUrl: results.annotatedImageUrl,
    thumbnailUrl: results.thumbnailUrl,
    findingsCount: results.findings.length,
  };
}
