"""The QIDO-RS attributes of an instance, taken from its DICOM JSON object (already decoded to UTF-8)."""

from __future__ import annotations

from typing import Any

from shared.dicom.elements import person_name_groups
from shared.dicom.record import QidoAttributes

# IS values stored as integers: a search column is a 32-bit integer, the range PS3.5 gives IS.
_INT_RANGE = range(-(2**31), 2**31)


def qido_attributes(attributes: dict[str, Any]) -> QidoAttributes:
    """The searchable attributes, from the instance's top-level DICOM JSON attributes."""

    def values(tag: str) -> list[Any]:
        found = attributes.get(tag)
        return list(found.get("Value", [])) if found else []

    def text(tag: str) -> str | None:
        # Several values read as the file writes them, separated by backslashes.
        parts = ["" if value is None else str(value) for value in values(tag)]
        return "\\".join(parts) if any(parts) else None

    def name(tag: str) -> str | None:
        found = values(tag)
        return person_name_groups(found[0]) if found else None

    def name_keys(tag: str) -> tuple[str, ...]:
        keys: list[str] = []
        for value in values(tag):
            for group in (value or {}).values():
                key = group.upper().rstrip("^")
                if key and key not in keys:
                    keys.append(key)
        return tuple(keys)

    def integer(tag: str) -> int | None:
        found = values(tag)
        value = found[0] if found else None
        return value if isinstance(value, int) and value in _INT_RANGE else None

    return QidoAttributes(
        patient_name=name("00100010"),
        patient_id=text("00100020"),
        issuer_of_patient_id=text("00100021"),
        patient_birth_date=text("00100030"),
        patient_sex=text("00100040"),
        study_date=text("00080020"),
        study_time=text("00080030"),
        timezone_offset_from_utc=text("00080201"),
        accession_number=text("00080050"),
        study_id=text("00200010"),
        study_description=text("00081030"),
        referring_physician_name=name("00080090"),
        modality=text("00080060"),
        series_number=integer("00200011"),
        series_description=text("0008103E"),
        instance_number=integer("00200013"),
        patient_name_keys=name_keys("00100010"),
        referring_physician_keys=name_keys("00080090"),
    )
