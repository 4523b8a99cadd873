"""DICOM specifics: a guarded read, the PHI-free whitelist, and the pixel pipeline up to grey levels or colour.

Imported only for DICOM uploads (pydicom is slow to import). Importing it registers the libjpeg-turbo plugin once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom import config
from pydicom import uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import (
    Decoder,
    JPEGExtended12BitDecoder,
    JPEGLosslessDecoder,
    JPEGLosslessSV1Decoder,
    get_decoder,
)
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, convert_color_space

from shared.core import observability
from shared.core.errors import InvalidImage, NoImageData, NotAcceptable, UnsupportedTransferSyntax
from shared.imaging import dicom_jpeg, integrity
from shared.imaging.pixels import DICOM_CONTENT_TYPE, DicomInfo, Levels, Pixels, Rgb, Window, too_large

# Declared uncompressed pixel data (all frames) beyond this is refused unread.
MAX_PIXEL_DATA_BYTES = 1 << 30
# What one frame may decode to (rows x columns x samples x bytes a sample). Decoding, analysis and the
# renderings hold a few copies of it: a 1 KB JPEG 2000 file of a 40 MP frame of 32-bit RGB zeros took
# the upload function to 1.3 GB. 256 MiB takes a 40 MP frame of 16-bit RGB or of 32-bit grey.
MAX_FRAME_BYTES = 256 << 20
# What a deflated dataset may inflate to, its header and its pixel data together: the same bound as
# shared.dicom.read.MAX_HEADER_BYTES (which describes the instance). pydicom inflates the whole dataset
# at once and copies its pixel data out of it, so a file that inflates to n bytes costs about 2n: a
# cap of 1 GiB let a 1 MB file of zeros take 2 GB. Checked in a stream that stops at the cap, first.
MAX_INFLATED_BYTES = 64 << 20

# Fragments of encapsulated pixel data: each costs Python objects in pydicom's walk (and a frame's are
# joined), so a 64x64 frame in a million 2-byte fragments (8 MB) took 5 s and 110 MB. Real encoders
# write one fragment per frame or split a frame into pieces of kilobytes: at most one fragment per
# frame plus one per KiB of pixel data, and never more than DICOMweb's reader takes.
_MIN_BYTES_PER_FRAGMENT = 1024
MAX_FRAGMENTS = 1 << 20

# Rows of a colour frame scaled to 8 bits at a time.
_SCALE_ROWS = 256

_T = TypeVar("_T")

log = logging.getLogger(__name__)

# Where a failure is the file's fault: these libraries refuse what they cannot read. Anything raised
# in our own code is a defect (logged with its stack, counted, a 500), except the errors numpy and
# the standard library raise on bad data from within our lines (a reshape of the file's bytes, a
# struct unpack past the end).
_THIRD_PARTY = frozenset({"pydicom", "pylibjpeg", "openjpeg", "rle", "libjpeg", "imagecodecs", "numpy", "PIL"})
_DATA_ERRORS: tuple[type[Exception], ...] = (ValueError, OverflowError, struct.error, EOFError, zlib.error)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_YBR_TO_CONVERT = frozenset({"YBR_FULL", "YBR_FULL_422"})
# JPEG 2000 decoders hand back RGB for the reversible/irreversible colour transforms.
_RGB_LIKE = frozenset({"RGB", "YBR_ICT", "YBR_RCT"})
_PHOTOMETRICS = _MONOCHROME | _YBR_TO_CONVERT | _RGB_LIKE | {"PALETTE COLOR"}
_WINDOW_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
# Plausible magnitudes for rescale, window and geometry values: beyond them float32 windowing and areas in mm2
# overflow or divide by zero, and no real scanner writes them.
_MAX_MAGNITUDE = 1e7
_MIN_SLOPE = 1e-6
_MIN_WINDOW_WIDTH = 1e-3
_MIN_SPACING_MM, _MAX_SPACING_MM = 1e-4, 1e4

# pydicom tries every available plugin in turn and logs each failure; naming the one we trust avoids both.
_PREFERRED_PLUGINS: dict[str, str] = {
    uids.JPEGExtended12Bit: dicom_jpeg.PLUGIN_NAME,
    uids.JPEGLossless: dicom_jpeg.PLUGIN_NAME,
    uids.JPEGLosslessSV1: dicom_jpeg.PLUGIN_NAME,
    uids.JPEG2000Lossless: "pylibjpeg",
    uids.JPEG2000: "pylibjpeg",
    uids.HTJ2KLossless: "pylibjpeg",
    uids.HTJ2KLosslessRPCL: "pylibjpeg",
    uids.HTJ2K: "pylibjpeg",
    uids.RLELossless: "pylibjpeg",
}


def register_plugins() -> None:
    """Add the libjpeg-turbo plugin to pydicom's JPEG Lossless and Extended decoders (idempotent)."""
    for decoder in (JPEGExtended12BitDecoder, JPEGLosslessDecoder, JPEGLosslessSV1Decoder):
        # add_plugin refuses a name it already has: registering twice is harmless.
        with contextlib.suppress(ValueError):
            decoder.add_plugin(dicom_jpeg.PLUGIN_NAME, (dicom_jpeg.__name__, dicom_jpeg.decode_frame.__name__))


