"""Decode an uploaded scan (PNG, JPEG or DICOM), find the body and the regions a threshold means something
on (dense on CT in HU, bright on PNG and JPEG, none on other DICOM), and render its images.

    pixels      what every decoder produces: Pixels and its Window
    decode      sniff the format and hand the bytes to its decoder
    pillow      PNG and JPEG (Pillow)
    dicom       DICOM (pydicom and its codecs; imported only for DICOM uploads), dicom_jpeg beside it
    integrity   structural checks that refuse damaged files before a decoder sees them
    analysis    body, and dense regions in HU on CT, bright regions on PNG and JPEG, none on other DICOM
    render      windowing and the JPEG renderings

Bytes in, bytes out: nothing here touches the database, S3 or HTTP. Only the upload function
imports this package (numpy, Pillow, pydicom).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.imaging import analysis, render
from shared.imaging.decode import decode_upload
from shared.imaging.pillow import ACCEPTED_FORMATS
from shared.imaging.pixels import DICOM_CONTENT_TYPE, DicomInfo, Pixels, Window, WindowFunction
from shared.imaging.render import THUMBNAIL_MAX_SIDE, ImageFormat, Viewport

__all__ = [
    "ACCEPTED_FORMATS",
    "DICOM_CONTENT_TYPE",
    "THUMBNAIL_MAX_SIDE",
    "AnalyzedScan",
    "DicomInfo",
    "ImageFormat",
    "Viewport",
    "Window",
    "WindowFunction",
    "analyze_upload",
    "decode_dicom_frames",
    "display_window",
    "encode_dicom_frames_lossless",
    "render_dicom_frame",
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
    """Decode a PNG, JPEG or DICOM upload, find its body and regions (results.regions says which kind),
    and render preview, annotated (the regions outlined) and thumbnail."""
    pixels = decode_upload(data, max_pixels=max_pixels)
    kind = analysis.region_kind(pixels)
    if kind == "dense":
        window = display_window(pixels)
        grey = _grey(pixels, window)
        result = analysis.analyze_hu(pixels, grey, window=window, dense_hu_threshold=dense_hu_threshold)
    else:
        histogram = analysis.level_histogram(pixels.levels)
        low, high = analysis.intensity_range(histogram, display_ready=pixels.display_ready)
        window = display_window(pixels, histogram=histogram)
        grey = _grey(pixels, window)
        result = analysis.analyze_intensity(
            pixels, grey, window=window, histogram=histogram, scale=(low, high), kind=kind
        )
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


def display_window(pixels: Pixels, *, histogram: analysis.Histogram | None = None) -> Window:
    """The window an image is shown with when nobody chose one: the file's own, else the soft-tissue
    CT window for Hounsfield units, else the image's own intensity range (of `histogram`, computed
    when not given)."""
    if pixels.file_window is not None:
        return pixels.file_window
    if pixels.unit == "HU":
        return render.DEFAULT_CT_WINDOW
    if histogram is None:
        histogram = analysis.level_histogram(pixels.levels)
    low, high = analysis.intensity_range(histogram, display_ready=pixels.display_ready)
    return render.auto_window(low * pixels.slope + pixels.intercept, high * pixels.slope + pixels.intercept)


def render_dicom_frame(
    data: bytes,
    *,
    frame_index: int,
    window: Window | None,
    viewport: Viewport | None,
    image_format: render.ImageFormat,
    quality: int | None,
    max_pixels: int = 40_000_000,
) -> bytes:
    """One frame of a stored DICOM file (0-based) as a JPEG or PNG a browser shows: windowed with
    `window` (grey images; the file's or the default one when None), inverted for MONOCHROME1, cut
    and scaled to `viewport`, without any text on it."""
    from shared.imaging import dicom  # pydicom: only DICOM pays its import

    pixels = dicom.decode_dicom(data, max_pixels=max_pixels, bare=False, frame_index=frame_index)
    grey = _grey(pixels, window or display_window(pixels))
    image = render.preview_image(grey, pixels.colour, invert=pixels.monochrome1)
    if viewport is not None:
        image = render.fit_viewport(image, viewport)
    return render.encode(image, image_format=image_format, quality=quality)


def decode_dicom_frames(data: bytes, *, frame_indices: Sequence[int], max_pixels: int = 40_000_000) -> list[bytes]:
    """These frames (0-based) of a stored DICOM file, decoded: uncompressed pixel data, one frame each."""
    from shared.imaging import dicom

    return dicom.decode_frame_values(data, frame_indices=frame_indices, max_pixels=max_pixels)


def encode_dicom_frames_lossless(
    data: bytes, *, frame_indices: Sequence[int], limit_bytes: int | None = None, max_pixels: int = 40_000_000
) -> list[bytes]:
    """These frames (0-based) of a stored DICOM file as JPEG Lossless SV1 bitstreams of their stored
    values, one frame each; stops early once they hold more than `limit_bytes`."""
    from shared.imaging import dicom

    return dicom.encode_frames_lossless(
        data, frame_indices=frame_indices, max_pixels=max_pixels, limit_bytes=limit_bytes
    )


def _grey(pixels: Pixels, window: Window) -> render.Grey:
    return render.grey_display(pixels.levels, slope=pixels.slope, intercept=pixels.intercept, window=window)
