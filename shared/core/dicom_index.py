"""The PHI-free DICOM index of a scan, shared by the imaging package, the database and the API.

A module of its own, free of numpy and pydicom, so that the functions that never decode images can
use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DicomIndex:
    """The whitelisted, PHI-free DICOM attributes of a scan: what a viewer needs to place and draw it.

    The imaging package reads them from the header (as DicomInfo), the database keeps them in columns
    of their own, the API shows them as the `dicom` block. None marks an attribute the file lacks.
    """

    modality: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    instance_number: int | None
    slice_position: float | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    rows: int
    columns: int
    frame_count: int
    frame_analyzed: int
    transfer_syntax_uid: str
    photometric_interpretation: str
    bits_stored: int

    def to_json(self) -> dict[str, Any]:
        """camelCase JSON for the API and the index."""
        return {
            "modality": self.modality,
            "studyInstanceUid": self.study_instance_uid,
            "seriesInstanceUid": self.series_instance_uid,
            "sopInstanceUid": self.sop_instance_uid,
            "instanceNumber": self.instance_number,
            "slicePosition": self.slice_position,
            "pixelSpacingMm": None if self.pixel_spacing_mm is None else list(self.pixel_spacing_mm),
            "sliceThicknessMm": self.slice_thickness_mm,
            "rows": self.rows,
            "columns": self.columns,
            "frameCount": self.frame_count,
            "frameAnalyzed": self.frame_analyzed,
            "transferSyntaxUid": self.transfer_syntax_uid,
            "photometricInterpretation": self.photometric_interpretation,
            "bitsStored": self.bits_stored,
        }
