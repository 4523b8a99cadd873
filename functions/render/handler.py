"""Render, decode and transcode DICOMweb images (shared.dicomweb.rendered): WADO-RS rendered instances
and frames (JPEG, PNG), and frames decoded to uncompressed pixel data or re-encoded as JPEG Lossless
SV1, which the images function cannot serve because it carries no codecs. A plain Starlette app
behind Mangum: pydicom, numpy and Pillow are what its cold start pays for, not FastAPI.

A session's bearer token or a viewer token (read-only, DICOMweb GETs only) authorises, as for every
DICOMweb read.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import auth
from shared.core.errors import DomainError
from shared.db.audit import Origin
from shared.dicomweb import DICOMWEB_ROOT, rendered, wado
from shared.http.entry import lambda_handler
from shared.http.errors import domain_error, http_error, unexpected_error

INSTANCE = DICOMWEB_ROOT + "/studies/{study}/series/{series}/instances/{instance}"
DECODED_INSTANCE = wado.DECODED_ROOT + "/studies/{study}/series/{series}/instances/{instance}"


def _send(answer: wado.Answer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


async def render(request: Request) -> Response:
    return _send(
        rendered.rendered(
            token=auth.parse_bearer(request.headers.get("authorization")),
            study_uid=request.path_params["study"],
            series_uid=request.path_params["series"],
            sop_uid=request.path_params["instance"],
            frame_list=request.path_params.get("frames"),
            params=request.query_params.multi_items(),
            accept=request.headers.get("accept"),
            origin=Origin.of_scope(request.scope),
        )
    )


async def transcoded(request: Request) -> Response:
    return _send(
        rendered.transcoded_frames(
            token=auth.parse_bearer(request.headers.get("authorization")),
            study_uid=request.path_params["study"],
            series_uid=request.path_params["series"],
            sop_uid=request.path_params["instance"],
            frame_list=request.path_params["frames"],
            accept=request.headers.get("accept"),
            origin=Origin.of_scope(request.scope),
        )
    )


app = Starlette(
    routes=[
        Route(INSTANCE + "/rendered", render, methods=["GET"]),
        Route(INSTANCE + "/frames/{frames}/rendered", render, methods=["GET"]),
        Route(DECODED_INSTANCE + "/frames/{frames}", transcoded, methods=["GET"]),
    ],
    exception_handlers={DomainError: domain_error, HTTPException: http_error, Exception: unexpected_error},
)
handler = lambda_handler(app)
