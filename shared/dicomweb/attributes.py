"""The attributes QIDO-RS matches and returns, by keyword and tag, and how one is written in DICOM JSON.

Only what the dicom_instances table indexes (migration 010): the keys PS3.18 requires at each level
(Table 10.6.1-5), StudyDescription and IssuerOfPatientID, and what viewers read back. No pydicom
here: the lean images function builds QIDO-RS answers from database columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    """A QIDO-RS query level."""

    study = "study"
    series = "series"
    instance = "instance"


@dataclass(frozen=True)
class Attribute:
    """One attribute we index: its keyword, tag (upper-case hex), VR and the level it belongs to."""

    keyword: str
    tag: str
    vr: str
    level: Level


_ALL = (
    # Study level (PS3.18 Table 10.6.1-5 and 10.6.3-3).
    Attribute("StudyDate", "00080020", "DA", Level.study),
    Attribute("StudyTime", "00080030", "TM", Level.study),
    Attribute("AccessionNumber", "00080050", "SH", Level.study),
    Attribute("ModalitiesInStudy", "00080061", "CS", Level.study),
    Attribute("ReferringPhysicianName", "00080090", "PN", Level.study),
    Attribute("TimezoneOffsetFromUTC", "00080201", "SH", Level.study),
    Attribute("StudyDescription", "00081030", "LO", Level.study),
    Attribute("PatientName", "00100010", "PN", Level.study),
    Attribute("PatientID", "00100020", "LO", Level.study),
    Attribute("IssuerOfPatientID", "00100021", "LO", Level.study),
    Attribute("PatientBirthDate", "00100030", "DA", Level.study),
    Attribute("PatientSex", "00100040", "CS", Level.study),
    Attribute("StudyInstanceUID", "0020000D", "UI", Level.study),
    Attribute("StudyID", "00200010", "SH", Level.study),
    Attribute("NumberOfStudyRelatedSeries", "00201206", "IS", Level.study),
    Attribute("NumberOfStudyRelatedInstances", "00201208", "IS", Level.study),
    # Series level (Table 10.6.3-4).
    Attribute("Modality", "00080060", "CS", Level.series),
    Attribute("SeriesDescription", "0008103E", "LO", Level.series),
    Attribute("SeriesInstanceUID", "0020000E", "UI", Level.series),
    Attribute("SeriesNumber", "00200011", "IS", Level.series),
    Attribute("NumberOfSeriesRelatedInstances", "00201209", "IS", Level.series),
    # Instance level (Table 10.6.3-5).
    Attribute("SOPClassUID", "00080016", "UI", Level.instance),
    Attribute("SOPInstanceUID", "00080018", "UI", Level.instance),
    Attribute("InstanceNumber", "00200013", "IS", Level.instance),
    Attribute("Rows", "00280010", "US", Level.instance),
    Attribute("Columns", "00280011", "US", Level.instance),
    Attribute("NumberOfFrames", "00280008", "IS", Level.instance),
)
BY_KEYWORD: Mapping[str, Attribute] = {a.keyword: a for a in _ALL}
BY_TAG: Mapping[str, Attribute] = {a.tag: a for a in _ALL}

# Returned at every level whatever was asked (PS3.18 Table 10.6.3-2: the JSON is UTF-8).
SPECIFIC_CHARACTER_SET = "00080005"
INSTANCE_AVAILABILITY = "00080056"
RETRIEVE_URL = "00081190"

# What each level returns without includefield (PS3.18 Tables 10.6.3-3 to -5, and what OHIF reads).
DEFAULT_RETURNED: Mapping[Level, tuple[str, ...]] = {
    Level.study: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "StudyDescription",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.series: (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "StudyInstanceUID",
    ),
    Level.instance: (
        "SOPClassUID",
        "SOPInstanceUID",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
    ),
}


def lookup(key: str) -> Attribute | None:
    """The attribute a query key names, by keyword or by tag (8 hex digits, any case); None otherwise."""
    found = BY_KEYWORD.get(key)
    if found is None and len(key) == 8:
        found = BY_TAG.get(key.upper())
    return found


def element(attribute: Attribute, value: Any) -> dict[str, Any]:
    """One DICOM JSON element (PS3.18 F.2): {"vr": ..., "Value": [...]}, without Value when empty."""
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return {"vr": attribute.vr}
    values = list(value) if isinstance(value, list | tuple) else [value]
    if attribute.vr == "PN":
        return {"vr": "PN", "Value": [person_name(str(v)) for v in values]}
    if attribute.vr in ("IS", "US"):
        return {"vr": attribute.vr, "Value": [int(v) for v in values]}
    return {"vr": attribute.vr, "Value": [str(v) for v in values]}


def person_name(value: str) -> dict[str, str]:
    """A PN value as DICOM JSON writes it: its component groups as Alphabetic, Ideographic, Phonetic."""
    groups = value.split("=")
    return {
        name: group for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False) if group
    }


def dataset(values: Iterable[tuple[Attribute, Any]], extra: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A DICOM JSON dataset of these attributes and the extra elements, keys in tag order."""
    items: dict[str, dict[str, Any]] = {attribute.tag: element(attribute, value) for attribute, value in values}
    items.update(extra)
    return {tag: items[tag] for tag in sorted(items)}
