"""The API's JSON shapes as Pydantic models: for the OpenAPI document (and so for clients and the fuzzer).

The handlers build their JSON with plain dicts (shared.scans) and FastAPI does not re-validate it
(`response_model=None`): these models describe it, tests/test_openapi.py checks that they agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    # Python names in snake_case, the API's JSON (and so the OpenAPI document) in camelCase.
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)


class ErrorDetail(_Model):
    """What went wrong: a stable code and a message for people."""

    code: str = Field(examples=["scan_not_found"])
    message: str


class ErrorBody(_Model):
    """Every error: {"error": {"code", "message"}}."""

    error: ErrorDetail


class Bbox(_Model):
    """A bounding box in pixels, top-left origin."""

    x: int
    y: int
    width: int
    height: int


class Region(_Model):
    """A region of the image: its box, area and statistics (HU ones for CT in HU only)."""

    bbox: Bbox
    area_px: int
    area_mm2: float | None = None
    mean_intensity: float
    mean_hu: float | None = None
    max_hu: float | None = None


class Finding(Region):
    """One region a threshold picked out, numbered as on the annotated image: on CT a dense region
    (HU at or above the threshold: bone, calcification, contrast), on PNG and JPEG a bright region.
    A measurement, not a diagnosis."""

    id: int = Field(description="1, 2, ... top to bottom, left to right: the number on the annotated image")
    label: str = Field(examples=["dense region 1", "bright region 1"], description="'<kind> region <id>'")


class RegionThreshold(_Model):
    """The threshold the regions are at or above, in the unit a person reads."""

    value: float = Field(examples=[300.0], description="DENSE_HU_THRESHOLD when the scan was analyzed")
    unit: Literal["HU"]


class Regions(_Model):
    """What the regions are: dense regions at or above a HU threshold on CT, bright regions on
    PNG/JPEG, none on other modalities, with the reason."""

    kind: Literal["dense", "bright", "none"] = Field(
        description="dense: CT in Hounsfield units, regions at or above `threshold`; bright: PNG or JPEG, "
        "regions brighter than the rest of the body on the image's own scale (analysis.denseThreshold); "
        "none: any other DICOM image (CR, DX, MG, MR, US, PT, NM, XA, colour, a CT without HU), where a "
        "density threshold means nothing: `findings` is empty"
    )
    label: Literal["Dense regions", "Bright regions"] | None = Field(
        description="the words to show the findings under; null when kind is none"
    )
    threshold: RegionThreshold | None = Field(description="the HU threshold on CT; null for bright and none")
    reason: str | None = Field(
        examples=["MR: a density threshold means nothing on this kind of image."],
        description="why there are no regions, for a person (kind none only; null otherwise)",
    )


class Window(_Model):
    """The VOI window the rendering used, and where it came from."""

    center: float
    width: float
    function: Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"] | None = None
    source: Literal["file", "default-ct", "auto"]


class Analysis(_Model):
    """How the body and the findings were found: method, version, thresholds, window. Version 3 on:
    hu-body+hu-dense (CT in HU), otsu-body+otsu-dense (PNG, JPEG), otsu-body (other DICOM: no regions,
    denseThreshold null)."""

    method: str
    version: int
    unit: Literal["HU", "intensity"] | None = None
    body_threshold: float | None
    dense_threshold: float | None
    min_area_px: int
    min_area_mm2: float | None = None
    bit_depth: int
    window: Window | None = None


class ImageUrls(_Model):
    """Absolute URLs of a scan's four images (signed where the service signs them)."""

    image_url: str
    preview_url: str
    annotated_image_url: str
    thumbnail_url: str


class Results(ImageUrls):
    """The analysis of a scan and its image URLs."""

    findings: list[Finding] = Field(
        description="the regions results.regions names, numbered as on the annotated image: dense regions "
        "(HU at or above the threshold) on CT, bright regions on PNG/JPEG, none (an empty list) on other "
        "modalities. A density threshold, not a diagnosis"
    )
    regions: Regions | None = Field(
        default=None,
        description="what the findings are (dense, bright or none, the threshold, the reason); absent on "
        "scans analyzed before analysis version 3",
    )
    body: Region | None = Field(description="the body (largest region above the background, holes filled)")
    analysis: Analysis


