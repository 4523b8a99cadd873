"""Synthetic phantoms as DICOM datasets and bytes: CT slices with known HU regions in every transfer syntax we
decode, a large chest radiograph (CR), PHI on demand.

Used by the imaging tests, `make sample` and the benchmark. Deterministic: noise and UIDs derive from a seed.

    ds = ct_slice_dataset(discs=(Disc(256, 330, 12.0, 900.0),), pixel_spacing=(0.7, 0.7))
    data = dicom_bytes(ds, transfer_syntax=JPEGLosslessSV1)
    series = ct_series(5)                       # one study, one series, slices 1..5
    chest = dicom_bytes(chest_cr_dataset(), JPEGLosslessSV1)   # 2,000 x 2,500, ~3.2 MB (10 MB decoded)
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
GAS_HU = -900.0
NOISE_HU = 8.0


class Disc(NamedTuple):
    """A round dense region: centre in pixels (x, y), radius in mm, HU inside."""

    x: float
    y: float
    radius_mm: float
    hu: float


# For a 512 x 512 slice: a vertebra-like disc below the centre and two rib-like ones at the sides. Other sizes
# get the same layout scaled (positions only: radii stay in mm).
DEFAULT_DISCS = (Disc(256, 340, 14.0, 900.0), Disc(140, 250, 6.0, 700.0), Disc(372, 250, 6.0, 1000.0))

# Distinct PHI strings a de-identifying store must never echo (PatientSex "F" is too short to search for).
PHI: dict[str, str] = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-PHI-0042",
    "PatientBirthDate": "19700101",
    "PatientAge": "054Y",
    "AccessionNumber": "ACC-PHI-7788",
    "StudyDate": "20240229",
    "StudyTime": "134501.25",
    "InstitutionName": "PHI General Clinic",
    "ReferringPhysicianName": "Referrer^PHI",
    "OperatorsName": "Operator^PHI",
    "StudyDescription": "PHI study: CT chest",
    "SeriesDescription": "PHI series: axial 1 mm",
    "ImageComments": "PHI Secret: the patient lives at 221B Baker Street",
}
PRIVATE_CREATOR = "PHI SECRET CREATOR"
PRIVATE_VALUE = "Secret PHI payload 7781"
PHI_STRINGS = (*PHI.values(), PRIVATE_CREATOR, PRIVATE_VALUE)


def uid(*parts: object) -> UID:
    """A deterministic UID derived from parts."""
    return generate_uid(entropy_srcs=["ctscan-store phantom", *(str(part) for part in parts)])


def default_discs(size: int = 512) -> tuple[Disc, ...]:
    """DEFAULT_DISCS moved to the same places on a size x size slice."""
    scale = size / 512
    return tuple(disc._replace(x=disc.x * scale, y=disc.y * scale) for disc in DEFAULT_DISCS)


def hu_slice(
    size: int = 512,
    discs: Sequence[Disc] | None = None,
    *,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    gas: bool = True,
    seed: int = 7,
) -> NDArray[np.float64]:
    """HU values of one slice: air outside an elliptical body of soft tissue with a fat rim, a gas pocket, discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = size / 2
    radial = ((xx - centre) / (size * 0.42)) ** 2 + ((yy - centre) / (size * 0.33)) ** 2
    hu = np.full((size, size), AIR_HU)
    hu[radial <= 1.0] = FAT_HU
    hu[radial <= 0.85] = SOFT_TISSUE_HU
    if discs is None:
        discs = default_discs(size)
    if gas:
        pocket = ((xx - centre - size * 0.12) / (size * 0.05)) ** 2 + ((yy - centre + size * 0.1) / (size * 0.04)) ** 2
        hu[pocket <= 1.0] = GAS_HU
    for disc in discs:
        hu[disc_mask(size, disc, pixel_spacing)] = disc.hu
    # Bounded noise keeps every class far from the -500 and 300 HU thresholds, so expected masks are exact.
    hu += np.clip(rng.normal(0, NOISE_HU, hu.shape), -4 * NOISE_HU, 4 * NOISE_HU)
    # Scanners clip to the 12-bit range they store with the usual intercept of -1024.
    clipped: NDArray[np.float64] = np.clip(hu, -1024.0, 3071.0)
    return clipped


