"""Find the body and the regions a threshold picks out, where a threshold means something: dense
regions at or above a HU threshold on CT, bright regions on PNG and JPEG (the image's own intensity
range), none on other modalities (a density threshold means nothing on an MR, a radiograph or an
ultrasound, and reads as a diagnosis on a page for clinicians)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import cc3d
import numpy as np
from numpy.typing import NDArray

from shared.imaging.pixels import DICOM_CONTENT_TYPE, Levels, Pixels, Window

# 3: results.regions says what the findings are; other DICOM than CT in HU has none, PNG and JPEG
# findings are "bright region N". Results stored before keep their version (the web derives the kind).
ANALYSIS_VERSION = 3
HU_METHOD = "hu-body+hu-dense"
INTENSITY_METHOD = "otsu-body+otsu-dense"
BODY_ONLY_METHOD = "otsu-body"
BODY_HU = -500.0
MIN_AREA_MM2 = 10.0
MIN_AREA_FLOOR_PX = 16
# The intensity scale runs from the image's own dark to bright level, ignoring the extreme 0.5 % either side.
ROBUST_PERCENTILES = (0.5, 99.5)

_MIN_AREA_FRACTION = 0.0002
# A dense split is only a finding when its two classes differ by this much of the intensity scale.
_MIN_DENSE_CONTRAST = 0.15
# Counting a few labels one by one beats a bincount over the whole label image.
_MAX_LABELS_COUNTED_SINGLY = 8

Mask = NDArray[np.bool_]
Grey = NDArray[np.uint8]
# What the findings of an image are: "dense" (CT in HU), "bright" (PNG, JPEG) or "none" (other DICOM).
RegionKind = Literal["dense", "bright", "none"]
_REGION_LABELS: dict[RegionKind, str | None] = {"dense": "Dense regions", "bright": "Bright regions", "none": None}
# The web app words older results (without results.regions) the same way: web/js/findings.js.
_NO_THRESHOLD_MEANING = "a density threshold means nothing on this kind of image"


@dataclass(frozen=True)
class Histogram:
    """Exact counts of integer levels: counts[i] pixels have level offset + i."""

    counts: NDArray[np.intp]
    offset: int


@dataclass(frozen=True)
class Split:
    """An Otsu split of a histogram: levels up to last_lower are below it."""

    last_lower: int
    lower_mean: float
    upper_mean: float


@dataclass(frozen=True)
class Region:
    """A connected region: its box, area and the sums its statistics come from."""

    x: int
    y: int
    width: int
    height: int
    area: int
    level_sum: int
    level_max: int
    display_sum: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x, y, width, height)."""
        return self.x, self.y, self.width, self.height


@dataclass(frozen=True)
class Analysis:
    """The JSON results (without the window, which rendering chooses) and the findings to draw."""

    results: dict[str, Any]
    findings: list[Region]


def region_kind(pixels: Pixels) -> RegionKind:
    """What a threshold finds on this image: dense regions on CT in HU, bright regions on PNG and
    JPEG, nothing on any other DICOM image (CR, MR, US, colour, a CT without HU, ...)."""
    if pixels.unit == "HU":
        return "dense"
    if pixels.content_type != DICOM_CONTENT_TYPE:
        return "bright"
    return "none"


def no_regions_reason(pixels: Pixels) -> str:
    """Why a DICOM image has no regions, for a person: its modality and what a threshold means there."""
    modality = pixels.dicom.modality if pixels.dicom is not None else None
    # A CT reaches here only when its values are not HU (no rescale, or a rescale type other than HU).
    subject = "A CT without Hounsfield units" if modality == "CT" else modality or "This DICOM image"
    return f"{subject}: {_NO_THRESHOLD_MEANING}."


def level_histogram(levels: Levels) -> Histogram:
    """Exact histogram of 8- or 16-bit levels (any shape) with np.bincount: no float binning."""
    flat = levels.ravel()
    # Signed levels become offset binary so bincount sees non-negative indexes without a wider copy.
    if flat.dtype == np.int8:
        return Histogram(np.bincount(flat.view(np.uint8) ^ np.uint8(0x80)), -0x80)
    if flat.dtype == np.int16:
        return Histogram(np.bincount(flat.view(np.uint16) ^ np.uint16(0x8000)), -0x8000)
    return Histogram(np.bincount(flat), 0)


