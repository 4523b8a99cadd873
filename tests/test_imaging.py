"""shared.imaging on PNG and JPEG scans built in memory: known regions, every accepted encoding, hostile input.

DICOM and the HU analysis are tested in test_imaging_dicom.py.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file

from scripts.dev.phantom import ct_slice_dataset, dicom_bytes, stored_png16
from shared.core.errors import InvalidImage
from shared.imaging import ACCEPTED_FORMATS, THUMBNAIL_MAX_SIDE, AnalyzedScan, analyze_upload
from tests.images import randomly_damaged

Pixels = NDArray[np.float64]
Mask = NDArray[np.bool_]

SIZE = 512
BACKGROUND_LEVEL = 0.0
BODY_LEVEL = 0.3
DENSE_LEVEL = 0.9
# Uniform noise is bounded, so every threshold falls in a clean gap and the expected masks are exact.
NOISE = 0.02


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int

    def mask(self, shape: tuple[int, int]) -> Mask:
        result = np.zeros(shape, dtype=np.bool_)
        result[self.y : self.y + self.height, self.x : self.x + self.width] = True
        return result

    def as_json(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


RECTANGLE_A = Box(150, 180, 40, 30)
RECTANGLE_B = Box(300, 250, 60, 50)
DISC_CENTRE, DISC_RADIUS = (250, 350), 20
SPECK = Box(350, 150, 3, 3)  # 9 px, below the 52 px minimum area of a 512 x 512 scan


@dataclass(frozen=True)
class Phantom:
    """A normalised scan and what the analysis must report for it, in report order."""

    pixels: Pixels
    body: Mask
    regions: tuple[Mask, ...]


def ellipse_mask(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float]) -> Mask:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    result: Mask = ((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2 <= 1
    return result


def body_ellipse(width: int, height: int) -> Mask:
    return ellipse_mask((height, width), (width / 2, height / 2), (width * 0.39, height * 0.33))


def disc_mask(shape: tuple[int, int]) -> Mask:
    return ellipse_mask(shape, DISC_CENTRE, (DISC_RADIUS, DISC_RADIUS))


def paint(pixels: Pixels, mask: Mask, level: float, rng: np.random.Generator) -> None:
    pixels[mask] = level + rng.uniform(-NOISE, NOISE, int(mask.sum()))


def build_phantom(
    *,
    width: int = SIZE,
    height: int = SIZE,
    dense: tuple[Mask, ...] | None = None,
    speck: bool = True,
    holes: tuple[Mask, ...] = (),
    seed: int = 7,
) -> Phantom:
    """Dark background, an elliptical body at BODY_LEVEL, dense regions at DENSE_LEVEL, optional air holes."""
    shape = (height, width)
    rng = np.random.default_rng(seed)
    if dense is None:
        dense = (RECTANGLE_A.mask(shape), RECTANGLE_B.mask(shape), disc_mask(shape))
    pixels = BACKGROUND_LEVEL + rng.uniform(0, NOISE, shape)
    body = body_ellipse(width, height)
    paint(pixels, body, BODY_LEVEL, rng)
    for hole in holes:
        paint(pixels, hole, BACKGROUND_LEVEL + NOISE, rng)
    for region in dense:
        paint(pixels, region, DENSE_LEVEL, rng)
        body = body | region
    if speck:
        paint(pixels, SPECK.mask(shape), DENSE_LEVEL, rng)
    return Phantom(pixels=np.clip(pixels, 0, 1), body=body, regions=dense)


def levels16(pixels: Pixels) -> NDArray[np.uint16]:
    return np.rint(pixels * 65535).astype(np.uint16)


def levels8(pixels: Pixels) -> NDArray[np.uint8]:
    return np.rint(pixels * 255).astype(np.uint8)


def window16(pixels: Pixels) -> tuple[float, float]:
    """The levels a 16-bit scan's preview maps to black and white: its own 0.5th and 99.5th percentiles."""
    low, high = np.percentile(levels16(pixels), [0.5, 99.5], method="inverted_cdf")
    return float(low), float(high)


def on_scale16(value: float, pixels: Pixels) -> float:
    """A normalised phantom level on the 16-bit scan's own intensity scale (0 at its dark, 1 at its bright end)."""
    low, high = window16(pixels)
    return (value * 65535 - low) / (high - low)


