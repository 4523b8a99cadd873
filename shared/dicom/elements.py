"""One element's value, from its encoded bytes to its DICOM JSON form (PS3.18 F.2.3-F.2.7).

Numbers, dates, UIDs and tags are converted here from the bytes; text goes through pydicom's
character set handling (ISO 2022 escapes, multi-byte sets) with the dataset's Specific Character
Set. A dataset that declares none but holds non-ASCII text is decoded as UTF-8 when the bytes are
valid UTF-8, else as ISO 8859-1: writers that omit (0008,0005) mostly write UTF-8, and text in any
other encoding is almost never valid UTF-8 by accident (its multi-byte sequences are strict), while
ISO 8859-1 (ISO_IR 100, the commonest single-byte set in the wild) decodes any byte.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.valuerep import PersonName
from pydicom.values import convert_PN, convert_single_string, convert_text

# Binary values JSON carries as InlineBinary (up to the bulk threshold) or BulkDataURI.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# VRs a Metadata resource may replace by a Bulkdata URI (PS3.18 10.4.3.3.2 and F.2.2).
BULK_CAPABLE_VRS = BINARY_VRS | frozenset(
    {"DS", "FL", "FD", "IS", "LT", "SL", "SS", "ST", "SV", "UC", "UL", "US", "UT", "UV"}
)
_TEXT_MULTI = frozenset({"SH", "LO", "UC"})
_TEXT_SINGLE = frozenset({"ST", "LT", "UT", "UR"})
# The Default Character Repertoire only (PS3.5 6.2): codes, dates, times, UIDs.
CODE_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
KNOWN_VRS = (
    BULK_CAPABLE_VRS | _TEXT_MULTI | _TEXT_SINGLE | CODE_VRS | frozenset({"AT", "PN", "SQ"}) | frozenset(_NUMBERS)
)
# Beyond 2**53 a JSON number loses precision in JavaScript: SV and UV values past it go as strings.
_MAX_SAFE_INTEGER = 2**53
_DS = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IS = re.compile(r"[+-]?\d+")

_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})

Charset = list[str] | None  # Python encodings of (0008,0005); None: the dataset declares none


def dataset_charset(value: bytes | None, inherited: Charset) -> Charset:
    """The encodings of a dataset: its own (0008,0005), else those of the dataset it is nested in.
    None when it has the Default Character Repertoire (ASCII), whose non-ASCII bytes are then read as
    UTF-8 or ISO 8859-1 like those of a dataset that declares no set."""
    if value is None:
        return inherited
    terms = [term.strip(" \x00") for term in value.decode("latin-1").split("\\")]
    if not any(terms):
        return inherited
    if all(term in _DEFAULT_REPERTOIRE for term in terms):
        return None
    return convert_encodings(terms)


def resolve_vr(tag: int, vr: str | None, *, private_creator: str | None, long_value: bool) -> str:
    """The VR pydicom would give an element (which may still be ambiguous, "US or SS"): the VR the file
    states, else the dictionary's, else the private dictionary's (by the block's creator), else UN."""
    if vr is not None and vr != "UN":
        return vr
    is_private = bool((tag >> 16) & 1)
    if is_private:
        if 0x0010 <= (tag & 0xFFFF) <= 0x00FF:
            return "LO"  # a private creator
        if private_creator:
            try:
                return str(private_dictionary_VR(tag, private_creator))
            except KeyError:
                pass
        return "UN"
    if vr == "UN" and long_value:
        # pydicom keeps an explicit UN of 64 KiB or more as UN (PS3.5 6.2.2: the VR then cannot be known).
        return vr
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UL" if (tag & 0xFFFF) == 0 else "UN"


def fits(vr: str, length: int) -> bool:
    """Whether a value of this length can be of this VR: binary numbers and tags come in whole units."""
    kind = _NUMBERS.get(vr)
    if kind is not None:
        return length % struct.calcsize(kind) == 0
    return vr != "AT" or length % 4 == 0


def json_attribute(vr: str, value: bytes, *, little_endian: bool, charset: Charset) -> dict[str, Any]:
    """{"vr": ..., "Value": [...]} or {"vr": ..., "InlineBinary": ...}; without either for an empty value."""
    if not value:
        return {"vr": vr if vr in KNOWN_VRS else "UN"}
    if vr in BINARY_VRS or vr not in KNOWN_VRS:
        return inline_binary(vr if vr in KNOWN_VRS else "UN", value, little_endian=little_endian)
    values: list[Any] | None
    if vr in _NUMBERS:
        values = _numbers(vr, value, little_endian)
    elif vr == "AT":
        values = _tags(value, little_endian)
    elif vr == "DS":
        values = [_decimal(text) for text in _split(_ascii(value, charset))]
    elif vr == "IS":
        values = [_integer(text) for text in _split(_ascii(value, charset))]
    elif vr == "PN":
        values = _person_names(value, charset)
    elif vr in CODE_VRS:
        values = _codes(vr, _ascii(value, charset))
    elif vr in _TEXT_MULTI:
        texts = convert_text(value, _encodings(value, charset), vr)
        values = _strings([texts] if isinstance(texts, str) else list(texts), strip=True)
    else:  # ST, LT, UT, UR: one value, backslashes included; leading spaces count (PS3.5 6.2)
        text = _clean(convert_single_string(value, _encodings(value, charset), vr)).rstrip(" ")
        values = [text] if text else []
    if values is None:
        # A length that does not fit the VR: the bytes as they are, as pydicom does (UN).
        return inline_binary("UN", value, little_endian=little_endian)
    if not values or values == [None]:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def inline_binary(vr: str, value: bytes, *, little_endian: bool) -> dict[str, Any]:
    """Binary values are little endian in DICOMweb (PS3.18 8.7.3.3.1); UN keeps its bytes (F.2.2 note 4)."""
    size = _WORD_SIZE.get(vr)
    if not little_endian and size is not None and len(value) % size == 0:
        value = swap_bytes(value, size)
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


def swap_bytes(value: bytes, size: int) -> bytes:
    """Big-endian words of `size` bytes as little-endian ones."""
    count = len(value) // size
    kind = {2: "H", 4: "I", 8: "Q"}[size]
    return struct.pack(f"<{count}{kind}", *struct.unpack(f">{count}{kind}", value))


def person_name_groups(value: dict[str, str] | None) -> str | None:
    """A DICOM JSON person name as DICOM writes it: Alphabetic=Ideographic=Phonetic, trailing empty groups left out."""
    if not value:
        return None
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups) or None