def body_ellipse_mask(size: int = 512) -> NDArray[np.bool_]:
    """The body of hu_slice: everything inside its outer ellipse (fat rim, soft tissue, gas pocket, discs)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = size / 2
    mask: NDArray[np.bool_] = ((xx - centre) / (size * 0.42)) ** 2 + ((yy - centre) / (size * 0.33)) ** 2 <= 1.0
    return mask


def disc_mask(size: int, disc: Disc, pixel_spacing: tuple[float, float] = (0.7, 0.7)) -> NDArray[np.bool_]:
    """The pixels of one disc (the radius converted to pixels along each axis)."""
    yy, xx = np.mgrid[0:size, 0:size]
    row_mm, column_mm = pixel_spacing
    mask: NDArray[np.bool_] = ((xx - disc.x) * column_mm) ** 2 + ((yy - disc.y) * row_mm) ** 2 <= disc.radius_mm**2
    return mask


def ct_slice_dataset(
    size: int = 512,
    discs: Sequence[Disc] | None = None,
    *,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = False,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float, str | None] | None = None,
    instance_number: int = 1,
    slice_position: float = 0.0,
    slice_thickness: float = 1.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "CT",
    frames: int = 1,
    frame_shift_px: float = 24.0,
    gas: bool = True,
    phi: bool = False,
    seed: int = 7,
) -> Dataset:
    """A CT slice (or a multi-frame image whose frame f has its discs moved right by f * frame_shift_px).

    discs default to default_discs(size); pass () for soft tissue only.
    """
    if discs is None:
        discs = default_discs(size)
    hu_frames = [
        hu_slice(
            size,
            [disc._replace(x=disc.x + frame * frame_shift_px) for disc in discs],
            pixel_spacing=pixel_spacing,
            gas=gas,
            seed=seed + frame,
        )
        for frame in range(frames)
    ]
    stored = np.rint((np.stack(hu_frames) - intercept) / slope)
    low, high = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    if stored.min() < low or stored.max() > high:
        raise ValueError("the HU values do not fit the stored range: change intercept, slope or bits_stored")
    pixels = stored.astype(np.int16 if signed else np.uint16)

    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if frames == 1 else MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.StudyInstanceUID = study_uid or uid("study", seed)
    ds.SeriesInstanceUID = series_uid or uid("series", seed)
    # One UID per distinct slice: the store holds an owner to one file per SOP Instance UID, so two
    # slices that differ (here, in position) must not share one.
    ds.SOPInstanceUID = uid("instance", seed, instance_number, ds.SeriesInstanceUID, slice_position)
    ds.Modality = modality
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [-(size / 2) * pixel_spacing[1], -(size / 2) * pixel_spacing[0], slice_position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = slice_position
    ds.SliceThickness = slice_thickness
    ds.PixelSpacing = list(pixel_spacing)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        center, width, function = window
        ds.WindowCenter = center
        ds.WindowWidth = width
        if function is not None:
            ds.VOILUTFunction = function
    if phi:
        add_phi(ds)
    ds.PixelData = (pixels if frames > 1 else pixels[0]).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def add_phi(ds: Dataset) -> None:
    """Fill in identifying attributes and a private element, as an unanonymised scanner export has them."""
    ds.PatientSex = "F"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)


def ct_series(
    n_slices: int = 5,
    *,
    size: int = 128,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slice_thickness: float = 2.5,
    first_position: float = -100.0,
    seed: int = 11,
    phi: bool = False,
) -> list[Dataset]:
    """A small CT series: one study and series, instances 1..n at increasing z, discs from series_discs."""
    study, series = uid("series-study", seed), uid("series", seed)
    return [
        ct_slice_dataset(
            size,
            series_discs(index, n_slices, size=size),
            pixel_spacing=pixel_spacing,
            instance_number=index + 1,
            slice_position=first_position + index * slice_thickness,
            slice_thickness=slice_thickness,
            study_uid=study,
            series_uid=series,
            phi=phi,
            seed=seed + index,
        )
        for index in range(n_slices)
    ]


def series_discs(index: int, n_slices: int, *, size: int = 128) -> tuple[Disc, ...]:
    """The dense regions of slice index: a vertebra in every slice, a second bone only in the upper half."""
    scale = size / 128
    vertebra = Disc(64 * scale, 85 * scale, 5.0 * scale, 800.0)
    rib = Disc(34 * scale, 60 * scale, 3.0 * scale, 650.0)
    return (vertebra, rib) if index >= n_slices // 2 else (vertebra,)


def dicom_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The dataset as a Part 10 file in transfer_syntax (native, deflated, RLE, JPEG-LS, JPEG 2000 or JPEG)."""
    ds = copy.deepcopy(ds)
    syntax = UID(transfer_syntax)
    if syntax in (JPEGLosslessSV1, JPEGLossless, JPEGExtended12Bit):
        _compress_jpeg(ds, syntax)
    elif syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    elif syntax == ExplicitVRBigEndian and ds.BitsAllocated > 8:
        # pydicom writes the pixel bytes as they are: big endian needs them swapped first.
        ds.PixelData = np.frombuffer(ds.PixelData, dtype=f"<u{ds.BitsAllocated // 8}").byteswap().tobytes()
        ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _compress_jpeg(ds: Dataset, syntax: UID) -> None:
    # libjpeg-turbo (imagecodecs) writes SOF3 lossless and 12-bit SOF1 frames; pydicom's encoders cannot.
    from imagecodecs import jpeg8_encode

    frames = int(ds.get("NumberOfFrames", 1))
    dtype = np.int16 if ds.PixelRepresentation else np.uint16
    pixels = np.frombuffer(ds.PixelData, dtype=dtype).reshape(frames, ds.Rows, ds.Columns)
    # JPEG has no sign: signed samples travel as their two's complement bit pattern within Bits Stored.
    samples = (pixels.view(np.uint16) & np.uint16((1 << ds.BitsStored) - 1)).astype(np.uint16)
    if syntax == JPEGExtended12Bit:
        if ds.BitsStored > 12:
            raise ValueError("JPEG Extended holds at most 12 bits")
        encoded = [jpeg8_encode(frame, level=95, bitspersample=12) for frame in samples]
    else:
        predictor = 1 if syntax == JPEGLosslessSV1 else 4
        encoded = [
            jpeg8_encode(frame, lossless=True, predictor=predictor, bitspersample=ds.BitsStored) for frame in samples
        ]
    ds.PixelData = encapsulate([bytes(frame) for frame in encoded])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


# The chest radiograph: a detector of 0.139 mm pixels, 12 bits stored, MONOCHROME1 (high values show dark).
CR_COLUMNS, CR_ROWS = 2000, 2500
CR_PIXEL_SPACING = (0.139, 0.139)
CR_BITS_STORED = 12
# Direct exposure (air beside the body) and the window from the darkest lung to the densest bone.
CR_AIR = 3900.0
CR_WINDOW = (2800.0, 2400.0)
CR_NOISE = 3.0


def chest_cr_dataset(
    *,
    columns: int = CR_COLUMNS,
    rows: int = CR_ROWS,
    seed: int = 29,
    patient_name: str = "Phantom^Chest",
    patient_id: str = "PHANTOM-0002",
    phi: bool = False,
) -> Dataset:
    """A synthetic PA chest radiograph (CR), uncompressed: torso, lungs with vascular markings, heart,
    spine, ribs and clavicles, in 12-bit MONOCHROME1 values (exposure: air and lungs high, bone low).

    2,000 x 2,500 by default, as a 35 x 43 cm cassette at 0.139 mm (ImagerPixelSpacing; a radiograph
    has no PixelSpacing at the patient): 10 MB decoded, about 3.2 MB as JPEG Lossless SV1
    (dicom_bytes(ds, JPEGLosslessSV1)), so one frame fits a Lambda response only compressed. Other
    sizes scale the same anatomy.
    """
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.StudyInstanceUID = uid("cr-study", seed)
    ds.SeriesInstanceUID = uid("cr-series", seed)
    ds.SOPInstanceUID = uid("cr-instance", seed, columns, rows)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagerPixelSpacing = list(CR_PIXEL_SPACING)
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated = 16
    ds.BitsStored = CR_BITS_STORED
    ds.HighBit = CR_BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = CR_WINDOW
    if phi:
        add_phi(ds)
    ds.PixelData = chest_cr_values(columns=columns, rows=rows, seed=seed).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def chest_cr_values(*, columns: int = CR_COLUMNS, rows: int = CR_ROWS, seed: int = 29) -> NDArray[np.uint16]:
    """The stored values of chest_cr_dataset: CR_AIR less the attenuation along each ray, plus noise."""
    rng = np.random.default_rng(seed)
    # Positions as fractions of the image (x across, y down), so that any size shows the same chest.
    y = (np.arange(rows, dtype=np.float32) / rows)[:, None]
    x = (np.arange(columns, dtype=np.float32) / columns)[None, :]
    side = np.abs(x - 0.5)
    edge = 4.0 / columns  # soft edges, a few pixels wide
    # Torso: the neck widening over the shoulders; soft tissue thickest along the midline.
    half = 0.12 + 0.32 * np.clip((y - 0.03) / 0.15, 0, 1) ** 0.5
    body = _soft(half - side, edge)
    depth = np.sqrt(np.clip(1 - (side / half) ** 2, 0, 1))
    attenuation = 1500 * body * (0.35 + 0.65 * depth)
    # Lungs from the apices to the diaphragm (the right dome higher), less the heart and mediastinum.
    lungs = np.maximum(
        _lung(x, y, centre=0.305, width=0.175, dome=0.66), _lung(x, y, centre=0.695, width=0.17, dome=0.69)
    )
    heart = _soft(1 - (((x - 0.565) / 0.17) ** 2 + ((y - 0.635) / 0.13) ** 2), 0.03)
    mediastinum = _soft(0.065 - side, edge) * _soft(0.80 - y, 0.01)
    lungs = lungs * (1 - heart) * (1 - mediastinum)
    # Vascular markings: smooth random texture, denser towards the hila.
    coarse = rng.normal(0, 1, (rows // 25 + 2, columns // 25 + 2)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, "F").resize((columns, rows), Image.Resampling.BICUBIC))
    hilum = np.exp(-(((side - 0.10) / 0.10) ** 2 + ((y - 0.45) / 0.12) ** 2))
    attenuation -= lungs * (1000 - 70 * texture - 300 * hilum)
    attenuation += 150 * heart * body
    # Spine (vertebrae denser than the discs between them), ten pairs of ribs, the clavicles.
    vertebrae = 0.85 + 0.15 * np.cos(np.pi * y / 0.07) ** 2
    attenuation += 420 * _soft(0.03 - side, edge) * vertebrae * body
    for rib in range(10):
        curve = 0.17 + rib * 0.057 + 0.09 * (side / 0.4) ** 2 - 0.03 * side / 0.4
        attenuation += 200 * _soft(0.008 - np.abs(y - curve), 1.5 / rows) * body * _soft(side - 0.035, edge)
    clavicle = 0.125 - 0.05 * side / 0.3
    attenuation += (
        380 * _soft(0.010 - np.abs(y - clavicle), 1.5 / rows) * _soft(0.30 - side, edge) * _soft(side - 0.03, edge)
    )
    stored = CR_AIR - attenuation + rng.normal(0, CR_NOISE, (rows, columns)).astype(np.float32)
    values: NDArray[np.uint16] = np.clip(np.rint(stored), 0, (1 << CR_BITS_STORED) - 1).astype(np.uint16)
    return values


def _soft(distance: NDArray[np.float32], width: float) -> NDArray[np.float32]:
    """A smooth step from 0 (distance well below 0) to 1 (well above), `width` wide."""
    step: NDArray[np.float32] = 1.0 / (1.0 + np.exp(-np.clip(distance / width, -40, 40)))
    return step


def _lung(
    x: NDArray[np.float32], y: NDArray[np.float32], *, centre: float, width: float, dome: float
) -> NDArray[np.float32]:
    """One lung field: rounded at the apex, its floor the diaphragm dome, lower towards the chest wall."""
    across = (x - centre) / width
    floor = dome + 0.10 * np.clip(np.abs(x - 0.5) - 0.06, 0, None) / 0.3
    apex = 0.15 + 0.13 * np.abs(across) ** 1.5
    inside = np.minimum(np.minimum(1 - across**2, (y - apex) / 0.05), (floor - y) / 0.05)
    return _soft(inside, 0.04)


def stored_png16(ds: Dataset) -> bytes:
    """The stored values of a single-frame greyscale dataset as a 16-bit PNG, as a viewer's raw export writes it."""
    pixels = ds.pixel_array.astype(np.int32)
    if pixels.min() < 0:
        pixels -= pixels.min()
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_area_mm2(disc: Disc) -> float:
    """The area a disc should measure: pi r^2."""
    return math.pi * disc.radius_mm**2


def write_series(
    directory: Path, n_slices: int = 5, *, transfer_syntax: str = ExplicitVRLittleEndian, size: int = 512
) -> list[Path]:
    """Write a phantom series as slice_NNN.dcm files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in ct_series(n_slices, size=size):
        path = directory / f"slice_{int(ds.InstanceNumber):03d}.dcm"
        path.write_bytes(dicom_bytes(ds, transfer_syntax))
        paths.append(path)
    return paths


__all__ = [
    "DEFAULT_DISCS",
    "PHI",
    "PHI_STRINGS",
    "DeflatedExplicitVRLittleEndian",
    "Disc",
    "ExplicitVRBigEndian",
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "body_ellipse_mask",
    "chest_cr_dataset",
    "chest_cr_values",
    "ct_series",
    "ct_slice_dataset",
    "default_discs",
    "dicom_bytes",
    "disc_mask",
    "expected_area_mm2",
    "hu_slice",
    "series_discs",
    "stored_png16",
    "write_series",
]
