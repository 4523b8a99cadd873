"""`make openapi`: one OpenAPI document for every HTTP function, generated from their apps.

    python -m scripts.build.openapi            writes openapi.json (checked in; tests/test_openapi.py fails when stale)
    python -m scripts.build.openapi --check    exits 1 when openapi.json is not what the code generates

upload is a FastAPI app: its routes describe themselves (shared/http/schemas.py holds the JSON
shapes). The images, scans and auth functions are plain Starlette for their cold start, so their
routes are described here by FastAPI stubs that are never deployed (with auth's request bodies).
Security schemes (bearer token, signed image URL) and the routes each applies to are added here,
from serverless.yml's route list.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Response
from fastapi import Path as PathParam
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from functions.auth import limits as auth
from functions.scans import limits as scans
from shared.dicomweb import UID_PATTERN
from shared.http.schemas import ErrorBody, ScanPage, ScanPublic, SessionCreated, error_responses

ROOT = Path(__file__).resolve().parents[2]

OUTPUT = ROOT / "openapi.json"
TITLE = "CT scan image store"
VERSION = "1"
PUBLIC_OPERATIONS = {("post", "/api/v1/auth/sessions")}
IMAGE_PATH = "/api/v1/scans/image/{scan_id}/{image_type}"


class ImageType(StrEnum):
    """Mirrors shared.db.ImageType (the images function's own enum): tests check they agree."""

    original = "original"
    preview = "preview"
    annotated = "annotated"
    thumbnail = "thumbnail"


def images_stub() -> FastAPI:
    """The images function's route, described with FastAPI (the function itself is plain Starlette)."""
    app = FastAPI()
    image_content = {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in ("image/jpeg", "image/png", "application/dicom")
    }

    route = dict(
        response_model=None,
        summary="A scan's image: original (the file of record), preview, annotated or thumbnail",
        description=(
            "Authorised by a bearer token, or by a signed URL (exp, kid, sig) as found in scan JSON, which "
            "works in an <img>. Strong ETag, 304 on If-None-Match, Range requests (206/416), HEAD."
        ),
        responses={
            200: {"description": "The image bytes", "content": image_content},
            206: {"description": "The requested byte range", "content": image_content},
            304: {"description": "Not modified (If-None-Match matched the ETag)"},
            **error_responses(401, 403, 404, 416, 422, 503),
        },
    )

    # GET and HEAD as two operations with ids of their own: FastAPI derives one id for a
    # multi-method route from a set of methods, whose order changes from run to run.
    def read_scan_image(
        scan_id: Annotated[str, PathParam(max_length=64)],
        image_type: ImageType,
        exp: Annotated[int | None, Query(description="Signed URL: expiry, Unix seconds")] = None,
        kid: Annotated[str | None, Query(description="Signed URL: signing key id")] = None,
        sig: Annotated[str | None, Query(description="Signed URL: base64url HMAC-SHA256")] = None,
        range_: Annotated[str | None, Header(alias="Range")] = None,
        if_range: Annotated[str | None, Header(alias="If-Range")] = None,
        if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    ) -> Response:
        raise NotImplementedError  # documentation only

    app.get(IMAGE_PATH, operation_id="read_scan_image", **route)(read_scan_image)
    app.head(IMAGE_PATH, operation_id="read_scan_image_head", **route)(read_scan_image)
    return app


DICOMWEB = "/api/v1/dicomweb"
UID = r"^[0-9][0-9.]{0,63}$"
DICOM_JSON = {"application/dicom+json": {"schema": {"type": "array", "items": {"type": "object"}}}}
MULTIPART = {"multipart/related": {"schema": {"type": "string", "format": "binary"}}}


StudyUID = Annotated[str, PathParam(pattern=UID, description="Study Instance UID")]
SeriesUID = Annotated[str, PathParam(pattern=UID, description="Series Instance UID")]
InstanceUID = Annotated[str, PathParam(pattern=UID, description="SOP Instance UID")]
# The scans function's query parameters, with the limits its handler checks (shared.http.plain).
ScansLimit = Annotated[int, Query(ge=1, le=scans.MAX_LIMIT)]
ScansCursor = Annotated[str | None, Query(max_length=scans.MAX_CURSOR_LENGTH)]
SeriesUidQuery = Annotated[str | None, Query(alias="seriesInstanceUid", pattern=UID_PATTERN)]
StudyUidQuery = Annotated[str | None, Query(alias="studyInstanceUid", pattern=UID_PATTERN)]
DicomOnly = Annotated[
    bool | None, Query(description="true: only DICOM files; false: only PNG and JPEG (newest first only)")
]
AcceptHeader = Annotated[str | None, Header(alias="Accept")]
FrameList = Annotated[str, PathParam(pattern=r"^[0-9]{1,9}(,[0-9]{1,9}){0,99}$", description="Frame numbers, from 1")]
BulkPath = Annotated[
    str,
    PathParam(
        pattern=r"^[0-9A-Fa-f]{8}(\.[0-9]{1,6}\.[0-9A-Fa-f]{8}){0,20}$",
        description="As the metadata's BulkDataURI names it",
    ),
]


class SessionCreate(BaseModel):
    """Login credentials."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=auth.MAX_USERNAME_LENGTH)
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD_LENGTH)


class PasswordChange(BaseModel):
    """The current password and the new one."""

    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(alias="currentPassword", min_length=1, max_length=auth.MAX_PASSWORD_LENGTH)
    new_password: str = Field(
        alias="newPassword", min_length=auth.MIN_PASSWORD_LENGTH, max_length=auth.MAX_PASSWORD_LENGTH
    )


def auth_stub() -> FastAPI:
    """The auth function's routes, described with FastAPI (the function itself is plain Starlette,
    shared.http.plain checking its bodies as FastAPI checks these models)."""
    app = FastAPI()

    def create_session(credentials: SessionCreate) -> dict[str, Any]:
        raise NotImplementedError  # documentation only

    def delete_session() -> Response:
        raise NotImplementedError

    def delete_all_sessions() -> Response:
        raise NotImplementedError

    def change_password(change: PasswordChange) -> dict[str, Any]:
        raise NotImplementedError

    def create_viewer_token() -> dict[str, Any]:
        raise NotImplementedError

    created = {201: {"model": SessionCreated}}
    with_body, token_only = (400, 401, 422, 429, 503), (401, 503)
    routes = (
        ("POST", auth.SESSIONS, create_session, with_body, "Log in: a bearer token for a username and password"),
        ("DELETE", auth.CURRENT_SESSION, delete_session, token_only, "Log out: end this token's session"),
        ("DELETE", auth.SESSIONS, delete_all_sessions, token_only,
         "Log out everywhere: end every session of this token's user"),
        ("POST", auth.PASSWORD, change_password, with_body,
         "Change the password: ends every session of the user and answers a new one"),
        ("POST", auth.VIEWER_TOKENS, create_viewer_token, token_only,
         "A read-only token for a DICOMweb viewer (OHIF's ?token=): DICOMweb GETs only, ends with this session"),
    )  # fmt: skip
    for method, path, endpoint, errors, summary in routes:
        app.add_api_route(
            path,
            endpoint,
            methods=[method],
            status_code=201 if method == "POST" else 204,
            response_model=None,
            responses={**(created if method == "POST" else {}), **error_responses(*errors)},
            summary=summary,
        )
    return app


def scans_stub() -> FastAPI:
    """The scans function's routes, described with FastAPI (the function itself is plain Starlette,
    shared.http.plain making the same checks): the limits are the handler's own constants."""
    app = FastAPI()

    def list_scans(
        limit: ScansLimit = scans.DEFAULT_LIMIT,
        cursor: ScansCursor = None,
        series_instance_uid: SeriesUidQuery = None,
        study_instance_uid: StudyUidQuery = None,
        dicom: DicomOnly = None,
    ) -> dict[str, Any]:
        raise NotImplementedError  # documentation only

    app.get(
        scans.SCANS,
        response_model=None,
        responses={200: {"model": ScanPage}, **error_responses(400, 401, 422, 503)},
        summary="List the caller's scans: newest first, or one series or study in reading order",
    )(list_scans)

    def read_scan(scan_id: str) -> dict[str, Any]:
        raise NotImplementedError

    app.get(
        scans.SCANS + "/{scan_id}",
        response_model=None,
        responses={200: {"model": ScanPublic}, **error_responses(400, 401, 404, 503)},
        summary="One scan with its analysis",
    )(read_scan)

    def delete_scan(scan_id: str) -> Response:
        raise NotImplementedError

    app.delete(
        scans.SCANS + "/{scan_id}",
        status_code=204,
        response_model=None,
        responses=error_responses(400, 401, 404, 503),
        summary="Delete a scan and its images",
    )(delete_scan)

    def delete_study(study: StudyUID) -> Response:
        raise NotImplementedError

    def delete_series(study: StudyUID, series: SeriesUID) -> Response:
        raise NotImplementedError

    def delete_instance(study: StudyUID, series: SeriesUID, instance: InstanceUID) -> Response:
        raise NotImplementedError

    deleted: dict[str, Any] = dict(status_code=204, response_model=None, responses=error_responses(400, 401, 404, 503))
    app.delete(scans.STUDY, summary="DICOMweb: delete a study (its scans, and its other objects)", **deleted)(
        delete_study
    )
    app.delete(scans.SERIES, summary="DICOMweb: delete a series", **deleted)(delete_series)
    app.delete(scans.INSTANCE, summary="DICOMweb: delete an instance", **deleted)(delete_instance)
    return app


