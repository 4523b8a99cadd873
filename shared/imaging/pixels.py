"""What every decoder produces: Pixels (grey levels, their unit, display hints) and its window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from shared.core.dicom_index import DicomIndex
from shared.core.errors import InvalidImage

# The header attributes a decoded DICOM file contributes to the index (one dataclass for imaging, db and API).
DicomInfo = DicomIndex
DICOM_CONTENT_TYPE = "application/dicom"

Unit = Literal["HU", "intensity"]
WindowFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
WindowSource = Literal["file", "default-ct", "auto"]
# Grey levels are always 8 or 16 bits (decoders narrow anything wider), so a 65,536-entry table can map them.
Levels = NDArray[np.uint8] | NDArray[np.int8] | NDArray[np.uint16] | NDArray[np.int16]
Rgb = NDArray[np.uint8]


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
