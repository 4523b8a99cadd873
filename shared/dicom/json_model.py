"""The instance's DICOM JSON object (PS3.18 F.2) and the bulk data it points to, in one walk of the dataset.

Every attribute of the dataset goes in, sequences and private attributes included, ordered by tag
(F.2.2), except Group Length attributes (F.2.2 says they shall not be included), the command group
0000 and Data Set Trailing Padding (FFFC,FFFC), which are no attributes of the instance.

A value goes to bulk data, its JSON a BulkDataURI "instances/<SOPInstanceUID>/bulkdata/<path>", when
it is the top-level Pixel Data (always), a binary value (OB, OD, OF, OL, OV, OW, UN) over 1024 bytes,
or any other value over 64 KiB: text and number VRs may be bulk data too (F.2.2, 10.4.3.3.2), which
keeps a huge contour or LUT out of the metadata; a long value of a VR that may not be bulk data
(codes, names, dates: never that long in a real file) goes as UN, its bytes intact.

Text is decoded with the dataset's Specific Character Set and written as UTF-8, while (0008,0005) keeps
the file's value: it "reflects the character encoding of the source DICOM dataset and does not indicate
the character encoding of the JSON representation, which is UTF-8" (PS3.18 F.2.2 note 3, from CP-2518).
Rewriting it to "ISO_IR 192", as dcm2json did before that CP, would lose how the file was encoded.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_sequence

from shared.core.errors import InvalidDicom
from shared.dicom.elements import (
    BINARY_VRS,
    BULK_CAPABLE_VRS,
    CODE_VRS,
    Charset,
    dataset_charset,
    fits,
    json_attribute,
    resolve_vr,
)
from shared.dicom.encapsulated import Encapsulated, parse_encapsulated
from shared.dicom.read import DAMAGED, MAX_HEADER_BYTES, NOT_DICOM, TOO_LARGE, UNDEFINED_LENGTH, ReadInstance

PIXEL_DATA = 0x7FE00010
PIXEL_DATA_TAGS = frozenset({PIXEL_DATA, 0x7FE00008, 0x7FE00009})  # Pixel Data, Float and Double Float
BINARY_BULK_THRESHOLD = 1024
OTHER_BULK_THRESHOLD = 64 << 10
# Elements converted in one file, nested ones included. Enhanced multi-frame objects with thousands of
# frames have a few hundred thousand.
MAX_ELEMENTS = 2_000_000

_SPECIFIC_CHARACTER_SET = 0x00080005
_PIXEL_REPRESENTATION = 0x00280103
_BITS_ALLOCATED = 0x00280100
_WAVEFORM_BITS_ALLOCATED = 0x54001004
_LUT_DESCRIPTOR = 0x00283002
_LUT_DATA = 0x00283006
_TRAILING_PADDING = 0xFFFCFFFC
_ITEM_HEADER = 8


@dataclass(frozen=True)
class BulkValue:
    """A value kept out of the JSON: its path and VR, and where it is in the source bytes."""

    path: str
    vr: str
    offset: int
    length: int


@dataclass
class _Walk:
    read: ReadInstance
    bulk_data_uri: str
    bulk: list[BulkValue] = field(default_factory=list)
    budget: int = MAX_HEADER_BYTES
    elements: int = 0
    # Top-level encapsulated values by tag (Pixel Data): their items, for the frames and the file's end.
    encapsulated: dict[int, Encapsulated] = field(default_factory=dict)


@dataclass(frozen=True)
class _Level:
    """A dataset being walked: where its values may lie, its character set and the datasets it is nested in."""

    dataset: Dataset
    path: str
    limit: int
    charset: Charset
    parent: _Level | None
    top: bool


@dataclass(frozen=True)
class DicomJson:
    """The walk's result: the JSON object (top level) and what it left out as bulk data."""

    attributes: dict[str, Any]
    bulk: tuple[BulkValue, ...]
    encapsulated: dict[int, Encapsulated]


def build_json(read: ReadInstance, *, sop_instance_uid: str) -> DicomJson:
    """The top-level dataset as a DICOM JSON object, and its bulk data."""
    walk = _Walk(read=read, bulk_data_uri=f"instances/{sop_instance_uid}/bulkdata/")
    ds = read.dataset
    level = _Level(ds, "", len(read.source), dataset_charset(_raw_value(ds, _SPECIFIC_CHARACTER_SET), None), None, True)
    attributes = _dataset(walk, level)
    return DicomJson(attributes, tuple(walk.bulk), walk.encapsulated)