class Dicom(_Model):
    """The PHI-free DICOM index of a scan."""

    modality: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    instance_number: int | None
    slice_position: float | None
    pixel_spacing_mm: list[float] | None
    slice_thickness_mm: float | None
    rows: int
    columns: int
    frame_count: int
    frame_analyzed: int
    transfer_syntax_uid: str
    photometric_interpretation: str
    bits_stored: int


class ScanMetadata(_Model):
    """What every scan shows: identity, file, geometry, hash, time, DICOM index."""

    scan_id: str
    filename: str
    content_type: Literal["image/png", "image/jpeg", "application/dicom"]
    file_size: int = Field(ge=1, description="bytes of the original file")
    width: int
    height: int
    file_hash: str = Field(pattern="^[0-9a-f]{64}$")
    created_at: str
    dicom: Dicom | None


class ScanPublic(ScanMetadata):
    """One scan with its analysis."""

    results: Results


class UploadResult(ScanPublic):
    """An upload's scan; duplicate when this owner had already uploaded the same bytes."""

    duplicate: bool


class UploadCreate(BaseModel):
    """A presigned upload to ask for: the file's name and how many bytes the client will send."""

    # A request body: built as the class is defined, not deferred (shared/http/deferred_models.py).
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, defer_build=False)

    filename: str = Field(min_length=1, max_length=1024, description="shown as the scan's filename")
    size: int = Field(
        ge=1,
        strict=True,
        description="bytes the client will post; at most MAX_DIRECT_UPLOAD_BYTES (413 upload_too_large)",
    )
    content_type: str | None = Field(
        default=None,
        max_length=127,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.+-]*/[A-Za-z0-9][A-Za-z0-9.+-]*$",
        description="the staged object's Content-Type (bound in the policy); the scan's is detected from the bytes",
    )


class DirectUpload(_Model):
    """A presigned S3 POST: post `fields` and then `file` as multipart/form-data to `url`, then complete."""

    upload_id: str = Field(pattern="^upl_[A-Za-z0-9_-]{16,}$")
    url: str
    fields: dict[str, str] = Field(description="form fields to send, in any order, before the file field")
    expires_at: str = Field(description="the policy's expiry (ISO 8601): post and complete before it")
    max_bytes: int = Field(ge=1, description="the most bytes the policy lets through: the declared size")


class ScanSummary(ScanMetadata, ImageUrls):
    """A scan as a list item."""

    findings_count: int = Field(description="how many findings (dense or bright regions) it has: 0 when none")


class ScanPage(_Model):
    """One page of a listing; pass nextCursor back as ?cursor= for the next."""

    items: list[ScanSummary]
    next_cursor: str | None


class SessionCreated(_Model):
    """A bearer token and when it expires."""

    token: str
    expires_at: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries with the JSON error body for these statuses."""
    described = {
        400: "Malformed request",
        401: "No, unknown or expired bearer token",
        403: "Invalid or expired signed URL",
        404: "No such scan (or study, series, instance) for this owner",
        409: "The request does not fit the state of the resource or of this deployment",
        413: "File over the upload limit",
        415: "Not multipart/form-data",
        406: "Nothing this resource can be sent as is acceptable (the Accept header)",
        416: "Range not satisfiable",
        422: "Not an image we accept, or a bad parameter",
        429: "Too many failed logins for this username or from this address (code too_many_attempts); "
        "retry after Retry-After seconds",
        503: "Database unavailable; retry after Retry-After seconds",
    }
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": described[status]} for status in statuses
    }
    if 429 in responses:
        responses[429]["headers"] = {
            "Retry-After": {
                "description": "Seconds (at least 1) until the window lets the next attempt through",
                "schema": {"type": "integer"},
            }
        }
    return responses