register_plugins()


def decode_dicom(data: bytes, *, max_pixels: int, bare: bool, frame_index: int | None = None) -> Pixels:
    """Decode one frame of a DICOM file (bare: a dataset without the Part 10 header) into Pixels: the
    frame at frame_index (0-based), or the middle frame when None (what analysis looks at)."""
    return _guarded(lambda: _decode(data, max_pixels=max_pixels, bare=bare, frame_index=frame_index))


def decode_frame_values(data: bytes, *, frame_indices: Sequence[int], max_pixels: int) -> list[bytes]:
    """The stored pixel values of these frames (0-based) of a Part 10 file, decoded from whatever
    transfer syntax holds them, as Explicit VR Little Endian pixel data of one frame each (PS3.5
    8.1.1: samples interleaved, little-endian words of Bits Allocated; colour as pydicom decodes it,
    RGB for YBR JPEG). What a WADO-RS client asking for uncompressed frames reads."""
    return _guarded(lambda: _frame_values(data, frame_indices=frame_indices, max_pixels=max_pixels))


def encode_frames_lossless(
    data: bytes, *, frame_indices: Sequence[int], max_pixels: int, limit_bytes: int | None = None
) -> list[bytes]:
    """The stored values of these frames (0-based) of a Part 10 file, decoded from whatever transfer
    syntax holds them and encoded as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), one bitstream each.

    Sample precision is Bits Stored; the samples are the stored bit patterns masked to it, so signed
    pixel data (Pixel Representation 1) travels as its two's complement within Bits Stored, which the
    reader sign-extends (PS3.5 8.2.1: JPEG has no sign). Colour goes as RGB samples (YBR decoded to
    RGB, as decode_frame_values sends it). NotAcceptable for what JPEG Lossless cannot hold: 1-bit
    pixels and more than 16 bits stored. With `limit_bytes`, stops once the frames encoded so far
    hold more than that (the caller refuses them: no response carries them)."""
    return _guarded(
        lambda: _lossless_frames(data, frame_indices=frame_indices, max_pixels=max_pixels, limit_bytes=limit_bytes)
    )