def display16(pixels: Pixels) -> Pixels:
    """How bright each pixel of a 16-bit scan shows in its preview, 0 to 1."""
    low, high = window16(pixels)
    shown: Pixels = np.clip(np.rint((levels16(pixels) - low) / (high - low) * 255), 0, 255) / 255
    return shown


def encode(image: Image.Image, image_format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png16(pixels: Pixels) -> bytes:
    return encode(Image.fromarray(levels16(pixels)), "PNG")


def png8(pixels: Pixels) -> bytes:
    return encode(Image.fromarray(levels8(pixels)), "PNG")


def jpeg8(pixels: Pixels) -> bytes:
    return encode(Image.fromarray(levels8(pixels)), "JPEG", quality=95)


# Each lossless encoding with how bright its pixels show in the preview (meanIntensity averages that), 0 to 1:
# 8-bit levels as they are, 16-bit levels stretched from the scan's own dark to bright end.
LOSSLESS: dict[str, tuple[Callable[[Pixels], bytes], Callable[[Pixels], Pixels]]] = {
    "png-16bit": (png16, display16),
    "png-8bit": (png8, lambda p: levels8(p) / 255),
    "png-rgb": (lambda p: encode(Image.fromarray(levels8(p)).convert("RGB"), "PNG"), lambda p: levels8(p) / 255),
    "png-rgba": (lambda p: encode(Image.fromarray(levels8(p)).convert("RGBA"), "PNG"), lambda p: levels8(p) / 255),
    "png-la": (lambda p: encode(Image.fromarray(levels8(p)).convert("LA"), "PNG"), lambda p: levels8(p) / 255),
    "png-palette": (lambda p: encode(Image.fromarray(levels8(p)).convert("P"), "PNG"), lambda p: levels8(p) / 255),
}


def expected_region(mask: Mask, levels: Pixels | None = None) -> dict[str, object]:
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    result: dict[str, object] = {
        "bbox": Box(int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)),
        "areaPx": int(mask.sum()),
    }
    if levels is not None:
        result["meanIntensity"] = float(levels[mask].mean())
    return result


