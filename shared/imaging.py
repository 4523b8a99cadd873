"""Decode an uploaded scan, find the body and its dense regions, and render the annotated image and thumbnail."""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from shared.errors import InvalidImage

ACCEPTED_FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg"}
THUMBNAIL_MAX_SIDE = 256

ANALYSIS_METHOD = "otsu-body+otsu-dense"
ANALYSIS_VERSION = 1

# Finer than 8-bit so 16-bit scans that use a narrow part of their range still get a precise split.
_OTSU_BINS = 1024
_MIN_DENSE_CONTRAST = 0.15
_MIN_AREA_FRACTION = 0.0002
_MIN_AREA_FLOOR_PX = 16

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I"})
_OUTLINE_COLOUR = (255, 64, 64)
_OUTLINE_WIDTH = 2
_LABEL_BACKGROUND = (0, 0, 0)
_ANNOTATED_QUALITY = 90
_THUMBNAIL_QUALITY = 85

_FloatImage = NDArray[np.float32]
_Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class AnalyzedScan:
    """An accepted upload: its detected type and size, the analysis and the two renderings."""

    content_type: str
    width: int
    height: int
    results: dict[str, Any]
    annotated_jpeg: bytes
    thumbnail_jpeg: bytes


@dataclass(frozen=True)
class _Region:
    x: int
    y: int
    width: int
    height: int
    area: int
    mean: float


@dataclass(frozen=True)
class _Split:
    threshold: float
    lower_mean: float
    upper_mean: float


def analyze_scan(data: bytes, *, max_pixels: int = 40_000_000) -> AnalyzedScan:
    """Decode a PNG or JPEG scan, find its dense regions, and render the annotated image and thumbnail."""
    image = _decode_image(data, max_pixels=max_pixels)
    content_type = _detect_content_type(image)
    width, height = image.size
    values, bit_depth, display = _read_pixels(image)
    del image
    results, findings = _analyze_pixels(values, bit_depth=bit_depth)
    # The float image is the largest buffer; drop it before the RGB canvas is made.
    del values
    annotated = _render_annotated(display, findings)
    thumbnail = _render_thumbnail(display)
    return AnalyzedScan(
        content_type=content_type,
        width=width,
        height=height,
        results=results,
        annotated_jpeg=annotated,
        thumbnail_jpeg=thumbnail,
    )


def _too_large(max_pixels: int) -> InvalidImage:
    return InvalidImage(f"The image is too large: at most {max_pixels:,} pixels (width x height) are accepted.")


def _decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("The uploaded file is empty.")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; for uploads it is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            width, height = image.size
            # The header is read but no pixels yet: refuse bombs before they cost memory.
            if width * height > max_pixels:
                raise _too_large(max_pixels)
            image.load()
    except InvalidImage:
        raise
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _too_large(max_pixels) from error
    except UnidentifiedImageError as error:
        raise InvalidImage("The file is not a PNG or JPEG image.") from error
    except Exception as error:
        # Pillow's decoders raise a wide, undocumented range of errors on hostile data; all mean the same.
        raise InvalidImage("The image data is damaged or incomplete.") from error
    return image


def _detect_content_type(image: Image.Image) -> str:
    # Pillow reports multi-picture JPEGs (camera MPO files) as their own format; they are still JPEG.
    detected = "JPEG" if image.format == "MPO" else image.format
    content_type = ACCEPTED_FORMATS.get(detected or "")
    if content_type is None:
        raise InvalidImage("The file is not a PNG or JPEG image.")
    return content_type


def _read_pixels(image: Image.Image) -> tuple[_FloatImage, int, Image.Image]:
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32)
        if image.mode == "I":
            # Mode I is 32-bit signed; from a PNG it holds 16-bit samples, anything beyond is out of range.
            np.clip(values, 0, 65535, out=values)
        values /= 65535
        return values, 16, _window_to_8bit(values)
    gray = image if image.mode == "L" else _convert_to_gray(image)
    values = np.asarray(gray, dtype=np.float32)
    values /= 255
    return values, 8, gray


