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
# The numbers may cover at most this share of the image in all: labels are drawn over anatomy.
LABEL_AREA_BUDGET = 0.03
# The smallest label that still reads (digits ~6 px tall); below it a number is noise, not a label.
MIN_LABEL_FONT_SIZE = 9
# A label's font grows with the image: 1/40 of its shorter side (12 px on a 512 x 512 slice).
_LABEL_FONT_FRACTION = 40
_PREVIEW_QUALITY = 90
_ANNOTATED_QUALITY = 90
_THUMBNAIL_QUALITY = 85

Grey = NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x, y, width, height
ImageFormat = Literal["jpeg", "png"]
DEFAULT_QUALITY = _PREVIEW_QUALITY


@dataclass(frozen=True)
class Label:
    """Where a box's number is drawn: its number, the label's rectangle (x, y, width, height) and font size."""

    number: int
    x: int
    y: int
    width: int
    height: int
    font_size: int

    @property
    def area(self) -> int:
        """Pixels the label covers (its background rectangle)."""
        return self.width * self.height


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
    """The preview with each finding outlined and numbered 1, 2, ... in the order given (as many
    numbers as label_layout allows), as JPEG."""
    return encode_jpeg(annotate(preview, boxes), quality=_ANNOTATED_QUALITY)


def annotate(preview: Image.Image, boxes: Sequence[Box], *, numbered: bool = True) -> Image.Image:
    """The preview in RGB with each box outlined and, when numbered, the labels of label_layout on top."""
    canvas = preview.convert("RGB") if preview.mode != "RGB" else preview.copy()
    if not boxes:
        return canvas
    draw = ImageDraw.Draw(canvas)
    for x, y, width, height in boxes:
        # The outline sits outside the region so the region's own pixels stay visible.
        left, top = x - _OUTLINE_WIDTH, y - _OUTLINE_WIDTH
        right = x + width - 1 + _OUTLINE_WIDTH
        bottom = y + height - 1 + _OUTLINE_WIDTH
        draw.rectangle((left, top, right, bottom), outline=_OUTLINE_COLOUR, width=_OUTLINE_WIDTH)
    if numbered:
        # After every outline, so that no later outline crosses a number.
        for label in label_layout(canvas.size, boxes):
            font = _label_font(label.font_size)
            ink_left, ink_top, _, _ = font.getbbox(str(label.number))
            right, bottom = label.x + label.width - 1, label.y + label.height - 1
            draw.rectangle((label.x, label.y, right, bottom), fill=_LABEL_BACKGROUND)
            draw.text(
                (label.x + 1 - ink_left, label.y + 1 - ink_top), str(label.number), fill=_OUTLINE_COLOUR, font=font
            )
    return canvas


def label_layout(size: tuple[int, int], boxes: Sequence[Box]) -> list[Label]:
    """The numbers of boxes 1, 2, ... and where they go, covering at most LABEL_AREA_BUDGET of the image.

    The font is 1/40 of the image's shorter side (never under MIN_LABEL_FONT_SIZE); when every label
    does not fit the budget at that size, the largest smaller size at which they do; when they do not
    even at the smallest legible size, the first boxes' labels that fit (none at all on a tiny image),
    and outlines alone for the rest. Deterministic: the same size and boxes give the same labels.
    """
    if not boxes:
        return []
    budget = LABEL_AREA_BUDGET * size[0] * size[1]
    preferred = max(MIN_LABEL_FONT_SIZE, min(size) // _LABEL_FONT_FRACTION)
    font_size = preferred
    if _labels_within(budget, font_size, len(boxes)) < len(boxes):
        # The largest size at which all fit, by bisection (only sizes checked to fit are ever taken).
        low, high = MIN_LABEL_FONT_SIZE, preferred - 1
        font_size = MIN_LABEL_FONT_SIZE
        while low <= high:
            middle = (low + high) // 2
            if _labels_within(budget, middle, len(boxes)) == len(boxes):
                font_size, low = middle, middle + 1
            else:
                high = middle - 1
    count = _labels_within(budget, font_size, len(boxes))
    return [_place_label(size, number, box, font_size) for number, box in enumerate(boxes[:count], start=1)]


def _labels_within(budget: float, font_size: int, count: int) -> int:
    """How many labels, 1 first, fit the budget together at this font size."""
    covered = 0
    for number in range(1, count + 1):
        width, height = _label_size(font_size, number)
        covered += width * height
        if covered > budget:
            return number - 1
    return count


@functools.lru_cache(maxsize=4096)
def _label_size(font_size: int, number: int) -> tuple[int, int]:
    # The digits' ink and a pixel of background around it.
    ink_left, ink_top, ink_right, ink_bottom = _label_font(font_size).getbbox(str(number))
    return int(ink_right - ink_left) + 2, int(ink_bottom - ink_top) + 2


def _place_label(size: tuple[int, int], number: int, box: Box, font_size: int) -> Label:
    width, height = _label_size(font_size, number)
    box_left, box_top = box[0] - _OUTLINE_WIDTH, box[1] - _OUTLINE_WIDTH
    x = max(0, min(box_left, size[0] - width))
    above = box_top - height
    # Above the outline; inside the box, below its outline, when the box touches the top edge.
    y = above if above >= 0 else max(0, box_top + _OUTLINE_WIDTH)
    return Label(number=number, x=x, y=y, width=width, height=height, font_size=font_size)


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


@functools.lru_cache(maxsize=32)
def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
