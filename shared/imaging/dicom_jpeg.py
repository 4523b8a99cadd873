"""A pydicom decoder plugin for JPEG Lossless (process 14, SV1) and 12-bit JPEG Extended via libjpeg-turbo.

pydicom's own plugins for these syntaxes need GDCM (not installed) or pylibjpeg-libjpeg (GPL). libjpeg-turbo 3,
through imagecodecs (BSD), decodes SOF3 lossless and 12-bit frames. shared.imaging.dicom registers this module.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from pydicom import uid

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

PLUGIN_NAME = "imagecodecs"
SYNTAXES = (uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1",) for syntax in SYNTAXES}


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin hook: whether this plugin can decode the transfer syntax here."""
    return transfer_syntax in SYNTAXES and importlib.util.find_spec("imagecodecs") is not None


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """pydicom's plugin hook: one encoded frame in, the raw samples (colour-by-pixel) out."""
    # Imported on first use: finding the module is enough to register the plugin.
    from imagecodecs import jpeg8_decode

    if runner.samples_per_pixel == 3:
        # pydicom expects the samples as stored (it converts YBR to RGB itself): no colour conversion here.
        frame = jpeg8_decode(src, colorspace="RGB", outcolorspace="RGB")
    else:
        frame = jpeg8_decode(src)
    # 8-bit precision decodes to one byte per sample even when Bits Allocated is 16.
    runner.set_option("bits_allocated", 8 * frame.dtype.itemsize)
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    data: bytes = frame.tobytes()
    return data
