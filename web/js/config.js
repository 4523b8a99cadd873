// config.json, served beside the page: {"apiBaseUrl": ""} for the page's own origin, or the
// absolute URL of the API. The deploy writes it; the page never needs rebuilding for another API.
export async function loadConfig() {
  const response = await fetch("config.json", { cache: "no-cache", credentials: "omit" });
  if (!response.ok) throw new Error(`config.json answered ${response.status}`);
  const config = await response.json();
  const base = config?.apiBaseUrl;
  if (typeof base !== "string") throw new Error('config.json has no "apiBaseUrl" string');
  if (base !== "" && !/^https?:\/\/[^/]+/.test(base)) {
    throw new Error('config.json: "apiBaseUrl" must be "" (this origin) or an absolute http(s) URL');
  }
  return { apiBaseUrl: base.replace(/\/+$/, "") };
}
