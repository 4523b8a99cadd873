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
// POST /scans/analyze takes at most this many bytes (API Gateway's payload limit; a 413 above it):
// a larger file goes to the images bucket with a presigned POST, then /complete analyzes it.
export const ANALYZE_LIMIT = 4_500_000;
const NO_BUCKET = "Files over 4.5 MB need the server's S3 bucket, which this server does not have.";
const BUCKET_UNREACHABLE = "The file could not be sent to the image store. Check the connection and try again.";

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

/**
 * POST a form with XMLHttpRequest, whose upload events report progress (fetch has none):
 * onProgress(sentBytes, totalBytes). Resolves with the XHR once answered, whatever its status.
 */
function postForm(url, form, { headers = {}, responseType = "", onProgress, signal, unreachable = UNREACHABLE }) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.responseType = responseType;
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => resolve(xhr));
    xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", unreachable)));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", "Cancelled.")));
    signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(form);
  });
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

  async function analyze(file, onProgress) {
    const form = new FormData();
    form.append("file", file, file.name);
    const xhr = await postForm(apiUrl(baseUrl, "/scans/analyze"), form, {
      headers: { Authorization: `Bearer ${token}` },
      responseType: "json",
      onProgress,
      signal,
    });
    if (xhr.status === 200 || xhr.status === 201) return xhr.response;
    if (xhr.status === 401) onUnauthorized();
    throw errorFrom(xhr.status, xhr.response, xhr.statusText);
  }

  /**
   * POST /scans/uploads (a presigned POST), the file straight to the bucket with the policy's
   * fields before it (no token: the policy is the credential), then POST /scans/uploads/{id}/complete,
   * which answers as /analyze does. S3 answers errors in XML: a short message with its status.
   */
  async function uploadThroughBucket(file, onProgress) {
    let started;
    try {
      started = await call("/scans/uploads", { method: "POST", json: { filename: file.name, size: file.size } });
    } catch (error) {
      if (error.code === "direct_upload_unavailable") throw new ApiError(error.status, error.code, NO_BUCKET);
      throw error;
    }
    const form = new FormData();
    for (const [name, value] of Object.entries(started.fields)) form.append(name, value);
    form.append("file", file, file.name); // last: S3 ignores any field after the file
    const posted = await postForm(started.url, form, { onProgress, signal, unreachable: BUCKET_UNREACHABLE });
    if (posted.status < 200 || posted.status >= 300) {
      const message = `The image store refused the file (HTTP ${posted.status}). Try again.`;
      throw new ApiError(posted.status, "storage_refused", message);
    }
    return call(`/scans/uploads/${encodeURIComponent(started.uploadId)}/complete`, { method: "POST" });
  }

  /** GET below /api/v1/dicomweb with the session's token: the raw response, or an ApiError. */
  async function dicomwebResponse(path, { query, accept, signal: own } = {}) {
    let response;
    try {
      response = await fetch(apiUrl(baseUrl, `/dicomweb${path}`, query), {
        headers: { Authorization: `Bearer ${token}`, Accept: accept },
        credentials: "omit",
        signal: own ?? signal,
      });
    } catch (error) {
      if (error?.name === "AbortError") throw new ApiError(0, "aborted", "Cancelled.");
      throw new ApiError(0, "network_error", UNREACHABLE);
    }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      if (response.status === 401) onUnauthorized();
      throw errorFrom(response.status, body, response.statusText);
    }
    return response;
  }

  return {
    /** QIDO-RS or WADO-RS metadata: DICOM JSON. */
    async dicomweb(path, query) {
      return (await dicomwebResponse(path, { query, accept: "application/dicom+json" })).json();
    },
    /** A WADO-RS multipart answer (frames): its bytes and Content-Type. */
    async dicomwebBytes(path, { accept, signal: own } = {}) {
      const response = await dicomwebResponse(path, { accept, signal: own });
      return { buffer: await response.arrayBuffer(), contentType: response.headers.get("Content-Type") };
    },
    /** An image URL the API signed (no token: the signature is the credential). */
    async signedImage(url) {
      const response = await fetch(url, { credentials: "omit" });
      if (!response.ok) throw new ApiError(response.status, `http_${response.status}`, "The image could not be loaded.");
      return response.blob();
    },
    listScans: ({ cursor, limit, seriesInstanceUid, studyInstanceUid, dicom } = {}) =>
      call("/scans", { query: { cursor, limit, seriesInstanceUid, studyInstanceUid, dicom } }),
    getScan: (scanId) => call(`/scans/${encodeURIComponent(scanId)}`),
    deleteScan: (scanId) => call(`/scans/${encodeURIComponent(scanId)}`, { method: "DELETE" }),
    // Not cancelled with the rest when the page leaves the session (it is what leaving sends), and
    // kept alive should the tab close at once.
    endSession: () =>
      send(apiUrl(baseUrl, "/auth/sessions/current"), { method: "DELETE", token, keepalive: true }),

    /** Every scan of one series (or study) in reading order, following nextCursor. */
    async listSeries(seriesInstanceUid, studyInstanceUid) {
      const items = [];
      let cursor;
      do {
        const page = await call("/scans", { query: { seriesInstanceUid, studyInstanceUid, limit: 100, cursor } });
        items.push(...page.items);
        cursor = page.nextCursor;
      } while (cursor);
      return items;
    },

    /**
     * Upload a file: onProgress(sentBytes, totalBytes) while its bytes go up. Resolves with the upload's
     * JSON (`duplicate` says whether the file was already stored), rejects with an ApiError carrying
     * the API's own message. Up to ANALYZE_LIMIT in one POST /scans/analyze; past it, through the
     * images bucket (uploadThroughBucket), which ends in the same answer.
     */
    upload(file, onProgress) {
      return file.size > ANALYZE_LIMIT ? uploadThroughBucket(file, onProgress) : analyze(file, onProgress);
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