def _encodings(value: bytes, charset: Charset) -> list[str]:
    if charset is not None:
        return charset
    if value.isascii():
        return ["iso8859"]
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return ["latin_1"]
    return ["UTF8"]


def _clean(text: str) -> str:
    # NUL is no character of any DICOM text VR (only UI and binary padding), and PostgreSQL's text and
    # jsonb refuse it.
    return text.replace("\x00", "") if "\x00" in text else text


def _ascii(value: bytes, charset: Charset) -> str:
    if value.isascii():
        return _clean(value.decode("ascii"))
    return _clean(convert_single_string(value, _encodings(value, charset)))


def _split(text: str) -> list[str]:
    return [part.strip(" ") for part in text.split("\\")]


def _strings(parts: Sequence[str], *, strip: bool) -> list[Any]:
    cleaned = [_clean(part).strip(" ") if strip else _clean(part).rstrip(" ") for part in parts]
    return [part if part else None for part in cleaned]


def _codes(vr: str, text: str) -> list[Any]:
    if vr == "UI":
        text = text.rstrip("\x00 ")
    return _strings(text.split("\\"), strip=True)


def _numbers(vr: str, value: bytes, little_endian: bool) -> list[Any] | None:
    kind = _NUMBERS[vr]
    size = struct.calcsize(kind)
    if len(value) % size:
        return None
    numbers = struct.unpack(f"{'<' if little_endian else '>'}{len(value) // size}{kind}", value)
    if vr in ("FL", "FD"):
        return [number if math.isfinite(number) else _non_finite(number) for number in numbers]
    if vr in ("SV", "UV"):
        return [number if abs(number) <= _MAX_SAFE_INTEGER else str(number) for number in numbers]
    return list(numbers)


def _non_finite(number: float) -> str:
    # JSON has no NaN or infinities; the string is what JavaScript's Number() reads back.
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def _tags(value: bytes, little_endian: bool) -> list[Any] | None:
    if len(value) % 4:
        return None
    words = struct.unpack(f"{'<' if little_endian else '>'}{len(value) // 2}H", value)
    return [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, len(words), 2)]


def _decimal(text: str) -> Any:
    """A DS value as a JSON number when the number reads back as the same decimal; else the string,
    as PS3.18 F.2.3 allows (to keep its precision, or a value that is no number at all)."""
    if not text:
        return None
    if _IS.fullmatch(text):
        number = int(text)
        return number if abs(number) <= _MAX_SAFE_INTEGER else text
    if not _DS.fullmatch(text):
        return text
    as_float = float(text)
    if not math.isfinite(as_float):
        return text
    if repr(as_float) == text:
        return as_float
    try:
        exact = Decimal(repr(as_float)) == Decimal(text)
    except InvalidOperation:
        return text
    return as_float if exact else text


def _integer(text: str) -> Any:
    """An IS value as a JSON number; a value that is no integer stays a string (PS3.18 F.2.3)."""
    if not text:
        return None
    if _IS.fullmatch(text):
        number = int(text)
        return number if abs(number) <= _MAX_SAFE_INTEGER else text
    return text


def _person_names(value: bytes, charset: Charset) -> list[Any]:
    names = convert_PN(value, _encodings(value, charset))
    result: list[Any] = []
    for name in [names] if isinstance(names, PersonName) else list(names):
        groups = {}
        for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), name.components, strict=False):
            text = _clean(group).rstrip(" ")
            # A group of carets alone ("^^^^") has no name component (F.2.2 keeps the non-empty ones).
            if text.strip("^ "):
                groups[key] = text
        result.append(groups or None)
    return result