def percentile_level(histogram: Histogram, percent: float) -> int:
    """The smallest level with at least percent % of the pixels at or below it (numpy's 'inverted_cdf')."""
    cumulative = np.cumsum(histogram.counts)
    index = int(np.searchsorted(cumulative, percent / 100 * int(cumulative[-1]), side="left"))
    return histogram.offset + min(index, len(cumulative) - 1)


def intensity_range(histogram: Histogram, *, display_ready: bool) -> tuple[int, int]:
    """The levels that map to 0 and 1 on the intensity scale: 0-255 for display-ready 8-bit, else robust."""
    if display_ready:
        return 0, 255
    low = percentile_level(histogram, ROBUST_PERCENTILES[0])
    high = percentile_level(histogram, ROBUST_PERCENTILES[1])
    return low, max(high, low + 1)


def otsu_split(histogram: Histogram) -> Split | None:
    """Otsu's threshold on an exact level histogram, or None when fewer than two levels occur."""
    occupied = np.flatnonzero(histogram.counts)
    if occupied.size < 2:
        return None
    # Only occupied levels can end the lower class; empty ones between them leave every sum unchanged.
    counts = histogram.counts[occupied]
    total = int(counts.sum())
    # Levels relative to the first occupied one keep the sums small.
    levels = (occupied - occupied[0]).astype(np.float64)
    count_below = np.cumsum(counts)[:-1]
    # Integer counts keep both class weights exact, so neither is ever zero.
    weight_below = count_below / total
    weight_above = (total - count_below) / total
    sum_below = np.cumsum(counts * levels)[:-1] / total
    total_mean = float(np.dot(counts, levels)) / total
    # Between-class variance in its normalised form (mu_T w - mu)^2 / (w (1 - w)): no large products.
    spread = total_mean * weight_below - sum_below
    between_variance = spread * spread / (weight_below * weight_above)
    # argmax takes the first of equal maxima, so the split sits just above the lower class: deterministic.
    best = int(np.argmax(between_variance))
    below, weight, weight_up = float(sum_below[best]), float(weight_below[best]), float(weight_above[best])
    base = histogram.offset + int(occupied[0])
    return Split(
        last_lower=histogram.offset + int(occupied[best]),
        lower_mean=base + below / weight,
        upper_mean=base + (total_mean - below) / weight_up,
    )


def first_level_at_or_above(value: float, *, slope: float, intercept: float, strict: bool = False) -> int:
    """The smallest integer level whose value (level * slope + intercept, slope > 0) is >= value (> if strict)."""

    def passes(level: int) -> bool:
        level_value = level * slope + intercept
        return level_value > value if strict else level_value >= value

    level = math.ceil((value - intercept) / slope)
    # Floating point may put the quotient a hair either side of an exact level; a step or two settles it.
    for _ in range(4):
        if not passes(level):
            level += 1
        elif passes(level - 1):
            level -= 1
    return level


def levels_at_or_above(levels: Levels, level: int) -> Mask:
    """levels >= level, for a level that may lie outside the array's integer type."""
    info = np.iinfo(levels.dtype)
    if level <= info.min:
        return np.ones(levels.shape, dtype=np.bool_)
    if level > info.max:
        return np.zeros(levels.shape, dtype=np.bool_)
    result: Mask = levels >= level
    return result


def largest_component(mask: Mask) -> Mask:
    """The largest 8-connected region of mask; ties go to the first in raster order."""
    labels, count = cc3d.connected_components(mask, connectivity=8, return_N=True)
    if count <= 1:
        return mask
    if count <= _MAX_LABELS_COUNTED_SINGLY:
        sizes = [np.count_nonzero(labels == label) for label in range(1, count + 1)]
        largest = int(np.argmax(sizes)) + 1
    else:
        largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    result: Mask = labels == largest
    return result


