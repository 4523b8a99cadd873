"""What the gateway serves itself, locally only: /openapi.json, /docs, and the web app (web/) at /."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from urllib.parse import unquote

from scripts.dev.localgw.responses import JSON_HEADERS, OWN_HEADERS, HttpResponse, error
from scripts.web import assets as web_assets

# --- /openapi.json and /docs ----------------------------------------------------------------------

OPENAPI_FILE = "openapi.json"
SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# The pages load their script and style as files: the same Content-Security-Policy as the web app
# (script-src 'self', style-src 'self', no inline code) covers them.
SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CT scan store API</title>
<link rel="icon" href="/docs/favicon-32x32.png"><link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui" data-spec="/openapi.json"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/docs.js"></script>
</body></html>
"""
SWAGGER_SCRIPT = """const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({url: root.dataset.spec, dom_id: "#swagger-ui", deepLinking: true});
"""
# Without the swagger-ui-bundle package: a page that lists the operations, with nothing to download.
PLAIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CT scan store API</title>
<link rel="stylesheet" href="/docs/docs.css"></head>
<body><h1 id="title">API</h1><ul id="ops" data-spec="/openapi.json"></ul><script src="/docs/docs.js"></script>
</body></html>
"""
PLAIN_STYLE = """body{font:15px system-ui,sans-serif;margin:2em}code{font-weight:bold}li{margin:.3em 0}
"""
PLAIN_SCRIPT = """const list = document.getElementById("ops");
fetch(list.dataset.spec).then(r => r.json()).then(spec => {
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  for (const [path, item] of Object.entries(spec.paths))
    for (const [method, op] of Object.entries(item)) {
      const li = document.createElement("li");
      const code = document.createElement("code");
      code.textContent = method.toUpperCase() + " " + path;
      li.append(code, " ", op.summary || op.operationId || "");
      list.append(li);
    }
});
"""
_HTML = "text/html; charset=utf-8"
_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"


def _swagger_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


class Docs:
    """The checked-in OpenAPI document and a page that renders it: local only, never deployed. Every
    answer carries the security headers the deployed CDN adds (OWN_HEADERS), the page its CSP."""

    def __init__(self, root: Path) -> None:
        self.openapi = root / OPENAPI_FILE
        self.assets = _swagger_dir()
        plain = self.assets is None
        self.files: dict[str, tuple[str, bytes]] = {
            "docs.js": (_JS, (PLAIN_SCRIPT if plain else SWAGGER_SCRIPT).encode()),
            **({"docs.css": (_CSS, PLAIN_STYLE.encode())} if plain else {}),
        }
        self.page = (PLAIN_PAGE if plain else SWAGGER_PAGE).encode()

    def answer(self, method: str, raw_path: str) -> HttpResponse | None:
        if method not in ("GET", "HEAD"):
            return None
        if raw_path == "/openapi.json":
            try:
                body = self.openapi.read_bytes()
            except FileNotFoundError:
                return error(404, "not_found", f"{OPENAPI_FILE} is missing from the repository root")
            return 200, [*JSON_HEADERS, ("Cache-Control", "no-cache"), *OWN_HEADERS], body
        if raw_path in ("/docs", "/docs/"):
            return 200, [("Content-Type", _HTML), ("Cache-Control", "no-cache"), *OWN_HEADERS], self.page
        name = raw_path.removeprefix("/docs/")
        if name in self.files:
            content_type, body = self.files[name]
            return 200, [("Content-Type", content_type), ("Cache-Control", "no-cache"), *OWN_HEADERS], body
        if self.assets is not None and name in SWAGGER_ASSETS:
            return 200, [("Content-Type", SWAGGER_ASSETS[name]), *OWN_HEADERS], (self.assets / name).read_bytes()
        return None


# --- the web app (web/) at /, on the API's origin ---------------------------------------------------

# Locally the page and the API share this origin; the deploy writes its own config.json.
LOCAL_WEB_CONFIG = b'{"apiBaseUrl": ""}\n'

# What CloudFront compresses (infra/web.yml: Compress: true on the page's behaviour), as its
# "Serve compressed files" page says: a viewer that sends Accept-Encoding: gzip, a type on its list
# (text, JavaScript, JSON, SVG: not PNG), 1,000 to 10,000,000 bytes; the ETag becomes weak (W/).
# Brotli aside: Chromium asks for it only over HTTPS, and the local gateway is plain HTTP.
_COMPRESSED_TYPES = ("text/", "application/json", "application/manifest+json", "image/svg+xml")
_COMPRESSED_SIZES = range(1_000, 10_000_001)


def _takes_gzip(headers: list[tuple[str, str]]) -> bool:
    """Whether Accept-Encoding lists gzip with a q above 0."""
    for name, value in headers:
        if name != "accept-encoding":
            continue
        for coding in value.split(","):
            token, _, params = coding.partition(";")
            if token.strip().lower() not in ("gzip", "x-gzip"):
                continue
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


class WebApp:
    """The files of web/ at /, served as the deployed CDN serves them (scripts/web/assets.py): their
    Content-Type and Cache-Control, a strong ETag and 304, and the page's security headers (CSP and
    the rest). Only GET and HEAD, never under /api/, never a dotfile or a kind of file not listed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        # With IMAGES_BUCKET, the bucket's origin is in the CSP: the page posts large files there.
        self.security_headers = web_assets.security_headers(os.environ)
        self._gzipped: dict[str, bytes] = {}  # strong ETag -> the file gzipped (each version once)

    def answer(self, method: str, raw_path: str, headers: list[tuple[str, str]]) -> HttpResponse | None:
        if method not in ("GET", "HEAD") or raw_path == "/api" or raw_path.startswith("/api/"):
            return None
        relative = self._relative(raw_path)
        if relative is None or not self.root.is_dir():
            return None
        if relative == web_assets.CONFIG:
            body = LOCAL_WEB_CONFIG
        else:
            path = (self.root / relative).resolve()
            if not path.is_relative_to(self.root) or not path.is_file():
                return None
            body = path.read_bytes()  # small files, read on every request: an edit shows on reload
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        content_type = web_assets.content_type(relative) or "application/octet-stream"
        compressible = content_type.startswith(_COMPRESSED_TYPES) and len(body) in _COMPRESSED_SIZES
        encoding: list[tuple[str, str]] = []
        if compressible and _takes_gzip(headers):
            body = self._gzip(etag, body)
            etag = f"W/{etag}"
            encoding = [("Content-Encoding", "gzip")]
        out = [
            ("Content-Type", content_type),
            *encoding,
            *([("Vary", "Accept-Encoding")] if compressible else []),
            ("Cache-Control", web_assets.cache_control(relative)),
            ("ETag", etag),
            *self.security_headers,
        ]
        # If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" and "x" match.
        strong = etag.removeprefix("W/")
        asked = [tag.strip().removeprefix("W/") for n, v in headers if n == "if-none-match" for tag in v.split(",")]
        if strong in asked or "*" in asked:
            return 304, out, b""
        return 200, out, body

    def _gzip(self, etag: str, body: bytes) -> bytes:
        held = self._gzipped.get(etag)
        if held is None:
            held = self._gzipped[etag] = gzip.compress(body, compresslevel=6, mtime=0)
        return held

    @staticmethod
    def _relative(raw_path: str) -> str | None:
        """The file a request path names, relative to web/; None for anything we do not serve."""
        path = unquote(raw_path)
        if path == "/":
            return web_assets.INDEX
        parts = path.removeprefix("/").split("/")
        if any(not part or part.startswith(".") or "\\" in part or "\x00" in part for part in parts):
            return None  # empty segments, dotfiles, . and .., backslashes, NUL
        relative = "/".join(parts)
        return relative if web_assets.content_type(relative) is not None else None
