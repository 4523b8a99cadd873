"""The frame table: where each frame's bytes are in the stored file, so that WADO-RS serves frames as
byte ranges, never decoded.

Native (uncompressed, little endian) Pixel Data: frame i is the i-th run of Rows x Columns x Samples
x Bits Allocated bits, when that is a whole number of bytes. Encapsulated Pixel Data: each frame is
one or more fragments, grouped by the Extended Offset Table, else the Basic Offset Table, else one
fragment per frame or all fragments in a single frame, else by the codestream markers that begin
and end a JPEG, JPEG-LS or JPEG 2000 frame. What cannot be told safely is None: serving a wrong
byte range as a frame is worse than decoding the file where the codecs are.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from shared.dicom.encapsulated import Encapsulated

Fragments = tuple[tuple[int, int], ...]
FrameTable = tuple[Fragments, ...]

_JPEG = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    }
)
_JPEG_2000 = frozenset(
    {
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Lossless
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)
# MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265: one stream for all frames, which no byte range splits.
VIDEO = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))

_SOI = b"\xff\xd8"  # JPEG and JPEG-LS start of image
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream starts with SOC then SIZ
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # or is wrapped in a JP2 file
_END_OF_IMAGE = b"\xff\xd9"  # JPEG EOI, JPEG 2000 EOC
# An end marker may be followed by padding to an even length, or a few bytes more (pydicom looks as far).
_END_MARKER_WINDOW = 10


@dataclass(frozen=True)
class ImageGeometry:
    """The Image Pixel module values that size a native frame."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    photometric_interpretation: str | None


def native_frames(offset: int, length: int, geometry: ImageGeometry, number_of_frames: int) -> FrameTable | None:
    """Frames of native Pixel Data whose value starts at offset; None unless each is whole bytes and all fit."""
    bits = geometry.rows * geometry.columns * geometry.samples_per_pixel * geometry.bits_allocated
    if geometry.photometric_interpretation == "YBR_FULL_422" and geometry.samples_per_pixel == 3:
        # Two luminance samples share one pair of chrominance samples (PS3.3 C.7.6.3.1.2).
        bits = bits * 2 // 3
    if bits <= 0 or bits % 8 or number_of_frames < 1:
        return None
    frame_length = bits // 8
    if number_of_frames * frame_length > length:
        return None
    return tuple(((offset + index * frame_length, frame_length),) for index in range(number_of_frames))


def encapsulated_frames(
    source: bytes,
    items: Encapsulated,
    *,
    number_of_frames: int,
    transfer_syntax: str,
    extended_offsets: tuple[tuple[int, ...], tuple[int, ...]] | None,
) -> FrameTable | None:
    """Group the fragments into frames (PS3.5 A.4, PS3.3 C.7.6.3.1.8); None when that cannot be told safely."""
    count = len(items.fragment_offsets)
    if count == 0 or number_of_frames < 1 or transfer_syntax in VIDEO:
        return None
    # Offset tables count from the first fragment's item tag.
    index_at = {items.fragment_offsets[i] - 8 - items.fragments_start: i for i in range(count)}
    if extended_offsets is not None:
        frames = _by_extended_table(items, index_at, extended_offsets, number_of_frames)
        if frames is not None:
            return frames
    frames = _by_basic_table(items, index_at, number_of_frames)
    if frames is not None:
        return frames
    if number_of_frames == 1:
        return (_fragments(items, 0, count),)
    if count == number_of_frames:
        return tuple(_fragments(items, i, i + 1) for i in range(count))
    if count > number_of_frames:
        return _by_markers(source, items, number_of_frames, transfer_syntax)
    return None


def _fragments(items: Encapsulated, first: int, stop: int) -> Fragments:
    return tuple((items.fragment_offsets[i], items.fragment_lengths[i]) for i in range(first, stop))


def _by_extended_table(
    items: Encapsulated,
    index_at: dict[int, int],
    extended_offsets: tuple[tuple[int, ...], tuple[int, ...]],
    number_of_frames: int,
) -> FrameTable | None:
    # One fragment per frame; the length is the frame's, which padding may leave short of the fragment.
    offsets, lengths = extended_offsets
    if len(offsets) != number_of_frames or len(lengths) != number_of_frames:
        return None
    frames = []
    for offset, length in zip(offsets, lengths, strict=True):
        index = index_at.get(offset)
        if index is None or length > items.fragment_lengths[index]:
            return None
        frames.append(((items.fragment_offsets[index], length),))
    return tuple(frames)


def _by_basic_table(items: Encapsulated, index_at: dict[int, int], number_of_frames: int) -> FrameTable | None:
    offsets = items.basic_offsets
    if len(offsets) != number_of_frames or offsets[0] != 0:
        return None
    if any(later <= earlier for earlier, later in itertools.pairwise(offsets)):
        return None
    starts = [index_at.get(offset) for offset in offsets]
    if any(start is None for start in starts):
        return None
    bounds = [start for start in starts if start is not None] + [len(items.fragment_offsets)]
    return tuple(_fragments(items, bounds[i], bounds[i + 1]) for i in range(number_of_frames))


def _by_markers(source: bytes, items: Encapsulated, number_of_frames: int, transfer_syntax: str) -> FrameTable | None:
    """Several frames, no offset table, more fragments than frames: a frame begins with the fragment that
    begins a codestream, and its last fragment must end one. Entropy-coded JPEG and JPEG-LS data never
    hold FF D8 (a marker), so a fragment cut inside one cannot look like a start."""
    if transfer_syntax in _JPEG:
        starts_frame = _starts_jpeg
    elif transfer_syntax in _JPEG_2000:
        starts_frame = _starts_jpeg_2000
    else:
        return None
    count = len(items.fragment_offsets)
    starts = [i for i in range(count) if starts_frame(source, items.fragment_offsets[i], items.fragment_lengths[i])]
    if len(starts) != number_of_frames or starts[0] != 0:
        return None
    bounds = [*starts, count]
    for stop in bounds[1:]:
        end = items.fragment_offsets[stop - 1] + items.fragment_lengths[stop - 1]
        if _END_OF_IMAGE not in source[max(end - _END_MARKER_WINDOW, items.fragment_offsets[stop - 1]) : end]:
            return None
    return tuple(_fragments(items, bounds[i], bounds[i + 1]) for i in range(number_of_frames))


def _starts_jpeg(source: bytes, offset: int, length: int) -> bool:
    return length >= 2 and source[offset : offset + 2] == _SOI


def _starts_jpeg_2000(source: bytes, offset: int, length: int) -> bool:
    head = source[offset : offset + min(length, 12)]
    return head.startswith(_J2K_SOC_SIZ) or head == _JP2_SIGNATURE


def read_offsets(value: bytes) -> tuple[int, ...] | None:
    """An Extended Offset Table (Lengths) value: 64-bit little-endian unsigned integers (OV)."""
    if len(value) % 8:
        return None
    return struct.unpack(f"<{len(value) // 8}Q", value)