def dicomweb_stub() -> FastAPI:
    """The DICOMweb reads of the images function (plain Starlette), described with FastAPI. PS3.18
    defines their bodies: DICOM JSON, multipart/related parts, JPEG."""
    app = FastAPI()
    errors = error_responses(400, 401, 404, 406, 503)

    def search(
        limit: Annotated[int | None, Query(ge=0, description="At most this many results (and at most 1000)")] = None,
        offset: Annotated[int | None, Query(ge=0, description="Skip this many results")] = None,
        includefield: Annotated[str | None, Query(description="Tags or keywords to return too, or all")] = None,
        fuzzymatching: Annotated[bool | None, Query(description="Accepted; names are matched as given")] = None,
        patient_name: Annotated[str | None, Query(alias="PatientName", description="* and ? wildcards")] = None,
        patient_id: Annotated[str | None, Query(alias="PatientID")] = None,
        study_date: Annotated[str | None, Query(alias="StudyDate", description="YYYYMMDD or a range")] = None,
        accept_: AcceptHeader = None,
    ) -> Response:
        raise NotImplementedError  # documentation only

    found = {200: {"description": "The matches (possibly none): DICOM JSON", "content": DICOM_JSON}}
    qido = dict(response_model=None, responses={**found, **error_responses(400, 401, 406, 503)})
    app.get(f"{DICOMWEB}/studies", operation_id="qido_studies", summary="QIDO-RS: search for studies", **qido)(search)
    app.get(f"{DICOMWEB}/series", operation_id="qido_series", summary="QIDO-RS: search for series", **qido)(search)
    app.get(f"{DICOMWEB}/instances", operation_id="qido_instances", summary="QIDO-RS: search for instances", **qido)(
        search
    )

    def search_in_study(
        study: StudyUID, limit: Annotated[int | None, Query(ge=0)] = None, accept_: AcceptHeader = None
    ) -> Response:
        raise NotImplementedError

    def search_in_series(
        study: StudyUID,
        series: SeriesUID,
        limit: Annotated[int | None, Query(ge=0)] = None,
        accept_: AcceptHeader = None,
    ) -> Response:
        raise NotImplementedError

    app.get(
        f"{DICOMWEB}/studies/{{study}}/series",
        operation_id="qido_study_series",
        summary="QIDO-RS: a study's series",
        **qido,
    )(search_in_study)
    app.get(
        f"{DICOMWEB}/studies/{{study}}/instances",
        operation_id="qido_study_instances",
        summary="QIDO-RS: a study's instances",
        **qido,
    )(search_in_study)
    app.get(
        f"{DICOMWEB}/studies/{{study}}/series/{{series}}/instances",
        operation_id="qido_series_instances",
        summary="QIDO-RS: a series' instances",
        **qido,
    )(search_in_series)

    retrieved = {200: {"description": "The stored instances, one part each", "content": MULTIPART}}
    meta = {
        200: {"description": "The metadata of every instance, in reading order", "content": DICOM_JSON},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
    }

    def at_study(study: StudyUID, accept_: AcceptHeader = None) -> Response:
        raise NotImplementedError

    def at_series(study: StudyUID, series: SeriesUID, accept_: AcceptHeader = None) -> Response:
        raise NotImplementedError

    def at_instance(
        study: StudyUID, series: SeriesUID, instance: InstanceUID, accept_: AcceptHeader = None
    ) -> Response:
        raise NotImplementedError

    def frames(
        study: StudyUID,
        series: SeriesUID,
        instance: InstanceUID,
        frames: Annotated[
            str, PathParam(pattern=r"^[0-9]{1,9}(,[0-9]{1,9}){0,999}$", description="Frame numbers, from 1")
        ],
        accept_: AcceptHeader = None,
    ) -> Response:
        raise NotImplementedError

    def bulkdata(
        study: StudyUID,
        series: SeriesUID,
        instance: InstanceUID,
        path: BulkPath,
        accept_: AcceptHeader = None,
    ) -> Response:
        raise NotImplementedError

    levels = (
        ("study", "/studies/{study}", at_study),
        ("series", "/studies/{study}/series/{series}", at_series),
        ("instance", "/studies/{study}/series/{series}/instances/{instance}", at_instance),
    )
    for level, path, fn in levels:
        app.get(
            DICOMWEB + path,
            operation_id=f"wado_{level}",
            summary=f"WADO-RS: retrieve a {level}",
            response_model=None,
            responses={**retrieved, **errors},
        )(fn)
        app.get(
            DICOMWEB + path + "/metadata",
            operation_id=f"wado_{level}_metadata",
            summary=f"WADO-RS: a {level}'s metadata",
            response_model=None,
            responses={**meta, **errors},
        )(fn)
        app.get(
            DICOMWEB + path + "/thumbnail",
            operation_id=f"wado_{level}_thumbnail",
            summary=f"WADO-RS: a {level}'s thumbnail (its middle image's, JPEG)",
            response_model=None,
            responses={
                200: {
                    "description": "JPEG",
                    "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                },
                **errors,
            },
        )(fn)
    redirected = {
        307: {
            "description": "Frames that need a codec (decoded frames of a compressed instance, or JPEG Lossless SV1 "
            "of an instance stored otherwise): the same path under /api/v1/dicomweb/decoded",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
    }
    # The frames of one request go in one response (wado.MAX_RETRIEVE_BYTES, what Lambda carries).
    too_large = {
        400: {
            "model": ErrorBody,
            "description": "Malformed request; or response_too_large: the frames asked for hold more than one "
            "response carries (4.4 MB): ask for fewer per request, and for decoded frames ask for JPEG Lossless "
            "(transfer-syntax=1.2.840.10008.1.2.4.70), which the message names",
        }
    }
    app.get(
        DICOMWEB + "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        operation_id="wado_frames",
        summary="WADO-RS: frames as stored (byte ranges of the file, never decoded here)",
        response_model=None,
        responses={
            200: {"description": "One part per frame, in the order asked", "content": MULTIPART},
            **redirected,
            **errors,
            **too_large,
        },
    )(frames)
    app.get(
        DICOMWEB + "/decoded/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        operation_id="wado_frames_decoded",
        summary="WADO-RS: frames decoded to uncompressed pixel data or transcoded to JPEG Lossless SV1 "
        "(where wado_frames redirects)",
        response_model=None,
        responses={
            200: {
                "description": "One part per frame, in the order asked: Explicit VR Little Endian (decoded), or "
                "JPEG Lossless SV1 (transfer-syntax=1.2.840.10008.1.2.4.70, as application/octet-stream or "
                "image/jpeg)",
                "content": MULTIPART,
            },
            **error_responses(400, 401, 404, 406, 422, 503),
            **too_large,
        },
    )(frames)

    def rendered(
        study: StudyUID,
        series: SeriesUID,
        instance: InstanceUID,
        window: Annotated[str | None, Query(description="center,width[,linear|linear-exact|sigmoid]")] = None,
        viewport: Annotated[str | None, Query(description="vw,vh[,sx,sy,sw,sh]: the region, scaled to fit")] = None,
        quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG quality")] = None,
        accept: Annotated[str | None, Query(description="image/jpeg or image/png, over the Accept header")] = None,
        annotation: Annotated[str | None, Query(description="Ignored (Warning 299): nothing is burned in")] = None,
        accept_: AcceptHeader = None,
    ) -> Response:
        raise NotImplementedError

    def rendered_frame(
        study: StudyUID,
        series: SeriesUID,
        instance: InstanceUID,
        frames: Annotated[str, PathParam(pattern=r"^[0-9]{1,9}$", description="One frame number, from 1")],
        window: Annotated[str | None, Query(description="center,width[,linear|linear-exact|sigmoid]")] = None,
        viewport: Annotated[str | None, Query(description="vw,vh[,sx,sy,sw,sh]: the region, scaled to fit")] = None,
        quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG quality")] = None,
        accept_: AcceptHeader = None,
    ) -> Response:
        raise NotImplementedError

    picture = {
        200: {
            "description": "The picture (Warning 299 names ignored parameters)",
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/jpeg", "image/png")},
        },
        **error_responses(400, 401, 404, 406, 422, 503),
    }
    app.get(
        DICOMWEB + "/studies/{study}/series/{series}/instances/{instance}/rendered",
        operation_id="wado_instance_rendered",
        summary="WADO-RS: an instance rendered (its first frame), JPEG or PNG",
        response_model=None,
        responses=picture,
    )(rendered)
    app.get(
        DICOMWEB + "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
        operation_id="wado_frame_rendered",
        summary="WADO-RS: one frame rendered, JPEG or PNG",
        response_model=None,
        responses=picture,
    )(rendered_frame)
    app.get(
        DICOMWEB + "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}",
        operation_id="wado_bulkdata",
        summary="WADO-RS: a bulk data element (a BulkDataURI of the metadata)",
        response_model=None,
        responses={200: {"description": "The element's value", "content": MULTIPART}, **errors},
    )(bulkdata)
    return app


def build() -> dict[str, Any]:
    """The merged OpenAPI document, deterministic (sorted keys when written)."""
    import functions.upload.handler as upload

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": (
                "Upload CT scans (DICOM, PNG, JPEG), read their analysis and images. Errors are always "
                '{"error": {"code", "message"}}.'
            ),
        },
        "paths": {},
        "components": {
            "schemas": {},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from POST /api/v1/auth/sessions",
                },
                "signedUrl": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "sig",
                    "description": "Image URLs in scan JSON carry exp, kid and sig: valid without a token until exp",
                },
            },
        },
    }
    for app in (upload.app, scans_stub(), auth_stub(), images_stub(), dicomweb_stub()):
        part = get_openapi(title=TITLE, version=VERSION, routes=app.routes)
        for path, operations in part.get("paths", {}).items():
            document["paths"].setdefault(path, {}).update(operations)
        document["components"]["schemas"].update(part.get("components", {}).get("schemas", {}))
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            # FastAPI describes its own validation errors; ours are the one JSON error shape (shared.http).
            invalid = operation["responses"].get("422")
            if invalid and "HTTPValidationError" in json.dumps(invalid):
                invalid.update(description="A bad parameter", content={"application/json": {"schema": error_ref}})
            if (method, path) in PUBLIC_OPERATIONS:
                continue
            operation["security"] = [{"bearer": []}, {"signedUrl": []}] if path == IMAGE_PATH else [{"bearer": []}]
    for unused in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(unused, None)
    return document


def render(document: dict[str, Any]) -> str:
    """The document as written to openapi.json."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render(build())
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print("openapi.json is stale: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(document_paths(text))} paths)")
    return 0


def document_paths(text: str) -> list[str]:
    """The paths a rendered document holds."""
    return list(json.loads(text)["paths"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
