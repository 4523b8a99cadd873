"""Window values to 8-bit display, and render the preview, annotated image and thumbnail (JPEG bytes out).

Nothing here receives text from the file: the only text drawn is finding numbers.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from shared.core.errors import InvalidRequest
from shared.imaging.pixels import Levels, Rgb, Window

THUMBNAIL_MAX_SIDE = 256
DEFAULT_CT_WINDOW = Window(center=40.0, width=400.0, function="LINEAR", source="default-ct")

_OUTLINE_COLOUR = (255, 64, 64)
_OUTLINE_WIDTH = 2
_LABEL_BACKGROUND = (0, 0, 0)
_PREVIEW_QUALITY = 90
_ANNOTATED_QUALITY = 90
_THUMBNAIL_QUALITY = 85

Grey = NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x, y, width, height
ImageFormat = Literal["jpeg", "png"]
DEFAULT_QUALITY = _PREVIEW_QUALITY


@dataclass(frozen=True)
class Viewport:
    """Where a rendered image goes (PS3.18 8.3.5.1.3): a viewport of width x height pixels, and the
    region of the image to show in it (x, y of its top-left pixel, its width and height; a negative
    width or height shows the region mirrored), the whole image when None."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


def apply_window(values: NDArray[np.floating] | NDArray[np.integer], window: Window) -> Grey:
    """Map values to 0-255 with a VOI window: LINEAR, LINEAR_EXACT or SIGMOID of PS3.3 C.11.2.1.2, in float32."""
    x = np.array(values, dtype=np.float32)
    center, width = np.float32(window.center), np.float32(window.width)
    if window.function == "SIGMOID":
        # y = 255 / (1 + exp(-4 (x - c) / w)); overflow in exp is a clean 0 after the division.
        x -= center
        x *= np.float32(-4) / width
        with np.errstate(over="ignore"):
            np.exp(x, out=x)
        x += np.float32(1)
        np.divide(np.float32(255), x, out=x)
    elif window.function == "LINEAR_EXACT":
        # y = ((x - c) / w + 0.5) * 255, clipped: x <= c - w/2 is 0 and x > c + w/2 is 255.
        x -= center
        x *= np.float32(255) / width
        x += np.float32(127.5)
    elif width > 1:
        # LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped at c - 0.5 -/+ (w - 1) / 2.
        x -= center - np.float32(0.5)
        x *= np.float32(255) / (width - np.float32(1))
        x += np.float32(127.5)
    else:
        # LINEAR with width 1 is a step at c - 0.5.
        x = np.where(x > center - np.float32(0.5), np.float32(255), np.float32(0))
    np.clip(x, 0, 255, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def auto_window(low: float, high: float) -> Window:
    """The window that maps the image's own range [low, high] (value units) linearly onto black to white."""
    return Window(center=(low + high) / 2, width=high - low, function="LINEAR_EXACT", source="auto")


def grey_display(levels: Levels, *, slope: float, intercept: float, window: Window) -> Grey:
    """Window the levels' values (level * slope + intercept) to 8-bit, through a table over every possible level."""
    unsigned = np.dtype(f"u{levels.dtype.itemsize}")
    # Every level of the type, in the order its unsigned view indexes: one window evaluation per level.
    domain = np.arange(1 << (8 * levels.dtype.itemsize), dtype=unsigned).view(levels.dtype)
    values = domain.astype(np.float32)
    values *= np.float32(slope)
    values += np.float32(intercept)
    table = apply_window(values, window)
    if levels.dtype == np.uint8 and np.array_equal(table, domain):
        return levels.view(np.uint8)  # display-ready 8-bit: nothing to map
    display: Grey = np.take(table, levels.view(unsigned))
    return display


def preview_image(grey: Grey, colour: Rgb | None, *, invert: bool) -> Image.Image:
    """What a browser shows: the colour image as it is, or the windowed grey (inverted for MONOCHROME1)."""
    if colour is not None:
        return Image.fromarray(colour, "RGB")
    if invert:
        grey = np.subtract(np.uint8(255), grey)
    return Image.fromarray(grey, "L")


def render_preview(preview: Image.Image) -> bytes:
    """The full-size preview as JPEG, without annotations."""
    return encode_jpeg(preview, quality=_PREVIEW_QUALITY)


def render_annotated(preview: Image.Image, boxes: Sequence[Box]) -> bytes:
    """The preview with each finding outlined and numbered 1, 2, ... in the order given, as JPEG."""
    canvas = preview.convert("RGB") if preview.mode != "RGB" else preview.copy()
    if boxes:
        draw = ImageDraw.Draw(canvas)
        # Labels stay legible on large scans without swamping small ones.
        font = _label_font(max(10, min(canvas.size) // 40))
        for number, (x, y, width, height) in enumerate(boxes, start=1):
            # The outline sits outside the region so the dense pixels themselves stay visible.
            left, top = x - _OUTLINE_WIDTH, y - _OUTLINE_WIDTH
            right = x + width - 1 + _OUTLINE_WIDTH
            bottom = y + height - 1 + _OUTLINE_WIDTH
            draw.rectangle((left, top, right, bottom), outline=_OUTLINE_COLOUR, width=_OUTLINE_WIDTH)
            _draw_label(draw, canvas.size, number, font, box=(left, top))
    return encode_jpeg(canvas, quality=_ANNOTATED_QUALITY)


def render_thumbnail(preview: Image.Image) -> bytes:
    """The preview shrunk so its longer side is at most THUMBNAIL_MAX_SIDE, as JPEG."""
    width, height = preview.size
    longest = max(width, height)
    thumbnail = preview
    if longest > THUMBNAIL_MAX_SIDE:
        target = (
            max(1, round(width * THUMBNAIL_MAX_SIDE / longest)),
            max(1, round(height * THUMBNAIL_MAX_SIDE / longest)),
        )
        # A box filter by a whole factor first (cheap, and it averages every pixel), then bilinear to size.
        factor = longest // THUMBNAIL_MAX_SIDE
        if factor >= 2:
            thumbnail = thumbnail.reduce(factor)
        if thumbnail.size != target:
            thumbnail = thumbnail.resize(target, Image.Resampling.BILINEAR)
    return encode_jpeg(thumbnail, quality=_THUMBNAIL_QUALITY)


def fit_viewport(image: Image.Image, viewport: Viewport) -> Image.Image:
    """The viewport's region of the image (InvalidRequest when it reaches outside the image), mirrored
    as its signs say, scaled with its aspect ratio kept to the largest size that fits the viewport."""
    if viewport.region is not None:
        x, y, width, height = viewport.region
        inside = x >= 0 and x + abs(width) <= image.width and y >= 0 and y + abs(height) <= image.height
        if width == 0 or height == 0 or not inside:
            raise InvalidRequest(
                f"viewport: the region {x},{y},{width},{height} is not inside the {image.width}x{image.height} image."
            )
        image = image.crop((x, y, x + abs(width), y + abs(height)))
        if width < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if height < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def encode(image: Image.Image, *, image_format: ImageFormat, quality: int | None) -> bytes:
    """The image as JPEG (at `quality`, 1-100; DEFAULT_QUALITY when None) or PNG (lossless: no quality)."""
    if image_format == "png":
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    return encode_jpeg(image, quality=quality or DEFAULT_QUALITY)


def encode_jpeg(image: Image.Image, *, quality: int) -> bytes:
    """Baseline JPEG without optimisation passes or metadata."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _draw_label(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    number: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    *,
    box: tuple[int, int],
) -> None:
    text = str(number)
    ink_left, ink_top, ink_right, ink_bottom = draw.textbbox((0, 0), text, font=font)
    label_width, label_height = ink_right - ink_left + 2, ink_bottom - ink_top + 2
    box_left, box_top = box
    x = max(0, min(box_left, size[0] - label_width))
    above = box_top - label_height
    # Inside the box, below its outline, when the box touches the top edge.
    y = above if above >= 0 else max(0, box_top + _OUTLINE_WIDTH)
    draw.rectangle((x, y, x + label_width - 1, y + label_height - 1), fill=_LABEL_BACKGROUND)
    draw.text((x + 1 - ink_left, y + 1 - ink_top), text, fill=_OUTLINE_COLOUR, font=font)
