"""describe_instance(): one DICOM file's bytes to everything DICOMweb will ever need about it."""

from __future__ import annotations

import json
import re
from typing import Any

from pydicom.dataelem import RawDataElement

from shared.core.errors import InvalidDicom
from shared.dicom.frames import FrameTable, ImageGeometry, encapsulated_frames, native_frames, read_offsets
from shared.dicom.json_model import PIXEL_DATA, PIXEL_DATA_TAGS, DicomJson, build_json
from shared.dicom.qido import qido_attributes
from shared.dicom.read import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    UNDEFINED_LENGTH,
    ReadInstance,
    check_tail,
    guarded,
    read_instance,
)
from shared.dicom.record import BulkElement, InstanceRecord

# PS3.5 9.1: digits and dots, at most 64 characters. UIDs go into DICOMweb paths as they are.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_UID_LENGTH = 64
MISSING_UIDS = "The DICOM file lacks a valid SOP Class, SOP Instance, Study or Series Instance UID."
_SOP_CLASS_UID, _SOP_INSTANCE_UID = 0x00080016, 0x00080018
_STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID = 0x0020000D, 0x0020000E
_EXTENDED_OFFSET_TABLE, _EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00001, 0x7FE00002
_LITTLE_ENDIAN_NATIVE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})


def describe_instance(data: bytes) -> InstanceRecord:
    """Everything DICOMweb needs about one DICOM file (Part 10, or a bare dataset without the preamble/meta
    if pydicom can read it with force=True and it has SOP Class/Instance UIDs)."""
    return guarded(lambda: _describe(data))


def _describe(data: bytes) -> InstanceRecord:
    read = read_instance(data)
    sop_class_uid, sop_instance_uid, study_uid, series_uid = (
        _uid(read, tag) for tag in (_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID)
    )
    dicom_json = build_json(read, sop_instance_uid=sop_instance_uid)
    _check_end(read, dicom_json)
    transfer_syntax = _transfer_syntax(read)
    # The transfer syntax of the stored file, the one attribute of its File Meta Information a client
    # needs to read the bulk data (the rest describes the file, not the instance: PS3.10 7.1).
    attributes = {"00020010": {"vr": "UI", "Value": [transfer_syntax]}, **dicom_json.attributes}
    ds = read.dataset
    has_pixel_data = any(tag in ds for tag in PIXEL_DATA_TAGS)
    number_of_frames = _number_of_frames(attributes) if has_pixel_data else 0
    return InstanceRecord(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        transfer_syntax_uid=transfer_syntax,
        has_pixel_data=has_pixel_data,
        rows=_us(attributes, "00280010"),
        columns=_us(attributes, "00280011"),
        number_of_frames=number_of_frames,
        attributes=qido_attributes(attributes),
        metadata_json=json.dumps(attributes, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
        bulk_data=tuple(
            BulkElement(value.path, value.vr, value.offset if read.offsets_in_file else None, value.length)
            for value in dicom_json.bulk
        ),
        frames=_frames(read, dicom_json, attributes, transfer_syntax, number_of_frames),
    )


def _uid(read: ReadInstance, tag: int) -> str:
    raw = read.dataset.get_item(tag, keep_deferred=True) if tag in read.dataset else None
    value = raw.value if isinstance(raw, RawDataElement) else None
    text = value.decode("latin-1").strip("\x00 ") if value else ""
    if len(text) > _MAX_UID_LENGTH or not _UID.fullmatch(text):
        raise InvalidDicom(MISSING_UIDS)
    return text


def _check_end(read: ReadInstance, dicom_json: DicomJson) -> None:
    last = read.elements[-1]
    if last.length != UNDEFINED_LENGTH:
        end: int | None = last.value_offset + last.length
    else:
        items = dicom_json.encapsulated.get(last.tag)
        end = items.end if items is not None else None
    check_tail(read, end)


def _transfer_syntax(read: ReadInstance) -> str:
    declared = read.declared_transfer_syntax
    if declared and len(declared) <= _MAX_UID_LENGTH and _UID.fullmatch(declared) and declared not in NATIVE_SYNTAXES:
        return declared
    # A bare dataset, a meta group without the element, or a native syntax: how pydicom found the data encoded
    # (it reads through a meta group that says explicit VR for implicit VR data).
    if read.is_implicit_vr:
        return IMPLICIT_VR_LITTLE_ENDIAN
    return EXPLICIT_VR_LITTLE_ENDIAN if read.is_little_endian else EXPLICIT_VR_BIG_ENDIAN


def _first(attributes: dict[str, Any], tag: str) -> Any:
    values = attributes.get(tag, {}).get("Value")
    return values[0] if values else None


def _us(attributes: dict[str, Any], tag: str) -> int | None:
    value = _first(attributes, tag)
    return value if isinstance(value, int) else None


def _number_of_frames(attributes: dict[str, Any]) -> int:
    # Absent, empty or not a number: one frame, as pydicom reads it.
    value = _first(attributes, "00280008")
    return value if isinstance(value, int) and value >= 1 else 1


def _frames(
    read: ReadInstance, dicom_json: DicomJson, attributes: dict[str, Any], transfer_syntax: str, number_of_frames: int
) -> FrameTable | None:
    ds = read.dataset
    if not read.offsets_in_file or PIXEL_DATA not in ds:
        return None
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    assert isinstance(raw, RawDataElement)
    if raw.length == UNDEFINED_LENGTH:
        items = dicom_json.encapsulated.get(PIXEL_DATA)
        if items is None or transfer_syntax in NATIVE_SYNTAXES:
            return None
        return encapsulated_frames(
            read.source,
            items,
            number_of_frames=number_of_frames,
            transfer_syntax=transfer_syntax,
            extended_offsets=_extended_offsets(read),
        )
    if transfer_syntax not in _LITTLE_ENDIAN_NATIVE:
        return None
    rows, columns = _us(attributes, "00280010"), _us(attributes, "00280011")
    samples, bits = _us(attributes, "00280002"), _us(attributes, "00280100")
    if rows is None or columns is None or samples is None or bits is None:
        return None
    photometric = _first(attributes, "00280004")
    geometry = ImageGeometry(rows, columns, samples, bits, photometric if isinstance(photometric, str) else None)
    return native_frames(raw.value_tell, raw.length, geometry, number_of_frames)


def _extended_offsets(read: ReadInstance) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    tables = [_value(read, tag) for tag in (_EXTENDED_OFFSET_TABLE, _EXTENDED_OFFSET_TABLE_LENGTHS)]
    if tables[0] is None or tables[1] is None:
        return None
    offsets, lengths = read_offsets(tables[0]), read_offsets(tables[1])
    return (offsets, lengths) if offsets is not None and lengths is not None else None


def _value(read: ReadInstance, tag: int) -> bytes | None:
    raw = read.dataset.get_item(tag, keep_deferred=True) if tag in read.dataset else None
    if not isinstance(raw, RawDataElement) or raw.length in (0, UNDEFINED_LENGTH):
        return None
    if raw.value is not None:
        return bytes(raw.value)
    return read.source[raw.value_tell : raw.value_tell + raw.length]