def _dataset(walk: _Walk, level: _Level) -> dict[str, Any]:
    result: dict[str, Any] = {}
    ds = level.dataset
    for tag in sorted(ds.keys()):
        group, element = tag >> 16, tag & 0xFFFF
        if element == 0 or group in (0x0000, 0x0002) or tag == _TRAILING_PADDING:
            continue
        walk.elements += 1
        if walk.elements > MAX_ELEMENTS:
            raise InvalidDicom(TOO_LARGE)
        result[f"{tag:08X}"] = _element(walk, level, tag)
    return result


def _element(walk: _Walk, level: _Level, tag: int) -> dict[str, Any]:
    raw = level.dataset.get_item(tag, keep_deferred=True)
    path = f"{level.path}{tag:08X}"
    if not isinstance(raw, RawDataElement):
        # pydicom parses an undefined-length sequence as it reads, and decodes the top-level Specific
        # Character Set; everything else stays raw.
        if raw.VR != "SQ":
            return _converted_text(raw)
        little = walk.read.is_little_endian
        return _sequence_attribute(_items(walk, level, path, raw.value, limit=level.limit, little=little))
    undefined = raw.length == UNDEFINED_LENGTH
    if not undefined and raw.value_tell + raw.length > level.limit:
        raise InvalidDicom(DAMAGED)
    vr = resolve_vr(
        tag,
        raw.VR,
        private_creator=_private_creator(level.dataset, tag),
        long_value=raw.value is not None and len(raw.value) >= 0xFFFF,
    )
    if " or " in vr:
        vr = _ambiguous(tag, vr, raw, level)
    if not undefined and not fits(vr, raw.length):
        vr = "UN"  # numbers of a length no number has: their bytes, as pydicom keeps them
    if vr == "SQ":
        return _sequence_attribute(_sequence(walk, level, path, raw))
    if undefined or (level.top and tag in PIXEL_DATA_TAGS) or _is_bulk(vr, raw.length):
        return _bulk(walk, level, path, tag, vr, raw)
    walk.budget -= raw.length
    if walk.budget < 0:
        raise InvalidDicom(TOO_LARGE)
    value = raw.value if raw.value is not None else walk.read.source[raw.value_tell : raw.value_tell + raw.length]
    return json_attribute(vr, value, little_endian=raw.is_little_endian, charset=level.charset)


def _sequence_attribute(items: list[dict[str, Any]]) -> dict[str, Any]:
    # A sequence of no items is an empty value: no "Value" (PS3.18 F.2.5); an empty item is {} (F.2.2).
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _is_bulk(vr: str, length: int) -> bool:
    if vr in BINARY_VRS:
        return length > BINARY_BULK_THRESHOLD
    return length > OTHER_BULK_THRESHOLD


def _bulk(walk: _Walk, level: _Level, path: str, tag: int, vr: str, raw: RawDataElement) -> dict[str, Any]:
    length = raw.length
    if length == UNDEFINED_LENGTH:
        if level.top:
            # Deferred by pydicom (unread): the items tell where the value ends.
            items = parse_encapsulated(walk.read.source, raw.value_tell)
            walk.encapsulated[tag] = items
            length = items.value_length
        else:
            length = len(raw.value or b"")
            if raw.value_tell + length + _ITEM_HEADER > level.limit:
                raise InvalidDicom(DAMAGED)
    if vr not in BULK_CAPABLE_VRS:
        vr = "UN"
    walk.bulk.append(BulkValue(path, vr, raw.value_tell, length))
    return {"vr": vr, "BulkDataURI": walk.bulk_data_uri + path}


def _sequence(walk: _Walk, level: _Level, path: str, raw: RawDataElement) -> list[dict[str, Any]]:
    """A sequence pydicom left raw, read in place from the source so that its offsets are the file's."""
    if raw.length == 0:
        return []
    # An explicit UN that the dictionary calls SQ holds Implicit VR Little Endian items (PS3.5 6.2.2).
    as_un = raw.VR == "UN"
    implicit, little = (True, True) if as_un else (raw.is_implicit_VR, raw.is_little_endian)
    stream: io.BytesIO = walk.read.stream
    stream.seek(raw.value_tell)
    items = read_sequence(stream, implicit, little, raw.length, default_encoding)
    if raw.length != UNDEFINED_LENGTH:
        end = raw.value_tell + raw.length
        if stream.tell() != end:
            raise InvalidDicom(DAMAGED)
        limit = end
    else:
        limit = level.limit
    return _items(walk, level, path, items, limit=limit, little=little)


