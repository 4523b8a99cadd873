// Entry point: read config.json (where the API is), then render the app into #app.
import { loadConfig } from "./config.js";
import { App } from "./app.js";
import { html, render } from "./preact.js";

const root = document.getElementById("app");
try {
  const { apiBaseUrl } = await loadConfig();
  root.replaceChildren(); // the "Loading…" placeholder
  render(html`<${App} apiBaseUrl=${apiBaseUrl} />`, root);
} catch (error) {
  const alert = document.createElement("p");
  alert.className = "alert";
  alert.setAttribute("role", "alert");
  alert.textContent = `The app could not start: ${error.message}`;
  root.replaceChildren(alert);
}
