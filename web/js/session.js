// The session lives in sessionStorage (this tab only, gone when it closes), never in localStorage.
const KEY = "ctscan.session";

/** The stored session if it is still valid; `expired` when one was stored but has run out. */
export function loadSession() {
  let stored = null;
  try {
    stored = JSON.parse(sessionStorage.getItem(KEY) ?? "null");
  } catch {
    stored = null;
  }
  if (stored && typeof stored.token === "string" && Date.parse(stored.expiresAt) > Date.now()) {
    return { session: stored, expired: false };
  }
  sessionStorage.removeItem(KEY);
  return { session: null, expired: Boolean(stored) };
}

export function saveSession(session) {
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export function clearSession() {
  sessionStorage.removeItem(KEY);
}