def assert_region(reported: dict[str, object], mask: Mask, levels: Pixels) -> None:
    expected = expected_region(mask, levels)
    box = expected["bbox"]
    assert isinstance(box, Box)
    assert reported["bbox"] == box.as_json()
    assert reported["areaPx"] == expected["areaPx"]
    assert reported["meanIntensity"] == pytest.approx(expected["meanIntensity"], abs=1e-4)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bilevel_png(width: int, height: int, *, valid_data: bool = True) -> bytes:
    """A 1-bit PNG whose header claims width x height; all-black rows compress to almost nothing."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if valid_data:
        compressor = zlib.compressobj(9)
        row = bytes(1 + (width + 7) // 8)
        rows_per_chunk = 1000
        data = b"".join(compressor.compress(row * rows_per_chunk) for _ in range(height // rows_per_chunk))
        data += compressor.compress(row * (height % rows_per_chunk)) + compressor.flush()
    else:
        data = b"this is not deflate data"
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def analyze_pixels(pixels: Pixels, encoder: Callable[[Pixels], bytes] = png16) -> AnalyzedScan:
    return analyze_upload(encoder(pixels))


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return build_phantom()


@pytest.mark.parametrize("encoding", list(LOSSLESS))
def test_analyze_upload_reports_known_regions_exactly(phantom: Phantom, encoding: str) -> None:
    # Given a scan with two rectangles, a disc and a speck, in a lossless encoding
    encoder, decoded_levels = LOSSLESS[encoding]
    levels = decoded_levels(phantom.pixels)

    # When it is analyzed
    findings = analyze_pixels(phantom.pixels, encoder).results["findings"]

    # Then exactly the three regions are reported, in (y, x) order, with exact boxes, areas and means
    assert len(findings) == len(phantom.regions)
    dense_brightness = on_scale16(DENSE_LEVEL, phantom.pixels) if encoding == "png-16bit" else DENSE_LEVEL
    for reported, mask in zip(findings, phantom.regions, strict=True):
        assert_region(reported, mask, levels)
        assert reported["meanIntensity"] == pytest.approx(dense_brightness, abs=0.01)


def test_analyze_upload_reports_known_rectangle_boxes(phantom: Phantom) -> None:
    findings = analyze_pixels(phantom.pixels).results["findings"]

    assert findings[0]["bbox"] == RECTANGLE_A.as_json()
    assert findings[0]["areaPx"] == 40 * 30
    assert findings[1]["bbox"] == RECTANGLE_B.as_json()
    assert findings[1]["areaPx"] == 60 * 50
    side = 2 * DISC_RADIUS + 1
    assert findings[2]["bbox"] == Box(DISC_CENTRE[0] - DISC_RADIUS, DISC_CENTRE[1] - DISC_RADIUS, side, side).as_json()


def test_analyze_upload_numbers_findings_in_order(phantom: Phantom) -> None:
    findings = analyze_pixels(phantom.pixels).results["findings"]

    assert [finding["id"] for finding in findings] == [1, 2, 3]
    # A PNG has no density: its regions are brighter than the rest, and say so
    assert [finding["label"] for finding in findings] == ["bright region 1", "bright region 2", "bright region 3"]
    corners = [(finding["bbox"]["y"], finding["bbox"]["x"]) for finding in findings]
    assert corners == sorted(corners)


@pytest.mark.parametrize("encoding", ["png-16bit", "png-8bit", "png-rgb", "jpeg"])
def test_analyze_upload_png_and_jpeg_regions_are_bright_regions_without_a_unit(phantom: Phantom, encoding: str) -> None:
    encoder = LOSSLESS[encoding][0] if encoding in LOSSLESS else jpeg8

    results = analyze_pixels(phantom.pixels, encoder).results

    # The split is on the image's own scale: no threshold a person could read in a unit
    assert results["regions"] == {"kind": "bright", "label": "Bright regions", "threshold": None, "reason": None}
    assert [finding["label"] for finding in results["findings"]] == [f"bright region {n}" for n in (1, 2, 3)]
    assert all("meanHu" not in finding for finding in results["findings"])
    assert 0 < results["analysis"]["denseThreshold"] < 1


def test_analyze_upload_orders_same_corner_by_area_descending() -> None:
    # Given two separate regions whose boxes share the top-left corner (200, 200): a frame open on the
    # left, and a small bar tucked into that opening, which comes first in raster order
    shape = (SIZE, SIZE)
    frame = Box(210, 200, 54, 4).mask(shape) | Box(260, 200, 4, 44).mask(shape) | Box(200, 240, 64, 4).mask(shape)
    bar = Box(200, 200, 4, 30).mask(shape)
    phantom = build_phantom(dense=(frame, bar), speck=False)

    findings = analyze_pixels(phantom.pixels).results["findings"]

    # Then the larger one is reported first
    assert [finding["bbox"]["x"] for finding in findings] == [200, 200]
    assert [finding["bbox"]["y"] for finding in findings] == [200, 200]
    assert [finding["areaPx"] for finding in findings] == [int(frame.sum()), int(bar.sum())]


def test_analyze_upload_reports_body(phantom: Phantom) -> None:
    results = analyze_pixels(phantom.pixels).results

    expected = expected_region(phantom.body)
    box = expected["bbox"]
    assert isinstance(box, Box)
    assert results["body"]["bbox"] == box.as_json()
    assert results["body"]["areaPx"] == expected["areaPx"]
    assert BODY_LEVEL < results["body"]["meanIntensity"] < DENSE_LEVEL


def test_analyze_upload_reports_analysis_parameters(phantom: Phantom) -> None:
    analysis = analyze_pixels(phantom.pixels).results["analysis"]

    assert analysis["method"] == "otsu-body+otsu-dense"
    assert analysis["version"] == 3
    assert analysis["unit"] == "intensity"
    assert analysis["minAreaPx"] == 52
    assert analysis["bitDepth"] == 16
    # Thresholds sit in the gaps between the classes, on the scan's own intensity scale
    pixels = phantom.pixels
    assert on_scale16(BACKGROUND_LEVEL + NOISE, pixels) <= analysis["bodyThreshold"]
    assert analysis["bodyThreshold"] <= on_scale16(BODY_LEVEL - NOISE, pixels)
    assert on_scale16(BODY_LEVEL + NOISE, pixels) <= analysis["denseThreshold"]
    assert analysis["denseThreshold"] <= on_scale16(DENSE_LEVEL - NOISE, pixels)


def test_analyze_upload_records_auto_window_of_16bit_scan(phantom: Phantom) -> None:
    window = analyze_pixels(phantom.pixels).results["analysis"]["window"]

    low, high = window16(phantom.pixels)
    assert window == {"center": (low + high) / 2, "width": high - low, "function": "LINEAR_EXACT", "source": "auto"}


@pytest.mark.parametrize("encoder", [png8, jpeg8])
def test_analyze_upload_shows_8bit_scan_as_it_is(phantom: Phantom, encoder: Callable[[Pixels], bytes]) -> None:
    result = analyze_pixels(phantom.pixels, encoder)

    assert result.results["analysis"]["window"] == {
        "center": 127.5,
        "width": 255.0,
        "function": "LINEAR_EXACT",
        "source": "auto",
    }
    with (
        Image.open(io.BytesIO(encoder(phantom.pixels))) as original,
        Image.open(io.BytesIO(result.preview_jpeg)) as preview,
    ):
        difference = np.abs(np.asarray(preview).astype(int) - np.asarray(original).astype(int))
    # Only JPEG's own rounding separates the preview from the upload
    assert difference.mean() < 1.5


def test_analyze_upload_reports_bit_depth_of_8bit_input(phantom: Phantom) -> None:
    assert analyze_pixels(phantom.pixels, png8).results["analysis"]["bitDepth"] == 8


def test_analyze_upload_results_are_plain_json(phantom: Phantom) -> None:
    results = analyze_pixels(phantom.pixels).results

    assert json.loads(json.dumps(results)) == results
    for finding in results["findings"]:
        assert all(type(value) is int for value in finding["bbox"].values())
        assert type(finding["areaPx"]) is int
        assert type(finding["meanIntensity"]) is float
        assert finding["meanIntensity"] == round(finding["meanIntensity"], 4)


def test_analyze_upload_finds_regions_in_jpeg(phantom: Phantom) -> None:
    # JPEG rings around sharp edges, so boxes may move by a pixel or two
    findings = analyze_pixels(phantom.pixels, jpeg8).results["findings"]

    assert len(findings) == len(phantom.regions)
    for reported, mask in zip(findings, phantom.regions, strict=True):
        expected = expected_region(mask)
        box = expected["bbox"]
        assert isinstance(box, Box)
        for key, value in box.as_json().items():
            assert abs(reported["bbox"][key] - value) <= 2, key
        assert reported["areaPx"] == pytest.approx(expected["areaPx"], rel=0.1)
        assert reported["meanIntensity"] == pytest.approx(DENSE_LEVEL, abs=0.03)


def test_analyze_upload_finds_regions_in_cmyk_jpeg(phantom: Phantom) -> None:
    data = encode(Image.fromarray(levels8(phantom.pixels)).convert("CMYK"), "JPEG", quality=95)

    findings = analyze_upload(data).results["findings"]

    assert len(findings) == len(phantom.regions)
    assert abs(findings[0]["bbox"]["x"] - RECTANGLE_A.x) <= 2
    assert abs(findings[0]["bbox"]["y"] - RECTANGLE_A.y) <= 2


def test_analyze_upload_ignores_region_below_minimum_area() -> None:
    # Given one reportable rectangle and the 9 px speck, both as bright as each other
    phantom = build_phantom(dense=(RECTANGLE_A.mask((SIZE, SIZE)),), speck=True)

    findings = analyze_pixels(phantom.pixels).results["findings"]

    # Then only the rectangle is reported
    assert [finding["bbox"] for finding in findings] == [RECTANGLE_A.as_json()]


def test_analyze_upload_reports_region_just_at_minimum_area() -> None:
    shape = (SIZE, SIZE)
    at_minimum = Box(200, 200, 13, 4).mask(shape)  # 52 px
    below_minimum = Box(300, 300, 17, 3).mask(shape)  # 51 px
    phantom = build_phantom(dense=(at_minimum, below_minimum), speck=False)

    findings = analyze_pixels(phantom.pixels).results["findings"]

    assert [finding["bbox"] for finding in findings] == [Box(200, 200, 13, 4).as_json()]


def test_analyze_upload_joins_regions_touching_at_a_corner() -> None:
    # Given two squares that meet only diagonally: one region under 8-connectivity
    shape = (SIZE, SIZE)
    squares = Box(200, 200, 10, 10).mask(shape) | Box(210, 210, 10, 10).mask(shape)
    phantom = build_phantom(dense=(squares,), speck=False)

    findings = analyze_pixels(phantom.pixels).results["findings"]

    assert [(finding["bbox"], finding["areaPx"]) for finding in findings] == [(Box(200, 200, 20, 20).as_json(), 200)]


def test_analyze_upload_reports_region_touching_body_edge() -> None:
    # Given a bright block that straddles the body's right edge, partly over the background
    shape = (SIZE, SIZE)
    straddling = Box(440, 240, 30, 20)
    assert body_ellipse(SIZE, SIZE)[250, 440] and not body_ellipse(SIZE, SIZE)[250, 469]
    phantom = build_phantom(dense=(straddling.mask(shape),), speck=False)

    findings = analyze_pixels(phantom.pixels).results["findings"]

    # Then the whole block is one finding, not clipped to the ellipse
    assert len(findings) == 1
    assert_region(findings[0], straddling.mask(shape), display16(phantom.pixels))


def test_analyze_upload_fills_air_holes_without_calling_tissue_dense() -> None:
    # Given a chest-like slice: two large dark lungs inside the body and one dense spine block
    shape = (SIZE, SIZE)
    lungs = (ellipse_mask(shape, (160, 240), (70, 110)), ellipse_mask(shape, (352, 240), (70, 110)))
    spine = Box(236, 330, 40, 40)
    phantom = build_phantom(dense=(spine.mask(shape),), holes=lungs, speck=False)
    assert not any((lung & spine.mask(shape)).any() for lung in lungs)

    results = analyze_pixels(phantom.pixels).results

    # Then the lungs count as body (holes filled) and only the spine is dense
    assert results["body"]["areaPx"] == int(phantom.body.sum())
    assert [finding["bbox"] for finding in results["findings"]] == [spine.as_json()]


def test_analyze_upload_blank_image_has_no_body_and_no_findings() -> None:
    result = analyze_pixels(np.zeros((SIZE, SIZE)))

    assert result.results["findings"] == []
    assert result.results["body"] is None
    assert result.results["analysis"]["bodyThreshold"] is None
    assert result.results["analysis"]["denseThreshold"] is None
    with Image.open(io.BytesIO(result.annotated_jpeg)) as annotated:
        assert np.asarray(annotated).max() <= 4


def test_analyze_upload_white_8bit_image_has_no_findings() -> None:
    result = analyze_pixels(np.ones((64, 64)), png8)

    assert result.results["findings"] == []
    assert result.results["body"] is None


def test_analyze_upload_body_without_dense_regions_has_no_findings() -> None:
    phantom = build_phantom(dense=(), speck=False)

    results = analyze_pixels(phantom.pixels).results

    assert results["findings"] == []
    assert results["analysis"]["denseThreshold"] is None
    assert results["body"]["areaPx"] == int(phantom.body.sum())


def test_analyze_upload_is_deterministic(phantom: Phantom) -> None:
    data = png16(phantom.pixels)

    first, second = analyze_upload(data), analyze_upload(data)

    assert first.results == second.results
    assert first.annotated_jpeg == second.annotated_jpeg
    assert first.thumbnail_jpeg == second.thumbnail_jpeg


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(600, 300, (256, 128)), (300, 600, (128, 256)), (512, 512, (256, 256)), (100, 80, (100, 80))],
)
def test_analyze_upload_thumbnail_fits_and_keeps_aspect(width: int, height: int, expected: tuple[int, int]) -> None:
    phantom = build_phantom(width=width, height=height, dense=(), speck=False)

    result = analyze_pixels(phantom.pixels)

    with Image.open(io.BytesIO(result.thumbnail_jpeg)) as thumbnail:
        assert thumbnail.format == "JPEG"
        assert thumbnail.size == expected
        assert max(thumbnail.size) <= THUMBNAIL_MAX_SIDE


def test_analyze_upload_annotated_is_jpeg_of_original_size(phantom: Phantom) -> None:
    result = analyze_pixels(phantom.pixels[:, :400])

    assert (result.width, result.height) == (400, SIZE)
    with Image.open(io.BytesIO(result.annotated_jpeg)) as annotated:
        assert annotated.format == "JPEG"
        assert annotated.mode == "RGB"
        assert annotated.size == (400, SIZE)


def test_analyze_upload_annotated_outlines_findings(phantom: Phantom) -> None:
    result = analyze_pixels(phantom.pixels)

    with Image.open(io.BytesIO(result.annotated_jpeg)) as annotated:
        rgb = np.asarray(annotated).astype(int)
    # Just outside the left edge of rectangle A, halfway down: the outline; far from any box: plain grey
    outline = rgb[RECTANGLE_A.y + RECTANGLE_A.height // 2, RECTANGLE_A.x - 1]
    plain = rgb[256, 100]
    assert outline[0] - outline[1] > 80
    assert abs(plain[0] - plain[1]) < 10


def test_analyze_upload_annotated_has_no_outline_without_findings() -> None:
    phantom = build_phantom(dense=(), speck=False)

    with Image.open(io.BytesIO(analyze_pixels(phantom.pixels).annotated_jpeg)) as annotated:
        rgb = np.asarray(annotated).astype(int)

    assert (rgb[..., 0] - rgb[..., 1]).max() < 20


def test_analyze_upload_windows_16bit_display_from_min_to_max() -> None:
    # Given a 16-bit scan that only uses levels 1000 and 3000
    levels = np.full((64, 64), 1000, dtype=np.uint16)
    levels[:, 32:] = 3000

    result = analyze_upload(encode(Image.fromarray(levels), "PNG"))

    # Then the display stretches them to black and white
    with Image.open(io.BytesIO(result.thumbnail_jpeg)) as thumbnail:
        display = np.asarray(thumbnail.convert("L")).astype(int)
    assert display[32, 8] <= 5
    assert display[32, 56] >= 250


@pytest.mark.parametrize(
    ("encoder", "content_type"), [(png16, "image/png"), (png8, "image/png"), (jpeg8, "image/jpeg")]
)
def test_analyze_upload_content_type_comes_from_detected_format(
    phantom: Phantom, encoder: Callable[[Pixels], bytes], content_type: str
) -> None:
    result = analyze_pixels(phantom.pixels, encoder)

    assert result.content_type == content_type
    assert result.content_type in ACCEPTED_FORMATS.values()


def truncated_png() -> bytes:
    data = png16(build_phantom().pixels)
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    data = jpeg8(build_phantom().pixels)
    return data[: len(data) // 2]


def other_format(image_format: str) -> bytes:
    return encode(Image.fromarray(levels8(build_phantom(width=64, height=64).pixels)), image_format)


@pytest.mark.parametrize(
    "make_data",
    [
        pytest.param(lambda: b"", id="empty"),
        pytest.param(lambda: b"not an image", id="text"),
        pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, id="png-signature-then-garbage"),
        pytest.param(lambda: b"\xff\xd8\xff" + b"\x00" * 64, id="jpeg-signature-then-garbage"),
        pytest.param(truncated_png, id="truncated-png"),
        pytest.param(truncated_jpeg, id="truncated-jpeg"),
        pytest.param(lambda: bilevel_png(64, 64, valid_data=False), id="png-with-broken-data"),
        pytest.param(lambda: other_format("GIF"), id="gif"),
        pytest.param(lambda: other_format("BMP"), id="bmp"),
        pytest.param(lambda: other_format("TIFF"), id="tiff"),
        pytest.param(lambda: other_format("WEBP"), id="webp"),
    ],
)
def test_analyze_upload_rejects_bad_input(make_data: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidImage) as raised:
        analyze_upload(make_data())

    # The message goes to API clients: plain words, no library internals
    assert raised.value.message
    assert "PIL" not in raised.value.message
    assert "Error" not in raised.value.message


def test_analyze_upload_rejects_image_above_max_pixels() -> None:
    data = png8(build_phantom(width=64, height=64).pixels)

    with pytest.raises(InvalidImage, match="too large") as raised:
        analyze_upload(data, max_pixels=64 * 64 - 1)

    assert "4,095" in raised.value.message
    assert analyze_upload(data, max_pixels=64 * 64).width == 64


def test_analyze_upload_rejects_decompression_bomb_below_pillow_limit() -> None:
    # Given a valid 8000 x 6000 PNG of a few kilobytes: over our 40 MP default, under Pillow's own limit
    data = bilevel_png(8000, 6000)
    assert len(data) < 20_000

    with pytest.raises(InvalidImage, match="too large") as raised:
        analyze_upload(data)

    assert "40,000,000" in raised.value.message


def test_analyze_upload_checks_pixels_before_decoding() -> None:
    # Given a header claiming too many pixels over data that cannot be decoded
    data = bilevel_png(8000, 6000, valid_data=False)

    # Then the size is refused before any decoding would have found the damage
    with pytest.raises(InvalidImage, match="too large"):
        analyze_upload(data)


def test_analyze_upload_rejects_decompression_bomb_above_pillow_limit() -> None:
    # 400 MP: Pillow itself raises DecompressionBombError on open, which must become InvalidImage
    with pytest.raises(InvalidImage, match="too large"):
        analyze_upload(bilevel_png(20_000, 20_000, valid_data=False), max_pixels=10**9)


def test_analyze_upload_turns_pillow_bomb_warning_into_error_without_leaking_filters() -> None:
    # Given 100 MP: between Pillow's warning and error limits, and a caller limit above both
    data = bilevel_png(10_000, 10_000, valid_data=False)
    filters_before = list(warnings.filters)
    max_image_pixels_before = Image.MAX_IMAGE_PIXELS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InvalidImage, match="too large"):
            analyze_upload(data, max_pixels=10**9)

    assert not [warning for warning in caught if issubclass(warning.category, Image.DecompressionBombWarning)]
    assert list(warnings.filters) == filters_before
    assert max_image_pixels_before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- integrity: a medical store refuses damaged files ------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of a valid PNG."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        chunks.append((data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def rebuild_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, payload) for kind, payload in chunks)


@pytest.fixture(scope="module")
def small_png() -> bytes:
    return png16(build_phantom(width=96, height=64, dense=(), speck=False).pixels)


def test_png_chunk_helpers_round_trip(small_png: bytes) -> None:
    assert rebuild_png(png_chunks(small_png)) == small_png
    assert analyze_upload(small_png).width == 96


@pytest.mark.parametrize("cut", [1, 4, 12, 13])
def test_analyze_upload_rejects_png_cut_short(small_png: bytes, cut: int) -> None:
    with pytest.raises(InvalidImage, match="damaged or incomplete"):
        analyze_upload(small_png[:-cut])


def test_analyze_upload_rejects_png_without_iend(small_png: bytes) -> None:
    chunks = png_chunks(small_png)
    assert chunks[-1][0] == b"IEND"

    with pytest.raises(InvalidImage, match="damaged or incomplete"):
        analyze_upload(rebuild_png(chunks[:-1]))


@pytest.mark.parametrize("kind", [b"IDAT", b"tEXt"])
def test_analyze_upload_rejects_png_with_bad_crc(small_png: bytes, kind: bytes) -> None:
    # Given intact data whose chunk CRC is wrong: Pillow itself checks neither the image data's CRC
    # nor that of text after it
    chunks = png_chunks(small_png)
    chunks.insert(len(chunks) - 1, (b"tEXt", b"Comment\x00after the image data"))
    index = next(i for i, (name, _) in enumerate(chunks) if name == kind)
    data = bytearray(rebuild_png(chunks))
    crc_offset = 8 + sum(12 + len(payload) for _, payload in chunks[: index + 1]) - 4
    data[crc_offset] ^= 0x01

    with pytest.raises(InvalidImage, match="damaged or incomplete"):
        analyze_upload(bytes(data))
    assert analyze_upload(rebuild_png(chunks)).width == 96


def test_analyze_upload_accepts_png_with_data_after_iend(small_png: bytes) -> None:
    assert analyze_upload(small_png + b"trailing bytes").width == 96


def test_analyze_upload_rejects_jpeg_without_eoi(phantom: Phantom) -> None:
    data = jpeg8(phantom.pixels)
    assert data.endswith(b"\xff\xd9")

    with pytest.raises(InvalidImage, match="damaged or incomplete"):
        analyze_upload(data[:-2])
    with pytest.raises(InvalidImage, match="damaged or incomplete"):
        analyze_upload(data[:-1])


@pytest.mark.parametrize("padding", [b"\x00", b"\x00\x00", b"\r\n", b"\x00" * 16])
def test_analyze_upload_accepts_jpeg_padded_after_eoi(phantom: Phantom, padding: bytes) -> None:
    assert analyze_upload(jpeg8(phantom.pixels) + padding).content_type == "image/jpeg"


def test_analyze_upload_rejects_jpeg_with_data_after_eoi(phantom: Phantom) -> None:
    with pytest.raises(InvalidImage, match="damaged or incomplete"):
        analyze_upload(jpeg8(phantom.pixels) + b"\x00" * 17)


@pytest.mark.parametrize("encoder", [png16, png8, jpeg8])
def test_analyze_upload_randomly_damaged_png_or_jpeg_only_raises_invalid_image(
    encoder: Callable[[Pixels], bytes],
) -> None:
    data = encoder(build_phantom(width=64, height=64).pixels)

    for damaged in randomly_damaged(data, seed=23, copies=40, max_bytes=7):
        try:
            analyze_upload(damaged)
        except InvalidImage as error:
            assert error.message


@pytest.mark.parametrize(
    "levels",
    [np.zeros((1, 1), np.uint8), np.full((1, 1), 40000, np.uint16), np.arange(7, dtype=np.uint16).reshape(1, 7)],
    ids=["1x1-8bit", "1x1-16bit", "1x7-16bit"],
)
def test_analyze_upload_handles_tiny_images(levels: NDArray[np.integer]) -> None:
    result = analyze_upload(encode(Image.fromarray(levels), "PNG"))

    assert (result.height, result.width) == levels.shape
    assert result.results["findings"] == []


# --- 16-bit scans in a narrow value range (the regression) ------------------------------------------------


def test_analyze_upload_finds_the_vertebra_of_a_real_ct_slice_exported_as_16bit_png() -> None:
    # Given CT_small.dcm (a neck slice through a vertebra) as its stored values in a 16-bit PNG: 128 to 2191.
    # Divided by 65535 these spanned 3 % of the range, so the fixed 0.15 contrast rule reported nothing.
    ds = pydicom.dcmread(io.BytesIO(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()))
    png = stored_png16(ds)
    with Image.open(io.BytesIO(png)) as opened:
        assert int(np.asarray(opened).max()) < 2200

    findings = analyze_upload(png).results["findings"]

    # Then the vertebra is found where the HU analysis of the original DICOM finds it
    hu_findings = analyze_upload(dicom_bytes(ds)).results["findings"]
    vertebra = max(hu_findings, key=lambda finding: finding["areaPx"])["bbox"]
    centre_x, centre_y = vertebra["x"] + vertebra["width"] // 2, vertebra["y"] + vertebra["height"] // 2
    largest = max(findings, key=lambda finding: finding["areaPx"])
    box = largest["bbox"]
    assert box["x"] <= centre_x < box["x"] + box["width"]
    assert box["y"] <= centre_y < box["y"] + box["height"]
    assert largest["areaPx"] >= 0.8 * max(finding["areaPx"] for finding in hu_findings)


def test_analyze_upload_finds_dense_discs_in_16bit_png_with_values_0_to_2063() -> None:
    # Given the HU phantom stored as HU + 1024 in a 16-bit PNG: values 0 to about 2060
    ds = ct_slice_dataset()
    stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(512, 512)
    assert stored.max() <= 2063

    findings = analyze_upload(encode(Image.fromarray(stored), "PNG")).results["findings"]

    # Then the three bone discs are found, exactly as the HU analysis of the same pixels finds them
    hu_findings = analyze_upload(dicom_bytes(ds)).results["findings"]
    assert len(hu_findings) == 3
    assert [(f["bbox"], f["areaPx"]) for f in findings] == [(f["bbox"], f["areaPx"]) for f in hu_findings]
