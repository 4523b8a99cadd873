"""Sniff an upload's format by its content and hand it to its decoder (pillow, or dicom, imported
only for DICOM uploads)."""

from __future__ import annotations

from shared.core.errors import InvalidImage
from shared.imaging import integrity
from shared.imaging.pillow import decode_pillow
from shared.imaging.pixels import Pixels


def decode_upload(data: bytes, *, max_pixels: int) -> Pixels:
    """Decode a PNG, JPEG or DICOM upload, detected from its bytes only."""
    if not data:
        raise InvalidImage("The uploaded file is empty.")
    if integrity.has_dicom_prefix(data):
        return _decode_dicom(data, max_pixels=max_pixels, bare=False)
    if integrity.is_png(data):
        integrity.check_png(data)
    elif integrity.is_jpeg(data):
        integrity.check_jpeg(data)
    elif integrity.looks_like_bare_dicom(data):
        return _decode_dicom(data, max_pixels=max_pixels, bare=True)
    return decode_pillow(data, max_pixels=max_pixels)


def _decode_dicom(data: bytes, *, max_pixels: int, bare: bool) -> Pixels:
    # pydicom costs ~140 ms to import: only DICOM uploads pay it.
    from shared.imaging import dicom

    return dicom.decode_dicom(data, max_pixels=max_pixels, bare=bare)
