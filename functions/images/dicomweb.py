"""The DICOMweb routes of the images function (QIDO-RS, WADO-RS reads): paths only. Their endpoints
live in functions/images/dicomweb_reads.py and load on the first DICOMweb request: an image read's
cold start imports none of shared.dicomweb (the images function's import stays as it was before it
spoke DICOMweb).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.dicomweb import DICOMWEB_ROOT

STUDY = DICOMWEB_ROOT + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def _lazy(name: str, **bound: Any) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that calls dicomweb_reads.<name>(request, **bound), importing it on first use."""

    async def endpoint(request: Request) -> Response:
        from functions.images import dicomweb_reads  # the first DICOMweb request pays for it

        response: Response = await getattr(dicomweb_reads, name)(request, **bound)
        return response

    endpoint.__name__ = name
    return endpoint


ROUTES = [
    Route(DICOMWEB_ROOT + "/studies", _lazy("search", level="study"), methods=["GET"]),
    Route(DICOMWEB_ROOT + "/series", _lazy("search", level="series"), methods=["GET"]),
    Route(DICOMWEB_ROOT + "/instances", _lazy("search", level="instance"), methods=["GET"]),
    Route(STUDY + "/series", _lazy("search", level="series"), methods=["GET"]),
    Route(STUDY + "/instances", _lazy("search", level="instance"), methods=["GET"]),
    Route(SERIES + "/instances", _lazy("search", level="instance"), methods=["GET"]),
    Route(STUDY, _lazy("retrieve"), methods=["GET"]),
    Route(SERIES, _lazy("retrieve"), methods=["GET"]),
    Route(INSTANCE, _lazy("retrieve"), methods=["GET"]),
    Route(STUDY + "/metadata", _lazy("metadata"), methods=["GET"]),
    Route(SERIES + "/metadata", _lazy("metadata"), methods=["GET"]),
    Route(INSTANCE + "/metadata", _lazy("metadata"), methods=["GET"]),
    Route(INSTANCE + "/frames/{frames}", _lazy("frames"), methods=["GET"]),
    Route(INSTANCE + "/bulkdata/{path}", _lazy("bulkdata"), methods=["GET"]),
    Route(STUDY + "/thumbnail", _lazy("thumbnail"), methods=["GET"]),
    Route(SERIES + "/thumbnail", _lazy("thumbnail"), methods=["GET"]),
    Route(INSTANCE + "/thumbnail", _lazy("thumbnail"), methods=["GET"]),
]