def _guarded(decode: Callable[[], _T]) -> _T:
    # pydicom's WARN mode quotes a header value that fails validation (possibly PHI) in a warning and
    # a log line: never validate while reading. Set, never restored: pydicom's own switch for this
    # is a process-wide flag that another thread (the local gateway's containers) could restore mid-read.
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            # Nor do its other warnings about harmless oddities change what we accept.
            warnings.simplefilter("ignore")
            return decode()
    except (InvalidImage, NotAcceptable, MemoryError):
        raise
    except Exception as error:
        if _is_defect(error):
            # Our own bug, not bad input: its stack (the log formatter drops the message, which may quote
            # header values) and a metric, and the caller answers 500.
            log.error("defect in DICOM decoding: %s", type(error).__name__, exc_info=True)
            observability.count(observability.DECODE_DEFECTS)
            raise
        # Messages from pydicom can quote header values (PHI): never pass them on, not even as a cause.
        raise InvalidImage("The DICOM file is damaged or could not be read.") from None
    except BaseException as error:
        # Decoders written in Rust (pylibjpeg-rle) panic on some damaged input: pyo3 raises a BaseException.
        if type(error).__name__ != "PanicException":
            raise
        raise InvalidImage("The DICOM pixel data could not be decoded: the file is damaged or incomplete.") from None


def _is_defect(error: BaseException) -> bool:
    """Whether an exception is our code's fault rather than the file's: raised in a frame of none of
    the decoding libraries, and not an error numpy or the standard library raise on bad data."""
    trace = error.__traceback__
    if trace is None:
        return False
    while trace.tb_next is not None:
        trace = trace.tb_next
    module = str(trace.tb_frame.f_globals.get("__name__", ""))
    if module.partition(".")[0] in _THIRD_PARTY:
        return False
    return not isinstance(error, _DATA_ERRORS)


@dataclass(frozen=True)
class _Opened:
    """A DICOM file read and checked: its dataset, transfer syntax, image attributes and decoder."""

    ds: Dataset
    transfer_syntax: uids.UID
    image: _ImageAttributes
    decoder: Decoder


def _open(data: bytes, *, max_pixels: int, bare: bool) -> _Opened:
    deflated = False
    if not bare:
        meta_end, declared_syntax = integrity.dicom_meta_end(data)
        deflated = declared_syntax == uids.DeflatedExplicitVRLittleEndian
        if deflated:
            integrity.check_inflated_size(data, start=meta_end, limit=MAX_INFLATED_BYTES)
    ds = _read(data, bare=bare)
    if not deflated:
        # Offsets of a deflated dataset are in the inflated stream; zlib itself notices a truncated one.
        _check_complete(ds, data)
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise InvalidImage("DICOM files with floating-point pixel data are not supported.")
    if "PixelData" not in ds:
        if bare and "SOPClassUID" not in ds:
            raise InvalidImage("The file is not a PNG, JPEG or DICOM image.")
        raise NoImageData("The DICOM file holds no image (no pixel data), for example an RT plan or a report.")

    transfer_syntax = _transfer_syntax(ds)
    image = _ImageAttributes.read(ds)
    if image.rows * image.columns > max_pixels:
        raise too_large(max_pixels)
    if image.declared_bytes > MAX_PIXEL_DATA_BYTES:
        raise InvalidImage("The DICOM file declares more pixel data than we accept (1 GiB uncompressed).")
    if image.frame_bytes > MAX_FRAME_BYTES:
        raise InvalidImage(
            f"The DICOM file's frames are larger than we decode ({MAX_FRAME_BYTES >> 20} MiB uncompressed a frame)."
        )
    decoder = _decoder_for(transfer_syntax)
    if transfer_syntax.is_encapsulated:
        _check_fragment_count(ds.PixelData, image.frames)
    elif len(ds.PixelData) < image.declared_bytes:
        raise InvalidImage(
            "The DICOM pixel data is shorter than its header declares: the file is damaged or incomplete."
        )
    return _Opened(ds, transfer_syntax, image, decoder)


def _frame_array(opened: _Opened, frame_index: int) -> tuple[NDArray[Any], dict[str, Any]]:
    """One frame decoded by pydicom (0-based), after the guards on its codestream."""
    if not 0 <= frame_index < opened.image.frames:
        raise InvalidImage(f"The DICOM file has no frame {frame_index + 1} (it has {opened.image.frames}).")
    if opened.transfer_syntax.is_encapsulated:
        _check_encoded_frame(opened.ds.PixelData, frame_index, opened.image)
    plugin = _PREFERRED_PLUGINS.get(opened.transfer_syntax, "")
    decoder = opened.decoder
    try:
        array, properties = decoder.as_array(
            opened.ds, index=frame_index, decoding_plugin=plugin if plugin in decoder.available_plugins else ""
        )
    except MemoryError:
        raise
    except Exception as error:
        if _is_defect(error):
            raise  # our plugin's bug: _guarded logs and counts it
        raise InvalidImage("The DICOM pixel data could not be decoded: the file is damaged or incomplete.") from None
    return array, properties


def _frame_values(data: bytes, *, frame_indices: Sequence[int], max_pixels: int) -> list[bytes]:
    opened = _open(data, max_pixels=max_pixels, bare=False)
    values = []
    for frame_index in frame_indices:
        array, _ = _frame_array(opened, frame_index)
        if opened.image.bits_allocated == 1:
            # pydicom unpacks single-bit pixels to bytes; the uncompressed form packs eight to a byte,
            # least significant bit first (PS3.5 8.1.1, per frame as WADO-RS sends a frame alone).
            values.append(np.packbits(array.astype(np.uint8).ravel(), bitorder="little").tobytes())
            continue
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        values.append(np.ascontiguousarray(little).tobytes())
    return values


def _lossless_frames(
    data: bytes, *, frame_indices: Sequence[int], max_pixels: int, limit_bytes: int | None
) -> list[bytes]:
    opened = _open(data, max_pixels=max_pixels, bare=False)
    bits = opened.image.bits_stored
    if opened.image.bits_allocated == 1 or bits > 16:
        raise NotAcceptable(
            f"JPEG Lossless holds 2 to 16 bits per sample; this image has {opened.image.bits_allocated} bits "
            f"allocated and {bits} stored: ask for its frames decoded or as stored."
        )
    frames: list[bytes] = []
    total = 0
    for frame_index in frame_indices:
        array, _ = _frame_array(opened, frame_index)
        samples = _stored_samples(_native(array), bits)
        frames.append(dicom_jpeg.encode_lossless_sv1(samples, precision=max(bits, 2)))
        total += len(frames[-1])
        if limit_bytes is not None and total > limit_bytes:
            break
    return frames


def _stored_samples(array: NDArray[Any], bits_stored: int) -> NDArray[Any]:
    """The frame's samples as unsigned stored bit patterns within Bits Stored: uint8 up to 8 bits, else uint16."""
    unsigned = array.view(np.dtype(f"u{array.dtype.itemsize}"))
    masked = unsigned & unsigned.dtype.type((1 << bits_stored) - 1)
    return np.ascontiguousarray(masked, dtype=np.uint8 if bits_stored <= 8 else np.uint16)


def _decode(data: bytes, *, max_pixels: int, bare: bool, frame_index: int | None) -> Pixels:
    opened = _open(data, max_pixels=max_pixels, bare=bare)
    ds, image = opened.ds, opened.image
    if frame_index is None:
        frame_index = (image.frames - 1) // 2
    array, properties = _frame_array(opened, frame_index)

    info = _dicom_info(ds, image, transfer_syntax=opened.transfer_syntax, frame_index=frame_index)
    photometric = str(properties.get("photometric_interpretation", image.photometric))
    common: dict[str, Any] = {
        "content_type": DICOM_CONTENT_TYPE,
        "bit_depth": image.bits_stored,
        "spacing_mm": info.pixel_spacing_mm,
        "dicom": info,
    }
    if image.samples == 1 and photometric in _MONOCHROME:
        return _grey_pixels(ds, _native(array), image, frame_index=frame_index, modality=info.modality, **common)
    if image.samples == 1 and photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)[..., :3]
        return _colour_pixels(rgb, bits=8 * rgb.dtype.itemsize, **common)
    if image.samples == 3 and photometric in _YBR_TO_CONVERT and array.dtype == np.uint8:
        return _colour_pixels(convert_color_space(array, photometric, "RGB"), bits=8, **common)
    if image.samples == 3 and photometric in _RGB_LIKE:
        return _colour_pixels(_native(array), bits=image.bits_stored, **common)
    raise InvalidImage("DICOM images with this photometric interpretation are not supported.")


def _read(data: bytes, *, bare: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=bare)
    except MemoryError:
        raise
    except Exception:
        if bare:
            raise InvalidImage("The file is not a PNG, JPEG or DICOM image.") from None
        raise integrity.damaged() from None
    if len(ds) == 0:
        # pydicom drops every element it read when the file ends inside one (it warns instead of raising).
        if bare:
            raise InvalidImage("The file is not a PNG, JPEG or DICOM image.")
        raise integrity.damaged()
    return ds


def _check_complete(ds: Dataset, data: bytes) -> None:
    """pydicom reads a value cut short by the end of the file without complaint: notice it here."""
    last_start, last_end = -1, None
    for element in ds.elements():
        if not isinstance(element, RawDataElement):
            # An undefined-length sequence, parsed up to its delimiter: where it ends is not recorded.
            start = getattr(element, "file_tell", None)
            if isinstance(start, int) and start > last_start:
                last_start, last_end = start, None
            continue
        read = len(element.value or b"")
        if element.length == 0xFFFFFFFF:
            # Encapsulated pixel data: the fragments, then an 8-byte sequence delimiter.
            end = element.value_tell + read + 8
        else:
            if read < element.length:
                raise integrity.damaged()
            end = element.value_tell + element.length
        if end > len(data):
            raise integrity.damaged()
        if element.value_tell > last_start:
            last_start, last_end = element.value_tell, end
    # Fewer than 8 bytes after the last element are a cut-off element header, which pydicom skips silently.
    if last_end is not None and data[last_end:].strip(b"\x00"):
        raise integrity.damaged()


def _transfer_syntax(ds: Dataset) -> uids.UID:
    meta = getattr(ds, "file_meta", None)
    declared = meta.get("TransferSyntaxUID") if meta is not None else None
    if declared:
        return uids.UID(str(declared))
    # No file meta (a bare dataset, or a header without the element): the encoding pydicom read it with.
    implicit, little = ds.original_encoding
    if implicit:
        syntax = uids.ImplicitVRLittleEndian
    else:
        syntax = uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return syntax


def _decoder_for(transfer_syntax: uids.UID) -> Decoder:
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise _unsupported(transfer_syntax) from None
    if not decoder.is_available:
        raise _unsupported(transfer_syntax)
    return decoder


def _unsupported(transfer_syntax: uids.UID) -> UnsupportedTransferSyntax:
    text = str(transfer_syntax)
    if not _UID.fullmatch(text) or len(text) > 64:
        return UnsupportedTransferSyntax("The DICOM file declares an invalid transfer syntax.")
    # The name comes from pydicom's registry, never from the file.
    name = transfer_syntax.name if transfer_syntax.name != text else "an unknown transfer syntax"
    return UnsupportedTransferSyntax(
        f"DICOM pixel data encoded as {name} ({text}) is not supported. Supported: uncompressed, deflated, "
        "RLE Lossless, JPEG (baseline, extended, lossless), JPEG-LS and JPEG 2000."
    )


