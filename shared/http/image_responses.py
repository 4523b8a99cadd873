"""The images function's HTTP: Range and If-None-Match parsed for the read, and the 200, 206, 304
or 416 that the read decided, with its body already base64 (Starlette only)."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import Response

from shared import db
from shared.http.errors import error_response

IMMUTABLE_CACHE = "private, max-age=31536000, immutable"

# Marks a response whose body is already base64 text; the Lambda entry point removes it and sets
# isBase64Encoded (see lambda_handler_for_base64_bodies).
PRE_ENCODED_HEADER = "x-ctscan-body-base64"
MAX_RANGE_DIGITS = 18  # fits a bigint
MAX_ETAGS = 32  # entity tags read from one If-None-Match


@dataclass(frozen=True)
class ByteRange:
    """One requested byte range as db.ImageRead takes it: start < 0 means the last -start bytes."""

    start: int
    stop: int | None


def parse_range(header: str | None) -> ByteRange | None:
    """A single `bytes=a-b`, `a-` or `-n` range; None for no Range header, or one we answer whole (RFC 9110 14.2).

    Several ranges, other units and malformed headers are answered with the whole image (200), as
    the RFC allows. `-0` asks for nothing and is unsatisfiable.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if unit.strip().lower() != "bytes" or not dash or "," in spec or not (first or last):
        return None
    if not all(part.isascii() and part.isdigit() and len(part) <= MAX_RANGE_DIGITS for part in (first, last) if part):
        return None
    if not first:
        suffix = int(last)
        return ByteRange(-suffix, None) if suffix else ByteRange(0, 0)
    if not last:
        return ByteRange(int(first), None)
    if int(last) < int(first):
        return None
    return ByteRange(int(first), int(last) + 1)


def if_none_match_hashes(header: str | None) -> tuple[str, ...]:
    """The image hashes an If-None-Match names (weak comparison: W/ is ignored), "*" as itself.

    Our ETags are the quoted SHA-256 hex; any other entity tag can never match one and is dropped.
    """
    if not header:
        return ()
    if header.strip() == "*":
        return ("*",)
    hashes = []
    for candidate in header.split(","):
        tag = candidate.strip().removeprefix("W/")
        if len(tag) == 66 and tag[0] == tag[-1] == '"':
            hashes.append(tag[1:-1])
    return tuple(hashes[:MAX_ETAGS])


def image_part_response(part: db.ImagePart, request: Request, *, signed_until: int | None, now: float) -> Response:
    """The 200, 206, 304 or 416 the read statement decided; the body goes out as the base64 text
    the database sent."""
    etag = f'"{part.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": IMMUTABLE_CACHE,
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
    }
    if signed_until is not None:
        headers.update(signed_cache_headers(signed_until, now))
        headers["Referrer-Policy"] = "no-referrer"
    if part.status == 304:
        return Response(status_code=304, headers=headers)
    if part.status == 416:
        headers["Content-Range"] = f"bytes */{part.size}"
        return error_response(416, "range_not_satisfiable", "The requested range is not in the image.", headers)
    if part.status == 206:
        headers["Content-Range"] = f"bytes {part.first}-{part.stop - 1}/{part.size}"
    headers["Content-Length"] = str(part.stop - part.first)
    if request.method == "HEAD" or part.base64 is None:
        return Response(status_code=part.status, headers=headers, media_type=part.content_type)
    headers[PRE_ENCODED_HEADER] = "1"
    return Response(part.base64.encode("ascii"), status_code=part.status, headers=headers, media_type=part.content_type)


def signed_cache_headers(signed_until: int, now: float) -> dict[str, str]:
    """How long caches may keep a signed answer: until its signature ends, and only CloudFront shares it.

    The URL is the credential, so CloudFront keeps one copy per URL for everyone who holds it, for
    s-maxage: the seconds the signature has left (a shared cache reads s-maxage before max-age, and
    with the cache policy's MinTTL 0 it never stores `private`). max-age=0 keeps any other cache from
    serving it without asking. The route's response headers policy (infra/web.yml,
    ImagesResponseHeadersPolicy; the local gateway applies it too) then gives viewers
    `Cache-Control: private` in its place, and Expires, the signature's end, tells a browser how long
    its own copy is fresh: nothing outlives the URL, and nothing past the CDN shares the bytes.
    """
    return {
        "Cache-Control": f"s-maxage={max(0, signed_until - int(now))}, max-age=0",
        "Expires": formatdate(signed_until, usegmt=True),
    }


def redirect_response(url: str) -> Response:
    """302 to a presigned S3 GET (an image too large for a Lambda response body). Never cached: the
    redirect would outlive its presigned URL; never in a Referer: the URL carries a signature."""
    return Response(
        status_code=302,
        headers={
            "Location": url,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )
