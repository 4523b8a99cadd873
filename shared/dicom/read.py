"""A guarded read: the bytes of one DICOM file to pydicom's raw dataset, with the offsets of its values.

Nothing large is copied: pydicom reads the top-level dataset with values over DEFER_SIZE left unread
(Pixel Data included), and the caller reads a value from `source` by its offset when it needs it.
A file cut short, a length that runs past the end, or bytes after the last element other than
padding are refused, as is a deflated dataset that would inflate past MAX_HEADER_BYTES.

pydicom's messages quote header values (patient data): its warnings are silenced while it reads,
its validation is off, its logger never reaches a handler of ours, and no exception it raises is
passed on, not even as a cause.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag

from shared.core.errors import InvalidDicom

# Values longer than this stay unread in the top-level dataset (pydicom's defer_size).
DEFER_SIZE = 1024
# What one file may make us hold beyond its own bytes: the inflated dataset of a deflated file, and the
# text and numbers we decode into the DICOM JSON. Real headers, enhanced multi-frame ones included,
# are a few MB.
MAX_HEADER_BYTES = 64 << 20
# Top-level elements: real datasets have hundreds; the limit stops a file of tiny elements early.
MAX_TOP_LEVEL_ELEMENTS = 100_000

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})

UNDEFINED_LENGTH = 0xFFFFFFFF
PREAMBLE = 128
# Explicit VR elements whose length field is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# A dataset without the Part 10 header starts with its meta group or with group 0008.
_BARE_FIRST_GROUPS = frozenset({0x0002, 0x0008})
_INFLATE_CHUNK = 1 << 20

NOT_DICOM = "The file is not a readable DICOM dataset."
DAMAGED = "The DICOM file is damaged or incomplete."
TOO_LARGE = "The DICOM file's header is larger than we accept."

_pydicom_logger = logging.getLogger("pydicom")
# pydicom logs warnings that quote header values (patient data); nothing of it may reach a log handler.
_pydicom_logger.propagate = False

T = TypeVar("T")


@dataclass(frozen=True)
class TopLevelElement:
    """A top-level element as the reader met it: where its value starts and how long it is."""

    tag: int
    vr: str | None
    length: int
    value_offset: int


@dataclass(frozen=True)
class ReadInstance:
    """A read dataset and the bytes its offsets point into.

    source is the file itself, or for a deflated file its inflated dataset (offsets_in_file False);
    stream reads the same bytes, for sequences read in place.
    """

    dataset: Dataset
    source: bytes
    stream: io.BytesIO
    offsets_in_file: bool
    declared_transfer_syntax: str | None
    is_implicit_vr: bool
    is_little_endian: bool
    elements: tuple[TopLevelElement, ...]
    stopped_at: int | None


def guarded(read: Callable[[], T]) -> T:
    """Run a pydicom read with validation off and its warnings silenced; its errors become InvalidDicom."""
    # Set, never restored: a process-wide flag that another thread could restore mid-read (shared.imaging
    # sets the same). pydicom's WARN mode quotes an invalid value in a warning and a log line.
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read()
    except (InvalidDicom, MemoryError):
        raise
    except Exception:
        # pydicom's messages can quote header values: never pass them on, not even as a cause.
        raise InvalidDicom(NOT_DICOM) from None


def read_instance(data: bytes) -> ReadInstance:
    """Read the file's dataset (Part 10, or a bare dataset pydicom reads with force=True)."""
    if data[PREAMBLE : PREAMBLE + 4] == b"DICM":
        meta_start = PREAMBLE + 4
    elif _looks_bare(data):
        meta_start = 0
    else:
        raise InvalidDicom(NOT_DICOM)
    meta_end, declared = _meta_group(data, meta_start)
    if declared == DEFLATED:
        return guarded(lambda: _read_deflated(data, meta_end))
    if data[meta_end : meta_end + 2] == b"\x00\x00":
        # A command group (0000) has no place in a stored dataset, and pydicom reads one element by
        # element to its end: a file of zeros would keep it busy for seconds.
        raise InvalidDicom(NOT_DICOM)
    return guarded(lambda: _read_plain(data, declared))


def _looks_bare(data: bytes) -> bool:
    if len(data) < 8:
        return False
    little, big = struct.unpack_from("<H", data)[0], struct.unpack_from(">H", data)[0]
    return little in _BARE_FIRST_GROUPS or big in _BARE_FIRST_GROUPS


def _meta_group(data: bytes, offset: int) -> tuple[int, str | None]:
    """Where the group 0002 elements (Explicit VR Little Endian) end, and the transfer syntax they declare."""
    declared: str | None = None
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6].decode("latin-1")
        if vr in LONG_VRS:
            if offset + 12 > len(data):
                raise InvalidDicom(DAMAGED)
            (length,) = struct.unpack_from("<I", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if start + length > len(data):
            raise InvalidDicom(DAMAGED)
        if element == 0x0010:
            declared = data[start : start + length].rstrip(b"\x00 ").decode("latin-1")
        offset = start + length
    return offset, declared


class _TopLevel:
    """pydicom's stop_when for the top-level dataset: records where each element's value starts, and
    stops at what cannot begin an element there (items, delimiters, group 0000: padding after the data)."""

    def __init__(self, stream: io.BytesIO) -> None:
        self.stream = stream
        self.elements: list[TopLevelElement] = []
        self.stopped_at: int | None = None

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        value_offset = self.stream.tell()
        group = tag >> 16
        if group in (0x0000, 0xFFFE) or len(self.elements) >= MAX_TOP_LEVEL_ELEMENTS:
            # pydicom passes vr=None for an implicit VR element.
            header = 12 if vr in LONG_VRS else 8
            self.stopped_at = value_offset - header
            return True
        self.elements.append(TopLevelElement(int(tag), vr, length, value_offset))
        return False


def _read_plain(data: bytes, declared: str | None) -> ReadInstance:
    stream = io.BytesIO(data)
    top = _TopLevel(stream)
    ds = read_partial(stream, stop_when=top, defer_size=DEFER_SIZE, force=True)
    return _finish(ds, data, stream, top, declared=declared, offsets_in_file=True)


def _read_deflated(data: bytes, meta_end: int) -> ReadInstance:
    # pydicom inflates the whole rest of the file in one call, however large: inflate here, with a cap.
    inflated = _inflate(data, meta_end)
    stream = io.BytesIO(inflated)
    top = _TopLevel(stream)
    ds = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=top, defer_size=DEFER_SIZE)
    return _finish(ds, inflated, stream, top, declared=DEFLATED, offsets_in_file=False)


def _inflate(data: bytes, start: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    chunks: list[bytes] = []
    total = 0
    pending = memoryview(data)[start:]
    try:
        while pending and not inflater.eof:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            total += len(chunk)
            if total > MAX_HEADER_BYTES:
                raise InvalidDicom(TOO_LARGE)
            chunks.append(chunk)
            pending = memoryview(inflater.unconsumed_tail)
    except zlib.error:
        raise InvalidDicom(DAMAGED) from None
    if not inflater.eof:
        raise InvalidDicom(DAMAGED)
    return b"".join(chunks)


def _finish(
    ds: Dataset,
    source: bytes,
    stream: io.BytesIO,
    top: _TopLevel,
    *,
    declared: str | None,
    offsets_in_file: bool,
) -> ReadInstance:
    elements = tuple(top.elements)
    if not elements:
        raise InvalidDicom(NOT_DICOM)
    for element in elements:
        if element.length != UNDEFINED_LENGTH and element.value_offset + element.length > len(source):
            raise InvalidDicom(DAMAGED)
    if elements[-1].tag not in ds:
        # pydicom drops an undefined-length value whose end the file never reaches (it warns, no more).
        raise InvalidDicom(DAMAGED)
    implicit, little = _found_encoding(ds)
    return ReadInstance(
        dataset=ds,
        source=source,
        stream=stream,
        offsets_in_file=offsets_in_file,
        declared_transfer_syntax=declared,
        is_implicit_vr=bool(implicit),
        is_little_endian=bool(little),
        elements=elements,
        stopped_at=top.stopped_at,
    )


def _found_encoding(ds: Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) as pydicom read the dataset: it corrects a transfer syntax that says
    explicit VR for implicit VR data, and guesses for a bare dataset."""
    tags = ds.keys()
    for tag in tags:
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            return raw.is_implicit_VR, raw.is_little_endian
    return True, True


def check_tail(read: ReadInstance, end: int | None) -> None:
    """Refuse bytes after the dataset other than NUL padding. end: where the last element ends, None
    when the reader cannot tell (an undefined-length sequence, parsed up to its delimiter)."""
    start = read.stopped_at if read.stopped_at is not None else end
    if start is None:
        return
    source = read.source
    if start > len(source) or source.count(b"\x00", start) != len(source) - start:
        raise InvalidDicom(DAMAGED)
