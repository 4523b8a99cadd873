"""Structural checks that refuse damaged files before any decoder sees them: a medical store keeps only whole images."""

from __future__ import annotations

import struct
import zlib

from shared.core.errors import InvalidImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
DICOM_PREFIX_OFFSET = 128
# Some encoders pad a JPEG after its EOI marker (NULs to an even length, a newline); more than this is damage.
_JPEG_MAX_TRAILING_PADDING = 16
_JPEG_PADDING = b"\x00 \t\r\n"
# A bare dataset (no preamble) starts with a group 0002 or 0008 element in either byte order.
_BARE_DICOM_GROUPS = frozenset({0x0002, 0x0008})
# Explicit VR elements whose length field is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_INFLATE_CHUNK = 1 << 20


def damaged() -> InvalidImage:
    """The one message for a file that is cut short or corrupted."""
    return InvalidImage("The image data is damaged or incomplete.")


def is_png(data: bytes) -> bool:
    """Whether the bytes start with the PNG signature."""
    return data.startswith(PNG_SIGNATURE)


def is_jpeg(data: bytes) -> bool:
    """Whether the bytes start with a JPEG SOI followed by a marker."""
    return data.startswith(JPEG_SOI)


def has_dicom_prefix(data: bytes) -> bool:
    """Whether the bytes are a DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    return data[DICOM_PREFIX_OFFSET : DICOM_PREFIX_OFFSET + 4] == b"DICM"


def looks_like_bare_dicom(data: bytes) -> bool:
    """Whether the bytes may be a DICOM dataset without preamble: worth handing to pydicom."""
    if len(data) < 8:
        return False
    little, big = struct.unpack_from("<H", data)[0], struct.unpack_from(">H", data)[0]
    return little in _BARE_DICOM_GROUPS or big in _BARE_DICOM_GROUPS


def check_png(data: bytes) -> None:
    """Walk every chunk, verify its CRC and require IEND; Pillow checks neither for image data."""
    view = memoryview(data)
    offset = len(PNG_SIGNATURE)
    while True:
        if offset + 12 > len(view):
            raise damaged()
        (length,) = struct.unpack_from(">I", view, offset)
        end = offset + 8 + length
        if end + 4 > len(view):
            raise damaged()
        (expected,) = struct.unpack_from(">I", view, end)
        if zlib.crc32(view[offset + 4 : end]) != expected:
            raise damaged()
        if bytes(view[offset + 4 : offset + 8]) == b"IEND":
            return
        offset = end + 4


def check_jpeg(data: bytes) -> None:
    """Require the EOI marker at the end, allowing a few bytes of padding after it."""
    tail = data[-(_JPEG_MAX_TRAILING_PADDING + 2) :].rstrip(_JPEG_PADDING)
    if not tail.endswith(b"\xff\xd9"):
        raise damaged()


def dicom_meta_end(data: bytes) -> tuple[int, str | None]:
    """Offset of the dataset after a Part 10 file meta group, and the transfer syntax UID the group declares."""
    offset = DICOM_PREFIX_OFFSET + 4
    transfer_syntax: str | None = None
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            if offset + 12 > len(data):
                raise damaged()
            (length,) = struct.unpack_from("<I", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if start + length > len(data):
            raise damaged()
        if element == 0x0010:
            transfer_syntax = data[start : start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset = start + length
    return offset, transfer_syntax


def check_inflated_size(data: bytes, *, start: int, limit: int) -> None:
    """Refuse a deflated dataset that inflates beyond limit bytes, without holding the inflated data:
    inflated a chunk at a time, counted and dropped, stopping as soon as the count passes the limit."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = memoryview(data)[start:]
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            total += len(chunk)
            if total > limit:
                raise InvalidImage(
                    f"The DICOM file inflates to more than we accept ({limit >> 20} MiB for a deflated dataset)."
                )
            pending = memoryview(inflater.unconsumed_tail)
            if not chunk and not pending:
                break  # the input ended before the deflate stream did
    except zlib.error as error:
        raise damaged() from error
    if not inflater.eof:
        raise damaged()


def encoded_frame_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares, or None when it names none."""
    if frame.startswith(b"\xff\xd8"):
        return _jpeg_frame_size(frame)
    # A raw J2K codestream starts with SOC+SIZ; a JP2 wrapper holds one a few boxes in.
    siz = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if siz >= 0 and siz + 24 <= len(frame):
        x_size, y_size, x_offset, y_offset = struct.unpack_from(">IIII", frame, siz + 8)
        return max(0, y_size - y_offset), max(0, x_size - x_offset)
    return None


def _jpeg_frame_size(frame: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            return None
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        (length,) = struct.unpack_from(">H", frame, offset + 2)
        # SOF0-15 except DHT (C4), JPG (C8) and DAC (CC); F7 is JPEG-LS SOF55.
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if offset + 9 > len(frame):
                return None
            rows, columns = struct.unpack_from(">HH", frame, offset + 5)
            return rows, columns
        if marker == 0xDA:  # start of scan without a frame header
            return None
        offset += 2 + length
    return None
