import { html, useEffect, useRef, useState } from "./preact.js";
import { logIn } from "./api.js";

export function Login({ apiBaseUrl, notice, onLoggedIn }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(notice?.kind === "alert" ? notice.text : "");
  const username = useRef(null);

  useEffect(() => username.current.focus(), []);

  async function submit(event) {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const username = String(form.get("username")).trim();
    setBusy(true);
    setError("");
    try {
      const { token, expiresAt } = await logIn(apiBaseUrl, username, String(form.get("password")));
      onLoggedIn({ token, expiresAt, username });
    } catch (failure) {
      setError(failure.message);
      setBusy(false);
    }
  }

  return html`
    <main class="login" id="main">
      <form class="login-card" onSubmit=${submit} aria-labelledby="login-title">
        <h1 id="login-title">CT scan store</h1>
        <p class="muted">Log in to upload and view scans.</p>
        ${notice?.kind === "status" && html`<p role="status" class="notice">${notice.text}</p>`}
        <p role="alert" class=${error ? "alert" : "alert empty"}>${error}</p>
        <label for="username">Username</label>
        <input id="username" name="username" ref=${username} autocomplete="username" required autocapitalize="none"
          spellcheck=${false} />
        <label for="password">Password</label>
        <input id="password" name="password" type="password" autocomplete="current-password" required />
        <button type="submit" class="primary" disabled=${busy}>Log in</button>
      </form>
    </main>
  `;
}
