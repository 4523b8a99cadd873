"""PNG and JPEG through Pillow: decoded under the pixel cap, grey or colour, into Pixels."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.core.errors import InvalidImage
from shared.imaging.pixels import Pixels, too_large

ACCEPTED_FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg"}

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I"})
_GREY_MODES = frozenset({"L", "LA", "1", "La"})


def decode_pillow(data: bytes, *, max_pixels: int) -> Pixels:
    """A PNG or JPEG as Pixels: 16-bit grey as it is, 8-bit grey and colour as display-ready levels."""
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