def fill_holes(mask: Mask) -> None:
    """Fill, in place, every background region that does not reach the border of the mask's bounding box."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return
    columns = np.flatnonzero(mask.any(axis=0))
    # Outside the box is all background, so a region touching the box's edge reaches the image's outside.
    inside = mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    # A 4-connected background is the topological dual of an 8-connected body: a gap the body closes
    # only diagonally is still enclosed.
    background, count = cc3d.connected_components(~inside, connectivity=4, return_N=True)
    if count == 0:
        return
    outside = np.zeros(count + 1, dtype=np.bool_)
    for edge in (background[0, :], background[-1, :], background[:, 0], background[:, -1]):
        outside[edge] = True
    if outside[1:].all():
        return
    outside[0] = True  # label 0 is the body itself
    inside |= ~np.take(outside, background)


def find_body(mask: Mask) -> Mask:
    """The body: the largest region of mask with its holes (air inside it) filled."""
    body = largest_component(mask)
    if body is mask:
        body = mask.copy()
    fill_holes(body)
    return body


def describe_mask(mask: Mask, levels: Levels, display: Grey) -> Region:
    """Box, area and sums of one non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    inside = levels[mask]
    return Region(
        x=int(columns[0]),
        y=int(rows[0]),
        width=int(columns[-1] - columns[0] + 1),
        height=int(rows[-1] - rows[0] + 1),
        area=int(inside.size),
        level_sum=int(inside.sum(dtype=np.int64)),
        level_max=int(inside.max()),
        display_sum=int(display[mask].sum(dtype=np.int64)),
    )


def find_regions(mask: Mask, levels: Levels, display: Grey, *, min_area: int) -> list[Region]:
    """The 8-connected regions of mask with at least min_area pixels, top to bottom, left to right."""
    labels, count = cc3d.connected_components(mask, connectivity=8, return_N=True)
    if count == 0:
        return []
    width = mask.shape[1]
    # Only the mask's own pixels are visited: a few thousand, not the whole image.
    pixels = np.flatnonzero(mask)
    pixel_labels = np.take(labels.ravel(), pixels)
    areas = np.bincount(pixel_labels, minlength=count + 1)
    kept = np.flatnonzero(areas[1:] >= min_area) + 1
    if kept.size == 0:
        return []
    # A stable sort keeps raster order inside each label: its first pixel is its top row, its last the bottom.
    order = np.argsort(pixel_labels, kind="stable")
    pixels = pixels[order]
    starts = np.concatenate(([0], np.cumsum(areas[1:])[:-1]))
    rows, columns = np.divmod(pixels, width)
    values = np.take(levels.ravel(), pixels).astype(np.int64)
    shades = np.take(display.ravel(), pixels).astype(np.int64)
    left = np.minimum.reduceat(columns, starts)
    right = np.maximum.reduceat(columns, starts)
    sums = np.add.reduceat(values, starts)
    maxima = np.maximum.reduceat(values, starts)
    shade_sums = np.add.reduceat(shades, starts)
    regions = []
    for label in kept:
        index = label - 1
        first, last = starts[index], starts[index] + areas[label] - 1
        regions.append(
            Region(
                x=int(left[index]),
                y=int(rows[first]),
                width=int(right[index] - left[index] + 1),
                height=int(rows[last] - rows[first] + 1),
                area=int(areas[label]),
                level_sum=int(sums[index]),
                level_max=int(maxima[index]),
                display_sum=int(shade_sums[index]),
            )
        )
    regions.sort(key=lambda region: (region.y, region.x, -region.area))
    return regions


def analyze_hu(pixels: Pixels, display: Grey, *, window: Window, dense_hu_threshold: float) -> Analysis:
    """CT in HU: body above -500 HU (largest region, holes filled), findings at or above the dense threshold."""
    slope, intercept = pixels.slope, pixels.intercept
    body_level = first_level_at_or_above(BODY_HU, slope=slope, intercept=intercept, strict=True)
    dense_level = first_level_at_or_above(dense_hu_threshold, slope=slope, intercept=intercept)
    body_mask = find_body(levels_at_or_above(pixels.levels, body_level))
    body = describe_mask(body_mask, pixels.levels, display) if body_mask.any() else None
    min_area = MIN_AREA_FLOOR_PX
    if pixels.spacing_mm is not None:
        min_area = max(min_area, math.ceil(MIN_AREA_MM2 / (pixels.spacing_mm[0] * pixels.spacing_mm[1])))
    findings: list[Region] = []
    if body is not None:
        dense_mask = body_mask & levels_at_or_above(pixels.levels, dense_level)
        findings = find_regions(dense_mask, pixels.levels, display, min_area=min_area)
    analysis = {
        "method": HU_METHOD,
        "version": ANALYSIS_VERSION,
        "unit": "HU",
        "bodyThreshold": BODY_HU,
        "denseThreshold": float(dense_hu_threshold),
        "minAreaPx": min_area,
        "minAreaMm2": MIN_AREA_MM2,
        "bitDepth": pixels.bit_depth,
        "window": window.to_json(),
    }
    regions = {
        "kind": "dense",
        "label": _REGION_LABELS["dense"],
        "threshold": {"value": float(dense_hu_threshold), "unit": "HU"},
        "reason": None,
    }
    return Analysis(_results(findings, body, analysis, pixels, kind="dense", regions=regions), findings)


