"""Decode an uploaded scan (PNG, JPEG or DICOM), find the body and its dense regions, and render its images.

    pixels      what every decoder produces: Pixels and its Window
    decode      sniff the format and hand the bytes to its decoder
    pillow      PNG and JPEG (Pillow)
    dicom       DICOM (pydicom and its codecs; imported only for DICOM uploads), dicom_jpeg beside it
    integrity   structural checks that refuse damaged files before a decoder sees them
    analysis    body and dense regions, in HU when the unit is HU
    render      windowing and the JPEG renderings

Bytes in, bytes out: nothing here touches the database, S3 or HTTP. Only the upload function
imports this package (numpy, Pillow, pydicom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.imaging import analysis, render
from shared.imaging.decode import decode_upload
from shared.imaging.pillow import ACCEPTED_FORMATS
from shared.imaging.pixels import DICOM_CONTENT_TYPE, DicomInfo, Pixels, Window
from shared.imaging.render import THUMBNAIL_MAX_SIDE

__all__ = [
    "ACCEPTED_FORMATS",
    "DICOM_CONTENT_TYPE",
    "THUMBNAIL_MAX_SIDE",
    "AnalyzedScan",
    "DicomInfo",
    "analyze_upload",
]


@dataclass(frozen=True)
class AnalyzedScan:
    """An accepted upload: its detected type and size, the analysis and the three renderings."""

    content_type: str
    width: int
    height: int
    results: dict[str, Any]
    dicom: DicomInfo | None
    annotated_jpeg: bytes
    thumbnail_jpeg: bytes
    preview_jpeg: bytes


def analyze_upload(data: bytes, *, max_pixels: int = 40_000_000, dense_hu_threshold: float = 300.0) -> AnalyzedScan:
    """Decode a PNG, JPEG or DICOM upload, find its dense regions, and render preview, annotated and thumbnail."""
    pixels = decode_upload(data, max_pixels=max_pixels)
    if pixels.unit == "HU":
        window = pixels.file_window or render.DEFAULT_CT_WINDOW
        grey = _grey(pixels, window)
        result = analysis.analyze_hu(pixels, grey, window=window, dense_hu_threshold=dense_hu_threshold)
    else:
        histogram = analysis.level_histogram(pixels.levels)
        low, high = analysis.intensity_range(histogram, display_ready=pixels.display_ready)
        window = pixels.file_window or render.auto_window(
            low * pixels.slope + pixels.intercept, high * pixels.slope + pixels.intercept
        )
        grey = _grey(pixels, window)
        result = analysis.analyze_intensity(pixels, grey, window=window, histogram=histogram, scale=(low, high))
    preview = render.preview_image(grey, pixels.colour, invert=pixels.monochrome1)
    del grey
    boxes = [region.box for region in result.findings]
    return AnalyzedScan(
        content_type=pixels.content_type,
        width=pixels.width,
        height=pixels.height,
        results=result.results,
        dicom=pixels.dicom,
        annotated_jpeg=render.render_annotated(preview, boxes),
        thumbnail_jpeg=render.render_thumbnail(preview),
        preview_jpeg=render.render_preview(preview),
    )


def _grey(pixels: Pixels, window: Window) -> render.Grey:
    return render.grey_display(pixels.levels, slope=pixels.slope, intercept=pixels.intercept, window=window)
