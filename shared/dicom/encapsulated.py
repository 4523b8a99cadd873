"""The items of an encapsulated value (PS3.5 A.4), walked by their lengths: the Basic Offset Table,
then the fragments, then the Sequence Delimitation Item. Lengths that run past the data, an item
of undefined length, or anything but an item where one must be refuse the file."""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from shared.core.errors import InvalidDicom

ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"
# Whole-slide images reach a few hundred thousand frames; a file of empty items stops here.
MAX_FRAGMENTS = 1 << 20
DAMAGED_PIXEL_DATA = "The DICOM file's encapsulated pixel data is damaged."


@dataclass(frozen=True)
class Encapsulated:
    """Where the parts of an encapsulated value are in the source bytes.

    Fragment offsets are those of their values (after the 8-byte item header); fragments_start is the
    first fragment's item tag, where the Basic and Extended Offset Tables count from.
    """

    offset: int
    basic_offsets: tuple[int, ...]
    fragments_start: int
    fragment_offsets: array[int]
    fragment_lengths: array[int]
    end: int

    @property
    def value_length(self) -> int:
        """The value's length: its items, without the Sequence Delimitation Item."""
        return self.end - 8 - self.offset


def parse_encapsulated(source: bytes, offset: int) -> Encapsulated:
    """Walk the items of the encapsulated value starting at offset (little endian, as PS3.5 A.4 has it)."""
    size = len(source)
    if offset + 8 > size or source[offset : offset + 4] != ITEM:
        raise InvalidDicom(DAMAGED_PIXEL_DATA)
    (table_length,) = struct.unpack_from("<I", source, offset + 4)
    position = offset + 8 + table_length
    if table_length % 4 or position > size:
        raise InvalidDicom(DAMAGED_PIXEL_DATA)
    basic_offsets = struct.unpack_from(f"<{table_length // 4}I", source, offset + 8)
    fragments_start = position
    offsets, lengths = array("q"), array("q")
    while True:
        if position + 8 > size:
            raise InvalidDicom(DAMAGED_PIXEL_DATA)
        tag = source[position : position + 4]
        (length,) = struct.unpack_from("<I", source, position + 4)
        if tag == SEQUENCE_DELIMITER:
            return Encapsulated(offset, tuple(basic_offsets), fragments_start, offsets, lengths, position + 8)
        if tag != ITEM or length == 0xFFFFFFFF or position + 8 + length > size or len(offsets) >= MAX_FRAGMENTS:
            raise InvalidDicom(DAMAGED_PIXEL_DATA)
        offsets.append(position + 8)
        lengths.append(length)
        position += 8 + length
