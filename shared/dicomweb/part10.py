"""A stored dataset as a DICOM Part 10 file (PS3.10 7.1), which application/dicom means (PS3.18 8.7.3.1).

Files are stored as they came. Some came without the 128-byte preamble and "DICM" (pydicom's dcmwrite
writes none unless the dataset has a preamble, so dicomweb-client's STOW sends datasets that way), or
without a File Meta Information group at all (a bare dataset the REST API accepts). A retrieval adds
what is missing, from what ingest recorded (the SOP Class and Instance UIDs, the transfer syntax the
data set is encoded in): no pydicom, so the images function can do it.
"""

from __future__ import annotations

import struct

PREAMBLE = b"\x00" * 128 + b"DICM"
# This implementation's UID (2.25: a UUID as an integer, PS3.5 B.2) and name, for (0002,0012/0013).
IMPLEMENTATION_CLASS_UID = "2.25.196218592302355138573384305113521917493"
IMPLEMENTATION_VERSION_NAME = "CTSCAN_STORE"


def as_part10(data: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """`data` as a Part 10 file: unchanged when it is one; with the preamble when it starts with its
    File Meta Information group; with a File Meta Information group built here when it has none."""
    if data[128:132] == b"DICM":
        return data
    if data[:2] == b"\x02\x00":  # the group 0002 is there, only the preamble is missing
        return PREAMBLE + data
    return PREAMBLE + file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid) + data


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The File Meta Information group, Explicit VR Little Endian (PS3.10 Table 7.1-1)."""
    body = b"".join(
        (
            _element(0x0001, "OB", b"\x00\x01"),
            _element(0x0002, "UI", _uid(sop_class_uid)),
            _element(0x0003, "UI", _uid(sop_instance_uid)),
            _element(0x0010, "UI", _uid(transfer_syntax_uid)),
            _element(0x0012, "UI", _uid(IMPLEMENTATION_CLASS_UID)),
            _element(0x0013, "SH", _even(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" ")),
        )
    )
    return _element(0x0000, "UL", struct.pack("<I", len(body))) + body


def _element(element: int, vr: str, value: bytes) -> bytes:
    head = struct.pack("<HH", 0x0002, element) + vr.encode("ascii")
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN", "UR", "UT"):
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _uid(value: str) -> bytes:
    return _even(value.encode("ascii"), b"\x00")


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value