def analyze_intensity(
    pixels: Pixels,
    display: Grey,
    *,
    window: Window,
    histogram: Histogram,
    scale: tuple[int, int],
    kind: Literal["bright", "none"],
) -> Analysis:
    """Everything but CT in HU: Otsu splits on exact level histograms, judged on the image's own
    intensity scale; the body always, bright regions inside it only when kind is "bright"."""
    low, high = scale
    span = high - low
    height, width = pixels.levels.shape
    min_area = max(MIN_AREA_FLOOR_PX, round(_MIN_AREA_FRACTION * width * height))
    body_split = otsu_split(histogram)
    body: Region | None = None
    dense_split: Split | None = None
    findings: list[Region] = []
    if body_split is not None:
        above_body = pixels.levels > body_split.last_lower
        # MONOCHROME1 shows low values white: the body is the side below the split, air above it.
        body_mask = find_body(~above_body if pixels.monochrome1 else above_body)
        body = describe_mask(body_mask, pixels.levels, display)
        if kind == "bright":
            dense_split = _bright_split(pixels.levels[body_mask & above_body], span=span)
        if dense_split is not None:
            dense_mask = body_mask & (pixels.levels > dense_split.last_lower)
            findings = find_regions(dense_mask, pixels.levels, display, min_area=min_area)

    def on_scale(split: Split | None) -> float | None:
        # The threshold sits halfway between the last level below it and the first above.
        return None if split is None else round((split.last_lower + 0.5 - low) / span, 4)

    analysis = {
        "method": INTENSITY_METHOD if kind == "bright" else BODY_ONLY_METHOD,
        "version": ANALYSIS_VERSION,
        "unit": "intensity",
        "bodyThreshold": on_scale(body_split),
        "denseThreshold": on_scale(dense_split),
        "minAreaPx": min_area,
        "bitDepth": pixels.bit_depth,
        "window": window.to_json(),
    }
    regions = {
        "kind": kind,
        "label": _REGION_LABELS[kind],
        # The split is on the image's own scale (analysis.denseThreshold), not in a unit a person reads.
        "threshold": None,
        "reason": None if kind == "bright" else no_regions_reason(pixels),
    }
    return Analysis(_results(findings, body, analysis, pixels, kind=kind, regions=regions), findings)


def _bright_split(tissue: Levels, *, span: int) -> Split | None:
    # Only the body's tissue: filled holes (air inside the body) counted would let the split separate
    # air from soft tissue instead of soft tissue from what is brighter.
    split = otsu_split(level_histogram(tissue))
    if split is not None and (split.upper_mean - split.lower_mean) / span < _MIN_DENSE_CONTRAST:
        return None
    return split


def _results(
    findings: list[Region],
    body: Region | None,
    analysis: dict[str, Any],
    pixels: Pixels,
    *,
    kind: RegionKind,
    regions: dict[str, Any],
) -> dict[str, Any]:
    hu = kind == "dense"

    def region_json(region: Region) -> dict[str, Any]:
        result: dict[str, Any] = {
            "bbox": {"x": region.x, "y": region.y, "width": region.width, "height": region.height},
            "areaPx": region.area,
            "areaMm2": None,
            # How bright the region shows in the (not inverted) rendering: 0 black, 1 white.
            "meanIntensity": round(region.display_sum / region.area / 255, 4),
        }
        if pixels.spacing_mm is not None:
            result["areaMm2"] = round(region.area * pixels.spacing_mm[0] * pixels.spacing_mm[1], 2)
        if hu:
            result["meanHu"] = round(region.level_sum / region.area * pixels.slope + pixels.intercept, 1)
            result["maxHu"] = round(region.level_max * pixels.slope + pixels.intercept, 1)
        return result

    return {
        "findings": [
            {"id": number, "label": f"{kind} region {number}", **region_json(region)}
            for number, region in enumerate(findings, start=1)
        ],
        "regions": regions,
        "body": None if body is None else region_json(body),
        "analysis": analysis,
    }
