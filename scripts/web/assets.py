"""The web app's files (web/): what each one is served as, how long a cache may keep it, and what the
first load of the page fetches. One source for the local gateway, `make bench`, the tests and the
deploy's upload of web/, so the page is served the same way everywhere."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
WEB_ROOT = ROOT / "web"
INDEX = "index.html"
CONFIG = "config.json"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".webmanifest": "application/manifest+json",
}
# The page and config.json name everything else: a browser asks every time (a 304 when unchanged),
# so a deploy shows at once. Our own modules are not fingerprinted (there is no build step), so they
# are revalidated too: a cached old module next to a new page would break it. Vendored libraries
# live in folders named by their version (vendor/preact-11.2.0/): a new version is a new URL, so
# those are cached for a year without asking.
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
_VERSIONED_VENDOR = re.compile(r"vendor/[a-z0-9-]+-\d+\.\d+\.\d+[^/]*/")

# Like the deployed CloudFront response headers policy (infra/web.yml): no inline script or style,
# nothing from another origin; the API and its signed image URLs are this origin here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; font-src 'self'; manifest-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    # Signed image URLs carry their signature in the query: never send them to another site.
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)


def images_bucket_origin(environ: Mapping[str, str]) -> str | None:
    """The origin the page talks to for files past 4.5 MB (presigned POSTs) and large images (302s to
    presigned GETs): the images bucket's, as shared/storage/'s client addresses it. None without
    IMAGES_BUCKET. A custom endpoint (moto's server: AWS_ENDPOINT_URL_S3) is used as it is."""
    bucket = environ.get("IMAGES_BUCKET", "").strip()
    if not bucket:
        return None
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint)
        return f"{parts.scheme}://{parts.netloc}"
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    return f"https://{bucket}.s3.{region}.amazonaws.com" if region else f"https://{bucket}.s3.amazonaws.com"


def security_headers(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """SECURITY_HEADERS for a gateway with this environment: with an images bucket, its origin joins
    img-src and connect-src (as the deployed policy names it); without one, exactly SECURITY_HEADERS."""
    origin = images_bucket_origin(environ)
    if origin is None:
        return SECURITY_HEADERS
    policy = CONTENT_SECURITY_POLICY.replace("img-src 'self' data: blob:;", f"img-src 'self' data: blob: {origin};")
    policy = policy.replace("connect-src 'self';", f"connect-src 'self' {origin};")
    return tuple((name, policy if name == "Content-Security-Policy" else value) for name, value in SECURITY_HEADERS)


_LINKED = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["']([^"'#?]+)["']""", re.IGNORECASE)
# Static imports, in our formatted modules and in minified vendor code alike.
_IMPORTS = re.compile(r"""\b(?:import|export)\b[^"';]*?\bfrom\s*["']([^"']+)["']|\bimport\s*["']([^"']+)["']""")


def content_type(relative: str) -> str | None:
    """The Content-Type of a file under web/, or None for a kind we do not serve."""
    return CONTENT_TYPES.get(PurePosixPath(relative).suffix.lower())


def cache_control(relative: str) -> str:
    """The Cache-Control of a file under web/ (its path relative to web/, with forward slashes)."""
    return IMMUTABLE if _VERSIONED_VENDOR.match(relative) else NO_CACHE


def module_imports(source: str) -> list[str]:
    """The specifiers of a module's static imports and re-exports."""
    return [a or b for a, b in _IMPORTS.findall(source)]


def first_load_files(root: Path = WEB_ROOT) -> list[str]:
    """Every file the first load of the page fetches (the page, its stylesheets and icon, and the
    whole static module graph), as paths relative to root; config.json is generated and not counted."""
    seen: list[str] = [INDEX]
    pending = [INDEX]
    while pending:
        current = pending.pop()
        text = (root / current).read_text(encoding="utf-8")
        found = _LINKED.findall(text) if current.endswith(".html") else module_imports(text)
        for reference in found:
            if "://" in reference or reference.startswith("/"):
                raise ValueError(f"{current}: {reference!r} is not a relative URL within web/")
            resolved = (PurePosixPath(current).parent / reference).as_posix()
            normalised = str(PurePosixPath(*_normalise(resolved.split("/"))))
            if not (root / normalised).is_file():
                raise ValueError(f"{current}: {reference!r} names no file in {root}")
            if normalised not in seen:
                seen.append(normalised)
                pending.append(normalised)
    return seen


def _normalise(parts: list[str]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if not out:
                raise ValueError("a reference leaves web/")
            out.pop()
        elif part not in ("", "."):
            out.append(part)
    return out
