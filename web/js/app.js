// Logged out: the login form. Logged in: the workspace, keyed by the token, so that logging out
// drops every piece of its state (scan lists, signed image URLs, uploads in flight) at once.
import { html, useCallback, useState } from "./preact.js";
import { clearSession, loadSession, saveSession } from "./session.js";
import { Login } from "./login.js";
import { Workspace } from "./workspace.js";

const EXPIRED = { kind: "alert", text: "Your session has ended. Log in again to continue." };
const LOGGED_OUT = { kind: "status", text: "You have logged out." };

export function App({ apiBaseUrl }) {
  const [state, setState] = useState(() => {
    const { session, expired } = loadSession();
    return { session, notice: expired ? EXPIRED : null };
  });

  const loggedIn = useCallback((session) => {
    saveSession(session);
    setState({ session, notice: null });
  }, []);

  // Expiry keeps the URL, so logging in again returns to the same scan.
  const expired = useCallback(() => {
    clearSession();
    setState({ session: null, notice: EXPIRED });
  }, []);

  // Logging out also forgets where the user was: the entries behind it in the history show the
  // login form too (there is no session), never an image.
  const loggedOut = useCallback(() => {
    clearSession();
    history.replaceState(null, "", location.pathname + location.search);
    setState({ session: null, notice: LOGGED_OUT });
  }, []);

  if (!state.session) {
    return html`<${Login} apiBaseUrl=${apiBaseUrl} notice=${state.notice} onLoggedIn=${loggedIn} />`;
  }
  return html`<${Workspace}
    key=${state.session.token}
    apiBaseUrl=${apiBaseUrl}
    session=${state.session}
    onExpired=${expired}
    onLoggedOut=${loggedOut}
  />`;
}
