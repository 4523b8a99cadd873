"""The DICOMweb reads the images function serves (QIDO-RS searches, WADO-RS metadata, instances, frames,
bulk data, thumbnails): HTTP in, one call into shared.dicomweb.wado, HTTP out. No decoding, no numpy:
frames and bulk data are byte ranges of the stored files.

A session's bearer token or a viewer token (read-only, DICOMweb GETs only) authorises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import auth
from shared.db.audit import Origin
from shared.dicomweb import DICOMWEB_ROOT, wado
from shared.dicomweb.attributes import Level
from shared.http.urls import base_url

STUDY = DICOMWEB_ROOT + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def _send(answer: wado.Answer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


def _token(request: Request) -> str:
    return auth.parse_bearer(request.headers.get("authorization"))


def _search(level: Level) -> Callable[[Request], Awaitable[Response]]:
    async def search(request: Request) -> Response:
        return _send(
            wado.search(
                token=_token(request),
                level=level,
                params=request.query_params.multi_items(),
                study_uid=request.path_params.get("study"),
                series_uid=request.path_params.get("series"),
                accept=request.headers.get("accept"),
                origin=Origin.of_scope(request.scope),
                retrieve_root=base_url(request) + DICOMWEB_ROOT,
            )
        )

    return search


async def metadata(request: Request) -> Response:
    return _send(
        wado.metadata(
            token=_token(request),
            study_uid=request.path_params["study"],
            series_uid=request.path_params.get("series"),
            sop_uid=request.path_params.get("instance"),
            accept=request.headers.get("accept"),
            accept_encoding=request.headers.get("accept-encoding"),
            if_none_match=request.headers.get("if-none-match"),
            origin=Origin.of_scope(request.scope),
        )
    )


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
    return _send(
        wado.frames(
            token=_token(request),
            study_uid=request.path_params["study"],
            series_uid=request.path_params["series"],
            sop_uid=request.path_params["instance"],
            frame_list=request.path_params["frames"],
            accept=request.headers.get("accept"),
            origin=Origin.of_scope(request.scope),
            decoded_path=_below_root(request),
        )
    )


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


ROUTES = [
    Route(DICOMWEB_ROOT + "/studies", _search(Level.study), methods=["GET"]),
    Route(DICOMWEB_ROOT + "/series", _search(Level.series), methods=["GET"]),
    Route(DICOMWEB_ROOT + "/instances", _search(Level.instance), methods=["GET"]),
    Route(STUDY + "/series", _search(Level.series), methods=["GET"]),
    Route(STUDY + "/instances", _search(Level.instance), methods=["GET"]),
    Route(SERIES + "/instances", _search(Level.instance), methods=["GET"]),
    Route(STUDY, retrieve, methods=["GET"]),
    Route(SERIES, retrieve, methods=["GET"]),
    Route(INSTANCE, retrieve, methods=["GET"]),
    Route(STUDY + "/metadata", metadata, methods=["GET"]),
    Route(SERIES + "/metadata", metadata, methods=["GET"]),
    Route(INSTANCE + "/metadata", metadata, methods=["GET"]),
    Route(INSTANCE + "/frames/{frames}", frames, methods=["GET"]),
    Route(INSTANCE + "/bulkdata/{path}", bulkdata, methods=["GET"]),
    Route(STUDY + "/thumbnail", thumbnail, methods=["GET"]),
    Route(SERIES + "/thumbnail", thumbnail, methods=["GET"]),
    Route(INSTANCE + "/thumbnail", thumbnail, methods=["GET"]),
]
