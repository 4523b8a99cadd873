"""Frames re-encoded as JPEG Lossless SV1 (shared.imaging.encode_dicom_frames_lossless): what the render
function sends a WADO-RS client that asks for transfer-syntax=1.2.840.10008.1.2.4.70. Each bitstream is
decoded here by decoders the server does not use for it (imagecodecs' ljpeg, a separate lossless JPEG
decoder, and libjpeg-turbo) and compared with pydicom's stored values, masked to Bits Stored."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLosslessSV1

from scripts.dev import phantom
from shared import imaging
from shared.core.errors import NotAcceptable


def read_testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is missing: pydicom-data must be installed"
    return Path(str(path)).read_bytes()


def stored_values(ds: Dataset) -> NDArray[Any]:
    """pydicom's pixel values of every frame (frames first), before any LUT, as unsigned bit patterns
    masked to Bits Stored: what a JPEG Lossless frame of them holds."""
    import shared.imaging.dicom  # noqa: F401  (registers the JPEG Lossless decoder plugin)

    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = ds.pixel_array if frames > 1 else ds.pixel_array[np.newaxis]
    unsigned = pixels.view(np.dtype(f"u{pixels.dtype.itemsize}"))
    return unsigned & ((1 << int(ds.BitsStored)) - 1)


def markers(bitstream: bytes) -> dict[int, bytes]:
    """The marker segments before the scan data: marker -> its payload (the first of each)."""
    assert bitstream[:2] == b"\xff\xd8"
    found: dict[int, bytes] = {}
    at = 2
    while bitstream[at] == 0xFF and bitstream[at + 1] != 0xDA:
        length = int.from_bytes(bitstream[at + 2 : at + 4], "big")
        found.setdefault(bitstream[at + 1], bitstream[at + 4 : at + 2 + length])
        at += 2 + length
    length = int.from_bytes(bitstream[at + 2 : at + 4], "big")
    found[0xDA] = bitstream[at + 4 : at + 2 + length]
    return found


SIGNED_12_BIT = phantom.dicom_bytes(phantom.ct_slice_dataset(size=64, signed=True, intercept=0.0, seed=5))
EIGHT_BIT_JPEG_LOSSLESS_SV1 = "JPGLosslessP14SV1_1s_1f_8b.dcm"


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # signed 16-bit
        "MR_small.dcm",  # signed 16-bit
        "OBXXXX1A.dcm",  # 8-bit
        "emri_small.dcm",  # 12 of 16 bits, 10 frames
        "SC_rgb.dcm",  # RGB, 8-bit
        "SC_rgb_16bit.dcm",  # RGB, 16-bit
        "JPEG2000.dcm",  # decoded from JPEG 2000 first
        "MR_small_RLE.dcm",  # and from RLE
        EIGHT_BIT_JPEG_LOSSLESS_SV1,  # already SV1: decoded and encoded again, the same values
        "signed 12-bit phantom",  # negative values with Bits Stored < Bits Allocated
    ],
)
def test_lossless_frames_decode_to_the_stored_values(name: str) -> None:
    data = SIGNED_12_BIT if name == "signed 12-bit phantom" else read_testdata(name)
    ds = pydicom.dcmread(io.BytesIO(data))
    expected = stored_values(ds)

    encoded = imaging.encode_dicom_frames_lossless(data, frame_indices=range(len(expected)))

    assert len(encoded) == len(expected)
    for bitstream, values in zip(encoded, expected, strict=True):
        assert np.array_equal(imagecodecs.ljpeg_decode(bitstream), values), name
        colour = {"colorspace": "RGB", "outcolorspace": "RGB"} if values.ndim == 3 else {}
        assert np.array_equal(imagecodecs.jpeg8_decode(bitstream, **colour), values), name


def test_lossless_frames_are_sv1_with_bits_stored_as_their_precision() -> None:
    data = read_testdata("emri_small.dcm")  # 12 bits stored of 16

    (bitstream,) = imaging.encode_dicom_frames_lossless(data, frame_indices=[3])

    found = markers(bitstream)
    frame, scan = found[0xC3], found[0xDA]  # SOF3: lossless, Huffman, sequential
    assert frame[0] == 12 and int.from_bytes(frame[1:3], "big") == 64 and frame[5] == 1
    components = scan[0]
    ss, se, point_transform = scan[1 + 2 * components : 4 + 2 * components]
    assert (ss, se, point_transform) == (1, 0, 0)  # predictor 1, no point transform: Selection Value 1


def test_lossless_rgb_is_not_converted_to_ycbcr() -> None:
    (bitstream,) = imaging.encode_dicom_frames_lossless(read_testdata("SC_rgb.dcm"), frame_indices=[0])

    found = markers(bitstream)
    # Adobe APP14 with transform 0 and no JFIF: decoders keep the samples as RGB.
    assert found[0xEE].startswith(b"Adobe") and found[0xEE][-1] == 0 and 0xE0 not in found


def test_each_requested_frame_in_the_order_asked() -> None:
    data = read_testdata("emri_small.dcm")
    values = stored_values(pydicom.dcmread(io.BytesIO(data)))

    encoded = imaging.encode_dicom_frames_lossless(data, frame_indices=[9, 0, 4])

    assert [imagecodecs.ljpeg_decode(b).tolist() for b in encoded] == [values[i].tolist() for i in (9, 0, 4)]


def test_lossless_stops_once_the_frames_hold_more_than_the_limit() -> None:
    data = read_testdata("emri_small.dcm")
    one = len(imaging.encode_dicom_frames_lossless(data, frame_indices=[0])[0])

    encoded = imaging.encode_dicom_frames_lossless(data, frame_indices=range(10), limit_bytes=one + 1)

    assert len(encoded) == 2 and sum(len(b) for b in encoded) > one + 1


@pytest.mark.parametrize(("name", "bits"), [("liver.dcm", "1 bits allocated"), ("rtdose.dcm", "32 bits allocated")])
def test_what_jpeg_lossless_cannot_hold_is_not_acceptable(name: str, bits: str) -> None:
    with pytest.raises(NotAcceptable, match=bits):
        imaging.encode_dicom_frames_lossless(read_testdata(name), frame_indices=[0])


def test_the_chest_cr_phantom_is_stored_as_jpeg_lossless_and_transcodes_to_the_same_values() -> None:
    # Given the large radiograph as `make sample` writes it
    ds = phantom.chest_cr_dataset()
    data = phantom.dicom_bytes(ds, JPEGLosslessSV1)
    stored = pydicom.dcmread(io.BytesIO(data))
    assert stored.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert (stored.Rows, stored.Columns, stored.BitsStored, stored.PhotometricInterpretation) == (
        2500,
        2000,
        12,
        "MONOCHROME1",
    )
    assert "PixelSpacing" not in stored and [float(v) for v in stored.ImagerPixelSpacing] == [0.139, 0.139]
    # Decoded it is 10 MB, more than one Lambda response; its JPEG Lossless frame fits in a third of that.
    assert len(ds.PixelData) == 10_000_000 and len(data) < 4_000_000
    values = phantom.chest_cr_values()
    assert np.array_equal(stored_values(stored)[0], values)

    (bitstream,) = imaging.encode_dicom_frames_lossless(data, frame_indices=[0])

    assert np.array_equal(imagecodecs.ljpeg_decode(bitstream), values)


def test_the_chest_cr_phantom_looks_like_a_chest() -> None:
    values = phantom.chest_cr_values(columns=400, rows=500).astype(np.int32)
    air, lung, spine, abdomen = values[250, 5], values[200, 120], values[200, 200], values[470, 120]
    # MONOCHROME1: the more exposure the higher the value and the darker it shows.
    assert air > lung > abdomen > spine
    assert phantom.chest_cr_dataset(columns=40, rows=50).PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(phantom.chest_cr_values(columns=40, rows=50), phantom.chest_cr_values(columns=40, rows=50))