def _items(walk: _Walk, level: _Level, path: str, items: Any, *, limit: int, little: bool) -> list[dict[str, Any]]:
    source = walk.read.source
    result = []
    for index, item in enumerate(items):
        start = getattr(item, "seq_item_tell", None)
        item_limit = limit
        if isinstance(start, int) and not item.is_undefined_length_sequence_item:
            if start + _ITEM_HEADER > limit:
                raise InvalidDicom(DAMAGED)
            (length,) = struct.unpack_from("<I" if little else ">I", source, start + 4)
            item_limit = min(limit, start + _ITEM_HEADER + length)
        charset = dataset_charset(_raw_value(item, _SPECIFIC_CHARACTER_SET), level.charset)
        result.append(_dataset(walk, _Level(item, f"{path}.{index}.", item_limit, charset, level, False)))
    return result


def _converted_text(element: DataElement) -> dict[str, Any]:
    if element.VR not in CODE_VRS:
        raise InvalidDicom(NOT_DICOM)
    return json_attribute(element.VR, _encoded(element), little_endian=True, charset=None)


def _encoded(element: DataElement) -> bytes:
    # Codes are ASCII (the Default Character Repertoire): encoding them back is exact.
    value = element.value
    values = [value] if isinstance(value, str) else list(value or [])
    return "\\".join(map(str, values)).encode("ascii", "replace")


def _raw_value(ds: Dataset, tag: int) -> bytes | None:
    raw = ds.get_item(tag, keep_deferred=True) if tag in ds else None
    if isinstance(raw, RawDataElement):
        return None if raw.value is None else bytes(raw.value)
    if isinstance(raw, DataElement) and raw.VR in CODE_VRS:
        return _encoded(raw)
    return None


def _first_us(ds: Dataset, tag: int) -> int | None:
    raw = ds.get_item(tag, keep_deferred=True) if tag in ds else None
    if not isinstance(raw, RawDataElement) or raw.value is None or len(raw.value) < 2:
        return None
    return int(struct.unpack_from("<H" if raw.is_little_endian else ">H", raw.value)[0])


def _private_creator(ds: Dataset, tag: int) -> str | None:
    if not (tag >> 16) & 1 or (tag & 0xFFFF) < 0x1000:
        return None
    value = _raw_value(ds, (tag & 0xFFFF0000) | ((tag & 0xFF00) >> 8))
    return value.decode("latin-1").strip(" \x00") if value else None


def _ambiguous(tag: int, vr: str, raw: RawDataElement, level: _Level) -> str:
    """The VR of an element the dictionary gives two (implicit VR files), by the rules of PS3.5 and PS3.3
    that pydicom's correct_ambiguous_vr applies: Pixel Data, US or SS by Pixel Representation, waveform
    and overlay data, LUT Data by its descriptor."""
    ds = level.dataset
    if tag == PIXEL_DATA:
        if raw.length == UNDEFINED_LENGTH:
            return "OB"  # encapsulated (PS3.5 A.4)
        bits = _first_us(ds, _BITS_ALLOCATED)
        return "OW" if raw.is_implicit_VR or (bits or 0) > 8 else "OB"
    if vr == "US or SS":
        current: _Level | None = level
        while current is not None:
            representation = _first_us(current.dataset, _PIXEL_REPRESENTATION)
            if representation is not None:
                return "SS" if representation == 1 else "US"
            current = current.parent
        return "US"
    if tag & 0xFF00FFFF == 0x60003000:
        return "OW"  # Overlay Data: OW in implicit VR (PS3.5 8.1.2)
    if tag == _LUT_DATA:
        return "US" if _first_us(ds, _LUT_DESCRIPTOR) == 1 else "OW"
    if vr == "OB or OW":
        bits = _first_us(ds, _WAVEFORM_BITS_ALLOCATED)
        return "OW" if raw.is_implicit_VR or (bits or 0) > 8 else "OB"
    return "OW" if "OW" in vr else vr.split(" or ")[0]
