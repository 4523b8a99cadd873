"""The DICOMweb reads the images function serves (QIDO-RS searches, WADO-RS metadata, instances, frames,
bulk data, thumbnails): HTTP in, one call into shared.dicomweb.wado, HTTP out. No decoding, no numpy:
frames and bulk data are byte ranges of the stored files. Loaded by the first DICOMweb request
(functions/images/dicomweb.py routes to it), so that an image read's cold start never pays for it.

A session's bearer token or a viewer token (read-only, DICOMweb GETs only) authorises.
"""

from __future__ import annotations

import pybase64
from starlette.requests import Request
from starlette.responses import Response

from shared import auth
from shared.db.audit import Origin
from shared.dicomweb import DICOMWEB_ROOT, wado
from shared.dicomweb.attributes import Level
from shared.http.image_cache import CachedImage, ImageCache, Key, image_cache
from shared.http.image_responses import PRE_ENCODED_HEADER
from shared.http.urls import base_url


def _send(answer: wado.Answer) -> Response:
    """The answer as Mangum hands it to API Gateway: a binary body base64-encoded here with SIMD
    (pybase64, as image bodies are) and marked so that Mangum passes it on as it is."""
    headers = dict(answer.headers)
    is_text = headers.get("Content-Type") == wado.DICOM_JSON and "Content-Encoding" not in headers
    if not answer.body or is_text:
        return Response(answer.body, status_code=answer.status, headers=headers)
    return _pre_encoded(answer.status, pybase64.b64encode(answer.body).decode("ascii"), len(answer.body), headers)


def _pre_encoded(status: int, base64: str, size: int, headers: dict[str, str]) -> Response:
    return Response(
        base64.encode("ascii"),
        status_code=status,
        headers={**headers, "Content-Length": str(size), PRE_ENCODED_HEADER: "1"},
    )


def _token(request: Request) -> str:
    return auth.parse_bearer(request.headers.get("authorization"))


async def search(request: Request, level: str) -> Response:
    return _send(
        wado.search(
            token=_token(request),
            level=Level(level),
            params=request.query_params.multi_items(),
            study_uid=request.path_params.get("study"),
            series_uid=request.path_params.get("series"),
            accept=request.headers.get("accept"),
            origin=Origin.of_scope(request.scope),
            retrieve_root=base_url(request) + DICOMWEB_ROOT,
            accept_encoding=request.headers.get("accept-encoding"),
        )
    )


async def metadata(request: Request) -> Response:
    """WADO-RS metadata. A warm container keeps the gzipped answers it sent: the database still
    authorises and audits each request and says whether the resource changed, and sends no JSON
    when it did not."""
    study, series, sop = (request.path_params.get(name) for name in ("study", "series", "instance"))
    accept_encoding = request.headers.get("accept-encoding")
    gzipped = wado.takes_gzip(accept_encoding)
    cache, key = image_cache(), ("metadata", study or "", series or "", sop or "", "gzip")
    held = cache.get(key) if gzipped else None
    answer = wado.metadata(
        token=_token(request),
        study_uid=request.path_params["study"],
        series_uid=series,
        sop_uid=sop,
        accept=request.headers.get("accept"),
        accept_encoding=accept_encoding,
        if_none_match=request.headers.get("if-none-match"),
        origin=Origin.of_scope(request.scope),
        known_etag=held.sha256 if held else None,
    )
    if not gzipped or (answer.status == 200 and not answer.held and "Content-Encoding" not in answer.headers):
        return _send(answer)  # small enough to go uncompressed, or for a client without gzip: not kept
    return _held_or_kept(answer, held, cache, key, kept_headers=("Content-Type", "Content-Encoding"))


async def retrieve(request: Request) -> Response:
    return _send(
        wado.retrieve(
            token=_token(request),
            study_uid=request.path_params["study"],
            series_uid=request.path_params.get("series"),
            sop_uid=request.path_params.get("instance"),
            accept=request.headers.get("accept"),
            origin=Origin.of_scope(request.scope),
        )
    )


async def frames(request: Request) -> Response:
    """WADO-RS frames. A warm container keeps the answers it sent (shared.http.image_cache, within
    IMAGE_CACHE_MB): the database still authorises and audits each request, and reads no bytes when
    the file's SHA-256 is still the one whose frames are held."""
    accept = request.headers.get("accept")
    sop_uid, frame_list = request.path_params["instance"], request.path_params["frames"]
    cache, key = image_cache(), ("frames", sop_uid, frame_list, accept or "")
    held = cache.get(key)
    answer = wado.frames(
        token=_token(request),
        study_uid=request.path_params["study"],
        series_uid=request.path_params["series"],
        sop_uid=sop_uid,
        frame_list=frame_list,
        accept=accept,
        origin=Origin.of_scope(request.scope),
        decoded_path=_below_root(request),
        known_sha256=held.sha256 if held else None,
    )
    return _held_or_kept(answer, held, cache, key, kept_headers=("Content-Type",))


def _held_or_kept(
    answer: wado.Answer, held: CachedImage | None, cache: ImageCache, key: Key, *, kept_headers: tuple[str, ...]
) -> Response:
    """The held body when the database vouched for it; else the answer, kept for next time when it
    is a 200 of a known version (with the headers the key does not determine)."""
    if answer.held and held is not None:
        return _pre_encoded(200, held.base64, held.size, {**answer.headers, **dict(held.headers)})
    if answer.status != 200 or answer.sha256 is None:
        return _send(answer)
    encoded = pybase64.b64encode(answer.body).decode("ascii")
    headers = tuple((name, answer.headers[name]) for name in kept_headers if name in answer.headers)
    cache.put(key, CachedImage(answer.sha256, encoded, size=len(answer.body), headers=headers))
    return _pre_encoded(200, encoded, len(answer.body), answer.headers)


def _below_root(request: Request) -> str:
    """The request's path below DICOMWEB_ROOT, with its query string (a viewer's ?token= goes along)."""
    path = request.url.path.removeprefix(DICOMWEB_ROOT)
    return f"{path}?{request.url.query}" if request.url.query else path


async def bulkdata(request: Request) -> Response:
    return _send(
        wado.bulkdata(
            token=_token(request),
            study_uid=request.path_params["study"],
            series_uid=request.path_params["series"],
            sop_uid=request.path_params["instance"],
            path=request.path_params["path"],
            accept=request.headers.get("accept"),
            origin=Origin.of_scope(request.scope),
        )
    )


async def thumbnail(request: Request) -> Response:
    return _send(
        wado.thumbnail(
            token=_token(request),
            study_uid=request.path_params["study"],
            series_uid=request.path_params.get("series"),
            sop_uid=request.path_params.get("instance"),
            accept=request.headers.get("accept"),
            origin=Origin.of_scope(request.scope),
        )
    )
