"""A pydicom decoder plugin for JPEG Lossless (process 14, SV1) and 12-bit JPEG Extended via libjpeg-turbo, and
the JPEG Lossless SV1 encoder of WADO-RS frames.

pydicom's own plugins for these syntaxes need GDCM (not installed) or pylibjpeg-libjpeg (GPL). libjpeg-turbo 3,
through imagecodecs (BSD), decodes SOF3 lossless and 12-bit frames, and writes SOF3 frames of 2 to 16 bits.
shared.imaging.dicom registers this module.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from pydicom import uid

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from pydicom.pixels.decoders.base import DecodeRunner

PLUGIN_NAME = "imagecodecs"
SYNTAXES = (uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
# The sample precisions a JPEG Lossless frame holds (ISO/IEC 10918-1 B.2.2: P is 2 to 16 for process 14).
LOSSLESS_PRECISIONS = range(2, 17)
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


def encode_lossless_sv1(samples: NDArray[Any], *, precision: int) -> bytes:
    """One frame of unsigned samples (rows x columns, or rows x columns x 3 for RGB, uint8 up to 8 bits of
    precision, else uint16) as JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1: predictor 1,
    no point transform; the frames of transfer syntax 1.2.840.10008.1.2.4.70), with this sample precision."""
    from imagecodecs import jpeg8_encode

    if precision not in LOSSLESS_PRECISIONS:
        raise ValueError(f"JPEG Lossless holds 2 to 16 bits per sample, not {precision}")
    # RGB as it is: libjpeg-turbo would otherwise convert to YCbCr, which is not lossless, and label it JFIF.
    colorspace = "RGB" if samples.ndim == 3 else None
    encoded = jpeg8_encode(
        samples, lossless=True, predictor=1, bitspersample=precision, colorspace=colorspace, outcolorspace=colorspace
    )
    return bytes(encoded)