@dataclass(frozen=True)
class _ImageAttributes:
    """The Image Pixel module values, validated: what decoding and the size guards rely on."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    frames: int

    @classmethod
    def read(cls, ds: Dataset) -> _ImageAttributes:
        rows, columns = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
        samples = _int(_get(ds, "SamplesPerPixel"))
        bits_allocated, bits_stored = _int(_get(ds, "BitsAllocated")), _int(_get(ds, "BitsStored"))
        photometric = _code(_get(ds, "PhotometricInterpretation"))
        frames = _int(_get(ds, "NumberOfFrames")) if "NumberOfFrames" in ds else 1
        if (
            rows is None
            or columns is None
            or samples is None
            or bits_allocated is None
            or bits_stored is None
            or photometric is None
            or frames is None
            or rows < 1
            or columns < 1
            or frames < 0
        ):
            raise InvalidImage("The DICOM file lacks the attributes that describe its image.")
        if photometric not in _PHOTOMETRICS or samples not in (1, 3):
            raise InvalidImage("DICOM images with this photometric interpretation are not supported.")
        if not (bits_allocated == 1 or bits_allocated in (8, 16, 32)) or not 1 <= bits_stored <= bits_allocated:
            raise InvalidImage("The DICOM file declares an unsupported pixel depth.")
        # pydicom reads a Number of Frames of 0 as one frame.
        return cls(
            rows=rows,
            columns=columns,
            samples=samples,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            photometric=photometric,
            frames=max(frames, 1),
        )

    @property
    def declared_bytes(self) -> int:
        """Bytes of uncompressed pixel data the header declares for all frames (PS3.5 8.1.1, PS3.3 C.7.6.3.1.2)."""
        samples = self.rows * self.columns * self.samples * self.frames
        if self.bits_allocated == 1:
            return (samples + 7) // 8
        length = samples * (self.bits_allocated // 8)
        return length // 3 * 2 if self.photometric == "YBR_FULL_422" else length

    @property
    def frame_bytes(self) -> int:
        """Bytes one frame decodes to: rows x columns x samples x bytes a sample (a byte for 1-bit pixels)."""
        return self.rows * self.columns * self.samples * max(1, self.bits_allocated // 8)


def _check_fragment_count(pixel_data: bytes, frames: int) -> None:
    """Refuse pixel data in more fragments than its frames and size explain, before pydicom walks them."""
    limit = min(MAX_FRAGMENTS, frames + len(pixel_data) // _MIN_BYTES_PER_FRAGMENT)
    offset, items = 0, 0
    # Item headers only: the value is skipped by its length. The first item is the Basic Offset Table.
    while offset + 8 <= len(pixel_data):
        group, element, length = struct.unpack_from("<HHI", pixel_data, offset)
        if (group, element) != (0xFFFE, 0xE000):
            return  # the sequence delimiter, or damage the decoder's own walk refuses
        items += 1
        if items - 1 > limit:
            raise InvalidImage(
                f"The DICOM pixel data is split into more fragments than we accept ({limit:,} for this file: "
                "one per frame and one per KiB)."
            )
        offset += 8 + length


def _check_encoded_frame(pixel_data: bytes, frame_index: int, image: _ImageAttributes) -> None:
    """A codestream may declare far more pixels than the header: refuse it before a decoder allocates them."""
    try:
        frame = get_frame(pixel_data, frame_index, number_of_frames=image.frames)
    except MemoryError:
        raise
    except Exception:
        raise integrity.damaged() from None
    size = integrity.encoded_frame_size(frame)
    if size is not None and size[0] * size[1] > image.rows * image.columns:
        raise InvalidImage("The DICOM pixel data does not match the image size its header declares.")


def _native(array: NDArray[Any]) -> NDArray[Any]:
    # Explicit VR Big Endian decodes to big-endian dtypes; everything downstream wants native order.
    if array.dtype.byteorder in ("=", "|"):
        return array
    return array.astype(array.dtype.newbyteorder("="))


def _grey_pixels(
    ds: Dataset, array: NDArray[Any], image: _ImageAttributes, *, frame_index: int, modality: str | None, **common: Any
) -> Pixels:
    slope, intercept, rescale_type = _rescale(ds, frame_index)
    rescaled = slope is not None
    if ds.get("ModalityLUTSequence"):
        # A lookup table instead of a linear rescale: its integer output becomes the levels.
        array = apply_modality_lut(array, ds)
        slope, intercept, rescaled = 1.0, 0.0, True
        rescale_type = _code(_get(ds.ModalityLUTSequence[0], "ModalityLUTType"))
    levels, slope, intercept = _narrow(array, slope if slope is not None else 1.0, intercept or 0.0)
    is_hu = modality == "CT" and rescaled and rescale_type in (None, "HU")
    identity = slope == 1.0 and intercept == 0.0
    return Pixels(
        levels=levels,
        slope=slope,
        intercept=intercept,
        unit="HU" if is_hu else "intensity",
        display_ready=levels.dtype == np.uint8 and image.bits_stored == 8 and identity,
        monochrome1=image.photometric == "MONOCHROME1",
        file_window=_file_window(ds, frame_index),
        **common,
    )


def _colour_pixels(rgb: NDArray[Any], *, bits: int, **common: Any) -> Pixels:
    rgb8: Rgb
    if rgb.dtype == np.uint8:
        rgb8 = np.ascontiguousarray(rgb)
    else:
        # A band of rows at a time: float32 copies of a whole 40 MP frame would cost twice the frame.
        rgb8 = np.empty(rgb.shape, np.uint8)
        factor = np.float32(255 / (2 ** min(bits, 32) - 1))
        for start in range(0, rgb.shape[0], _SCALE_ROWS):
            scaled = rgb[start : start + _SCALE_ROWS].astype(np.float32)
            scaled *= factor
            np.rint(scaled, out=scaled)
            np.clip(scaled, 0, 255, out=scaled)
            rgb8[start : start + _SCALE_ROWS] = scaled
    luminance = np.asarray(Image.fromarray(rgb8, "RGB").convert("L"))
    return Pixels(levels=luminance, display_ready=True, colour=rgb8, **common)


def _narrow(array: NDArray[Any], slope: float, intercept: float) -> tuple[Levels, float, float]:
    """Levels of at most 16 bits and a positive slope, with value = level * slope + intercept unchanged."""
    if slope < 0:
        array = np.negative(array.astype(np.int32))
        slope = -slope
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    if array.dtype in (np.uint8, np.int8, np.uint16, np.int16):
        levels: Levels = array
        return levels, slope, intercept
    low, high = int(array.min()), int(array.max())
    # Shifting by the minimum keeps unsigned samples in their own type; signed 32-bit ones need 64 bits.
    shifted = array - array.dtype.type(low) if array.dtype.kind == "u" else array.astype(np.int64) - low
    if high - low <= 0xFFFF:
        return shifted.astype(np.uint16), slope, intercept + low * slope
    # Wider than 16 bits (32-bit dose maps): whole steps of a few levels keep analysis and display meaningful.
    step = -(-(high - low + 1) // 0x10000)
    return (shifted // step).astype(np.uint16), slope * step, intercept + low * slope


def _rescale(ds: Dataset, frame_index: int) -> tuple[float | None, float | None, str | None]:
    transform = _functional_group(ds, frame_index, "PixelValueTransformationSequence")
    slope = _float(_get(ds, "RescaleSlope"))
    intercept = _float(_get(ds, "RescaleIntercept"))
    rescale_type = _code(_get(ds, "RescaleType"))
    if slope is None and intercept is None and transform is not None:
        slope, intercept = _float(_get(transform, "RescaleSlope")), _float(_get(transform, "RescaleIntercept"))
        rescale_type = _code(_get(transform, "RescaleType"))
    if slope is None or intercept is None or not _MIN_SLOPE <= abs(slope) <= _MAX_MAGNITUDE:
        return None, None, None
    if abs(intercept) > _MAX_MAGNITUDE:
        return None, None, None
    return slope, intercept, rescale_type


def _file_window(ds: Dataset, frame_index: int) -> Window | None:
    """The file's first VOI window and its function (PS3.3 C.11.2.1.2), if valid."""
    source: Dataset | None = ds
    if "WindowCenter" not in ds:
        source = _functional_group(ds, frame_index, "FrameVOILUTSequence")
    center = _float(_first(_get(source, "WindowCenter")))
    width = _float(_first(_get(source, "WindowWidth")))
    function = _code(_get(source, "VOILUTFunction")) or "LINEAR"
    if function not in _WINDOW_FUNCTIONS:
        function = "LINEAR"
    if center is None or width is None or abs(center) > _MAX_MAGNITUDE or width > _MAX_MAGNITUDE:
        return None
    if width < _MIN_WINDOW_WIDTH or (function == "LINEAR" and width < 1):
        return None
    return Window(center=center, width=width, function=function, source="file")  # type: ignore[arg-type]