def _convert_to_gray(image: Image.Image) -> Image.Image:
    try:
        # ITU-R 601 luminance for colour; palettes and alpha are resolved by Pillow.
        return image.convert("L")
    except (ValueError, OSError) as error:
        raise InvalidImage(f"Images with pixel format {image.mode} are not supported.") from error


def _window_to_8bit(values: _FloatImage) -> Image.Image:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return Image.new("L", (values.shape[1], values.shape[0]), 0)
    scaled = values - np.float32(low)
    scaled *= np.float32(255 / (high - low))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return Image.fromarray(scaled.astype(np.uint8))


def _otsu_split(samples: _FloatImage) -> _Split | None:
    if samples.size == 0:
        return None
    low, high = float(samples.min()), float(samples.max())
    if high <= low:
        return None
    # Spanning exactly [min, max] puts data in the first and last bins, so no class below is ever empty.
    counts, edges = np.histogram(samples, bins=_OTSU_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_below = np.cumsum(counts, dtype=np.float64)
    sum_below = np.cumsum(counts * centres)
    total_weight, total_sum = weight_below[-1], sum_below[-1]
    weight_below, sum_below = weight_below[:-1], sum_below[:-1]
    weight_above = total_weight - weight_below
    mean_below = sum_below / weight_below
    mean_above = (total_sum - sum_below) / weight_above
    between_variance = weight_below * weight_above * (mean_above - mean_below) ** 2
    # argmax takes the first of equal maxima, so the split sits just above the lower class: deterministic.
    best = int(np.argmax(between_variance))
    return _Split(
        threshold=float(edges[best + 1]),
        lower_mean=float(mean_below[best]),
        upper_mean=float(mean_above[best]),
    )


def _largest_component(mask: _Mask) -> _Mask:
    labels, count = cc3d.connected_components(mask, connectivity=8, return_N=True)
    if count == 0:
        return mask
    sizes = cc3d.statistics(labels, no_slice_conversion=True)["voxel_counts"]
    # Ties go to the first component in raster order, which keeps the choice deterministic.
    largest = int(np.argmax(sizes[1:])) + 1
    result: _Mask = labels == largest
    return result


def _fill_holes(mask: _Mask) -> None:
    # A 4-connected background is the topological dual of an 8-connected body: a gap the body closes
    # only diagonally is still enclosed.
    background, count = cc3d.connected_components(~mask, connectivity=4, return_N=True)
    if count == 0:
        return
    touches_border = np.zeros(count + 1, dtype=np.bool_)
    for edge in (background[0, :], background[-1, :], background[:, 0], background[:, -1]):
        touches_border[edge] = True
    # Label 0 is the body itself.
    touches_border[0] = True
    mask |= ~touches_border[background]


def _find_body(values: _FloatImage, threshold: float) -> _Mask:
    body = _largest_component(values >= threshold)
    _fill_holes(body)
    return body


def _describe_mask(values: _FloatImage, mask: _Mask) -> _Region:
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    return _Region(
        x=int(columns[0]),
        y=int(rows[0]),
        width=int(columns[-1] - columns[0] + 1),
        height=int(rows[-1] - rows[0] + 1),
        area=int(np.count_nonzero(mask)),
        mean=float(values[mask].mean(dtype=np.float64)),
    )


def _find_dense_regions(values: _FloatImage, dense: _Mask, *, min_area: int) -> list[_Region]:
    labels, count = cc3d.connected_components(dense, connectivity=8, return_N=True)
    if count == 0:
        return []
    stats = cc3d.statistics(labels, no_slice_conversion=True)
    areas = stats["voxel_counts"]
    # Rows are (first row, last row, first column, last column) per label.
    boxes = stats["bounding_boxes"]
    sums = np.bincount(labels[dense], weights=values[dense], minlength=count + 1)
    regions = [
        _Region(
            x=int(boxes[label][2]),
            y=int(boxes[label][0]),
            width=int(boxes[label][3] - boxes[label][2] + 1),
            height=int(boxes[label][1] - boxes[label][0] + 1),
            area=int(areas[label]),
            mean=float(sums[label] / areas[label]),
        )
        for label in np.flatnonzero(areas[1:] >= min_area) + 1
    ]
    regions.sort(key=lambda region: (region.y, region.x, -region.area))
    return regions


def _analyze_pixels(values: _FloatImage, *, bit_depth: int) -> tuple[dict[str, Any], list[_Region]]:
    height, width = values.shape
    min_area = max(_MIN_AREA_FLOOR_PX, round(_MIN_AREA_FRACTION * width * height))
    body_split = _otsu_split(values)
    body: _Region | None = None
    dense_split: _Split | None = None
    findings: list[_Region] = []
    if body_split is not None:
        body_mask = _find_body(values, body_split.threshold)
        body = _describe_mask(values, body_mask)
        # Filled holes (air inside the body) are not tissue; counting them would let the dense split
        # separate air from soft tissue instead of soft tissue from dense tissue.
        tissue = values[body_mask & (values >= body_split.threshold)]
        dense_split = _otsu_split(tissue)
        del tissue
        if dense_split is not None and dense_split.upper_mean - dense_split.lower_mean < _MIN_DENSE_CONTRAST:
            dense_split = None
        if dense_split is not None:
            dense_mask = body_mask & (values >= dense_split.threshold)
            findings = _find_dense_regions(values, dense_mask, min_area=min_area)
    results: dict[str, Any] = {
        "findings": [
            {"id": number, "label": f"dense region {number}", **_region_json(region)}
            for number, region in enumerate(findings, start=1)
        ],
        "body": None if body is None else _region_json(body),
        "analysis": {
            "method": ANALYSIS_METHOD,
            "version": ANALYSIS_VERSION,
            "bodyThreshold": None if body_split is None else round(body_split.threshold, 4),
            "denseThreshold": None if dense_split is None else round(dense_split.threshold, 4),
            "minAreaPx": min_area,
            "bitDepth": bit_depth,
        },
    }
    return results, findings


def _region_json(region: _Region) -> dict[str, Any]:
    return {
        "bbox": {"x": region.x, "y": region.y, "width": region.width, "height": region.height},
        "areaPx": region.area,
        "meanIntensity": round(region.mean, 4),
    }


@functools.lru_cache(maxsize=8)
def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _render_annotated(display: Image.Image, findings: list[_Region]) -> bytes:
    canvas = display.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    # Labels stay legible on large scans without swamping small ones.
    font = _label_font(max(10, min(canvas.size) // 40))
    for number, region in enumerate(findings, start=1):
        # The outline sits outside the region so the dense pixels themselves stay visible.
        left, top = region.x - _OUTLINE_WIDTH, region.y - _OUTLINE_WIDTH
        right = region.x + region.width - 1 + _OUTLINE_WIDTH
        bottom = region.y + region.height - 1 + _OUTLINE_WIDTH
        draw.rectangle((left, top, right, bottom), outline=_OUTLINE_COLOUR, width=_OUTLINE_WIDTH)
        _draw_label(draw, canvas.size, str(number), font, box=(left, top))
    return _encode_jpeg(canvas, quality=_ANNOTATED_QUALITY)


def _draw_label(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    *,
    box: tuple[int, int],
) -> None:
    ink_left, ink_top, ink_right, ink_bottom = draw.textbbox((0, 0), text, font=font)
    label_width, label_height = ink_right - ink_left + 2, ink_bottom - ink_top + 2
    box_left, box_top = box
    x = max(0, min(box_left, size[0] - label_width))
    above = box_top - label_height
    # Inside the box, below its outline, when the box touches the top edge.
    y = above if above >= 0 else max(0, box_top + _OUTLINE_WIDTH)
    draw.rectangle((x, y, x + label_width - 1, y + label_height - 1), fill=_LABEL_BACKGROUND)
    draw.text((x + 1 - ink_left, y + 1 - ink_top), text, fill=_OUTLINE_COLOUR, font=font)


def _render_thumbnail(display: Image.Image) -> bytes:
    thumbnail = display.copy()
    thumbnail.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.LANCZOS)
    return _encode_jpeg(thumbnail, quality=_THUMBNAIL_QUALITY)


def _encode_jpeg(image: Image.Image, *, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()
