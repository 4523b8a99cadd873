"""Sniff an upload's format by its content and decode it into Pixels: grey levels, their unit, and display hints."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from shared.dicom_index import DicomIndex
from shared.errors import InvalidImage
from shared.imaging import integrity

ACCEPTED_FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg"}
# The header attributes a decoded DICOM file contributes to the index (one dataclass for imaging, db and API).
DicomInfo = DicomIndex
DICOM_CONTENT_TYPE = "application/dicom"

Unit = Literal["HU", "intensity"]
WindowFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
WindowSource = Literal["file", "default-ct", "auto"]
# Grey levels are always 8 or 16 bits (decoders narrow anything wider), so a 65,536-entry table can map them.
Levels = NDArray[np.uint8] | NDArray[np.int8] | NDArray[np.uint16] | NDArray[np.int16]
Rgb = NDArray[np.uint8]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I"})
_GREY_MODES = frozenset({"L", "LA", "1", "La"})


@dataclass(frozen=True)
class Window:
    """A VOI window in the image's value units (HU for CT), as PS3.3 C.11.2.1.2 defines it."""

    center: float
    width: float
    function: WindowFunction = "LINEAR"
    source: WindowSource = "file"

    def to_json(self) -> dict[str, Any]:
        """The window as stored in results.analysis.window."""
        return {
            "center": round(self.center, 4),
            "width": round(self.width, 4),
            "function": self.function,
            "source": self.source,
        }


@dataclass(frozen=True)
class Pixels:
    """One decoded image: grey levels for analysis plus what rendering needs. value = level * slope + intercept."""

    content_type: str
    levels: Levels
    bit_depth: int
    slope: float = 1.0
    intercept: float = 0.0
    unit: Unit = "intensity"
    # 8-bit levels meant to be shown as they are (PNG/JPEG, colour luminance): the auto window is 0-255.
    display_ready: bool = False
    colour: Rgb | None = None
    monochrome1: bool = False
    file_window: Window | None = None
    spacing_mm: tuple[float, float] | None = None
    dicom: DicomInfo | None = None

    @property
    def height(self) -> int:
        """Rows."""
        return int(self.levels.shape[0])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.levels.shape[1])


def too_large(max_pixels: int) -> InvalidImage:
    """The error for an image over the pixel cap, worded the same for every format."""
    return InvalidImage(f"The image is too large: at most {max_pixels:,} pixels (width x height) are accepted.")


def decode_upload(data: bytes, *, max_pixels: int) -> Pixels:
    """Decode a PNG, JPEG or DICOM upload, detected from its bytes only."""
    if not data:
        raise InvalidImage("The uploaded file is empty.")
    if integrity.has_dicom_prefix(data):
        return _decode_dicom(data, max_pixels=max_pixels, bare=False)
    if integrity.is_png(data):
        integrity.check_png(data)
    elif integrity.is_jpeg(data):
        integrity.check_jpeg(data)
    elif integrity.looks_like_bare_dicom(data):
        return _decode_dicom(data, max_pixels=max_pixels, bare=True)
    return _decode_pillow(data, max_pixels=max_pixels)


def _decode_dicom(data: bytes, *, max_pixels: int, bare: bool) -> Pixels:
    # pydicom costs ~140 ms to import: only DICOM uploads pay it.
    from shared.imaging import dicom

    return dicom.decode_dicom(data, max_pixels=max_pixels, bare=bare)


def _decode_pillow(data: bytes, *, max_pixels: int) -> Pixels:
    image = _open_image(data, max_pixels=max_pixels)
    # Pillow reports multi-picture JPEGs (camera MPO files) as their own format; they are still JPEG.
    detected = "JPEG" if image.format == "MPO" else image.format
    content_type = ACCEPTED_FORMATS.get(detected or "")
    if content_type is None:
        raise InvalidImage("The file is not a PNG, JPEG or DICOM image.")
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.dtype != np.uint16:
            # Mode I is 32-bit signed; from a PNG it holds 16-bit samples, anything beyond is out of range.
            values = np.clip(values, 0, 65535).astype(np.uint16)
        return Pixels(content_type=content_type, levels=values, bit_depth=16)
    if image.mode in _GREY_MODES:
        grey = image if image.mode == "L" else _convert(image, "L")
        return Pixels(content_type=content_type, levels=np.asarray(grey), bit_depth=8, display_ready=True)
    rgb = _convert(image, "RGB")
    # ITU-R 601 luminance, as Pillow computes it, is what the analysis sees of a colour image.
    luminance = np.asarray(rgb.convert("L"))
    return Pixels(content_type=content_type, levels=luminance, bit_depth=8, display_ready=True, colour=np.asarray(rgb))


def _open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; for uploads it is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            width, height = image.size
            # The header is read but no pixels yet: refuse bombs before they cost memory.
            if width * height > max_pixels:
                raise too_large(max_pixels)
            image.load()
    except (InvalidImage, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise too_large(max_pixels) from error
    except UnidentifiedImageError as error:
        raise InvalidImage("The file is not a PNG, JPEG or DICOM image.") from error
    except Exception as error:
        # Pillow's decoders raise a wide, undocumented range of errors on hostile data; all mean the same.
        raise InvalidImage("The image data is damaged or incomplete.") from error
    return image


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        # Palettes, alpha and CMYK are resolved by Pillow.
        return image.convert(mode)
    except (ValueError, OSError) as error:
        raise InvalidImage("Images in this pixel format are not supported.") from error