def _dicom_info(ds: Dataset, image: _ImageAttributes, *, transfer_syntax: str, frame_index: int) -> DicomInfo:
    measures = _functional_group(ds, frame_index, "PixelMeasuresSequence")
    position = _get(ds, "ImagePositionPatient")
    if position is None:
        position = _get(_functional_group(ds, frame_index, "PlanePositionSequence"), "ImagePositionPatient")
    slice_position = _float(position[2]) if _is_sequence(position) and len(position) == 3 else None
    if slice_position is None:
        slice_position = _float(_get(ds, "SliceLocation"))
    spacing = _spacing(_get(ds, "PixelSpacing") or _get(measures, "PixelSpacing"))
    if spacing is None:
        spacing = _spacing(_get(ds, "ImagerPixelSpacing"))
    thickness = _float(_get(ds, "SliceThickness"))
    if thickness is None:
        thickness = _float(_get(measures, "SliceThickness"))
    return DicomInfo(
        modality=_code(_get(ds, "Modality")),
        study_instance_uid=_uid(_get(ds, "StudyInstanceUID")),
        series_instance_uid=_uid(_get(ds, "SeriesInstanceUID")),
        sop_instance_uid=_uid(_get(ds, "SOPInstanceUID")),
        instance_number=_int(_get(ds, "InstanceNumber")),
        slice_position=slice_position,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=thickness if thickness is not None and 0 < thickness <= _MAX_SPACING_MM else None,
        rows=image.rows,
        columns=image.columns,
        frame_count=image.frames,
        frame_analyzed=frame_index + 1,
        transfer_syntax_uid=transfer_syntax,
        photometric_interpretation=image.photometric,
        bits_stored=image.bits_stored,
    )


def _functional_group(ds: Dataset, frame_index: int, keyword: str) -> Dataset | None:
    """The frame's item of an enhanced multi-frame functional group: per-frame first, then shared."""
    for groups_keyword, index in (
        ("PerFrameFunctionalGroupsSequence", frame_index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        if groups_keyword not in ds:
            continue
        groups = _get(ds, groups_keyword)
        if _is_sequence(groups) and len(groups) > index:
            items = _get(groups[index], keyword)
            if _is_sequence(items) and len(items) > 0 and isinstance(items[0], Dataset):
                return items[0]
    return None


def _get(ds: Dataset | None, keyword: str) -> Any:
    # Converting one element's value can fail on a malformed file; such a value counts as absent.
    if ds is None:
        return None
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _first(value: Any) -> Any:
    if _is_sequence(value):
        return value[0] if len(value) > 0 else None
    return value


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    if number is None or number != int(number):
        return None
    return int(number)


def _uid(value: Any) -> str | None:
    # Whitelisted slots still only carry what their type allows: no free text can ride in a UID.
    text = str(value) if isinstance(value, str) else None
    if text is None or len(text) > 64 or not _UID.fullmatch(text):
        return None
    return text


def _code(value: Any) -> str | None:
    text = value.strip() if isinstance(value, str) else None
    if not text or not _CODE.fullmatch(text):
        return None
    return text


def _spacing(value: Any) -> tuple[float, float] | None:
    if not _is_sequence(value) or len(value) != 2:
        return None
    row, column = _float(value[0]), _float(value[1])
    if row is None or column is None:
        return None
    if not (_MIN_SPACING_MM <= row <= _MAX_SPACING_MM and _MIN_SPACING_MM <= column <= _MAX_SPACING_MM):
        return None
    return row, column
