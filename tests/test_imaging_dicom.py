"""shared.imaging on DICOM: HU analysis of phantoms with known discs, every transfer syntax, real files, windows,
hostile input and PHI. The phantoms come from scripts.dev.phantom."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.decoders.base import JPEGExtended12BitDecoder, JPEGLosslessDecoder, JPEGLosslessSV1Decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from scripts.dev.phantom import (
    DEFAULT_DISCS,
    PHI_STRINGS,
    Disc,
    body_ellipse_mask,
    ct_series,
    ct_slice_dataset,
    dicom_bytes,
    disc_mask,
    expected_area_mm2,
    series_discs,
    write_series,
)
from shared.core.errors import InvalidImage, NoImageData, UnsupportedTransferSyntax
from shared.imaging import DICOM_CONTENT_TYPE, AnalyzedScan, DicomInfo, analyze_upload, integrity
from shared.imaging.pixels import Window
from shared.imaging.render import apply_window, grey_display
from tests.images import randomly_damaged

ROOT = Path(__file__).resolve().parent.parent
SPACING = (0.7, 0.7)


def read_testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is missing: pydicom-data must be installed"
    return Path(str(path)).read_bytes()


def image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return opened


def grey(data: bytes) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.asarray(image(data).convert("L")).astype(np.int64)


@pytest.fixture(scope="module")
def slice_ds() -> Dataset:
    return ct_slice_dataset()


@pytest.fixture(scope="module")
def uncompressed(slice_ds: Dataset) -> AnalyzedScan:
    return analyze_upload(dicom_bytes(slice_ds))


# --- HU analysis of a phantom with known discs ---------------------------------------------------------------


def test_hu_analysis_finds_each_disc_with_its_area_and_hu(uncompressed: AnalyzedScan) -> None:
    # Given a 512 x 512 slice at 0.7 mm with three bone discs (6-14 mm radius, 700-1000 HU) in soft tissue
    findings = uncompressed.results["findings"]

    # Then each disc is one finding, in (y, x) order, measured within 5 % and 10 HU
    discs = sorted(DEFAULT_DISCS, key=lambda disc: (disc.y - disc.radius_mm / SPACING[0], disc.x))
    assert len(findings) == len(discs)
    for finding, disc in zip(findings, discs, strict=True):
        box = finding["bbox"]
        assert box["x"] <= disc.x < box["x"] + box["width"]
        assert box["y"] <= disc.y < box["y"] + box["height"]
        assert finding["areaMm2"] == pytest.approx(expected_area_mm2(disc), rel=0.05)
        assert finding["areaPx"] == int(disc_mask(512, disc, SPACING).sum())
        assert finding["meanHu"] == pytest.approx(disc.hu, abs=10)
        assert disc.hu < finding["maxHu"] <= disc.hu + 40
        # Bone shows white in the soft-tissue window
        assert finding["meanIntensity"] == 1.0


def test_hu_analysis_body_is_the_ellipse_with_its_gas_pocket_filled(uncompressed: AnalyzedScan) -> None:
    body = uncompressed.results["body"]

    expected = body_ellipse_mask(512)
    rows, columns = np.flatnonzero(expected.any(axis=1)), np.flatnonzero(expected.any(axis=0))
    assert body["areaPx"] == int(expected.sum())
    assert body["bbox"] == {
        "x": int(columns[0]),
        "y": int(rows[0]),
        "width": int(columns[-1] - columns[0] + 1),
        "height": int(rows[-1] - rows[0] + 1),
    }
    assert body["areaMm2"] == pytest.approx(expected.sum() * SPACING[0] * SPACING[1], abs=0.01)


def test_hu_analysis_reports_its_parameters(uncompressed: AnalyzedScan) -> None:
    analysis = uncompressed.results["analysis"]

    assert analysis == {
        "method": "hu-body+hu-dense",
        "version": 3,
        "unit": "HU",
        "bodyThreshold": -500.0,
        "denseThreshold": 300.0,
        # 10 mm2 at 0.7 x 0.7 mm is 20.4 pixels
        "minAreaPx": 21,
        "minAreaMm2": 10.0,
        "bitDepth": 12,
        "window": {"center": 40.0, "width": 400.0, "function": "LINEAR", "source": "default-ct"},
    }
    assert json.loads(json.dumps(uncompressed.results)) == uncompressed.results


def test_hu_analysis_uses_the_dense_threshold_given() -> None:
    # Given discs at 700 and 1000 HU and a threshold between them
    data = dicom_bytes(ct_slice_dataset())

    findings = analyze_upload(data, dense_hu_threshold=850.0).results["findings"]

    assert sorted(round(f["meanHu"], -2) for f in findings) == [900.0, 1000.0]


def test_hu_analysis_minimum_area_follows_pixel_spacing() -> None:
    # Given a 1.5 mm radius disc (7 mm2, 15 pixels at 0.7 mm) and a 2 mm one (12.6 mm2, 103 pixels at 0.35 mm)
    small = (Disc(256, 256, 1.5, 900.0),)
    big_enough = (Disc(256, 256, 2.0, 900.0),)

    assert analyze_upload(dicom_bytes(ct_slice_dataset(discs=small))).results["findings"] == []
    fine = analyze_upload(dicom_bytes(ct_slice_dataset(discs=big_enough, pixel_spacing=(0.35, 0.35))))
    assert [f["areaMm2"] for f in fine.results["findings"]] == [pytest.approx(math.pi * 4, rel=0.05)]
    assert fine.results["analysis"]["minAreaPx"] == math.ceil(10 / 0.35**2)


def test_hu_analysis_without_pixel_spacing_uses_16_pixels() -> None:
    # Given a disc of about 23 pixels (8.8 mm2 at 0.7 mm: under 10 mm2) in a file without Pixel Spacing
    disc = Disc(64, 64, 1.9, 900.0)
    ds = ct_slice_dataset(size=128, discs=(disc,))
    del ds.PixelSpacing

    results = analyze_upload(dicom_bytes(ds)).results

    # Then only the 16-pixel floor applies, and no area in mm2 is claimed
    assert results["analysis"]["minAreaPx"] == 16
    assert [(f["areaPx"], f["areaMm2"]) for f in results["findings"]] == [(int(disc_mask(128, disc).sum()), None)]


def test_monochrome1_inverts_the_preview_and_keeps_the_findings(slice_ds: Dataset) -> None:
    inverted = analyze_upload(dicom_bytes(ct_slice_dataset(photometric="MONOCHROME1")))
    normal = analyze_upload(dicom_bytes(slice_ds))

    assert inverted.results == normal.results
    assert inverted.dicom is not None and inverted.dicom.photometric_interpretation == "MONOCHROME1"
    # Bone (white in MONOCHROME2) is black; air (black) is white; JPEG moves levels by a few at most
    assert np.abs(grey(inverted.preview_jpeg) + grey(normal.preview_jpeg) - 255).mean() < 2
    assert grey(inverted.preview_jpeg)[340, 256] < 10
    assert grey(inverted.thumbnail_jpeg)[5, 5] > 245


def test_signed_and_unsigned_storage_give_identical_findings(uncompressed: AnalyzedScan) -> None:
    # Given the same HU stored as unsigned (intercept -1024) and as signed two's complement (intercept 0)
    signed = analyze_upload(dicom_bytes(ct_slice_dataset(signed=True, intercept=0.0)))

    assert signed.results == uncompressed.results
    assert signed.preview_jpeg == uncompressed.preview_jpeg


@pytest.mark.parametrize(("slope", "intercept"), [(2.0, -1024.0), (-1.0, 1024.0)])
def test_rescale_slope_is_applied(uncompressed: AnalyzedScan, slope: float, intercept: float) -> None:
    # Given the same HU stored at half scale, or reversed (a negative slope)
    scan = analyze_upload(dicom_bytes(ct_slice_dataset(slope=slope, intercept=intercept)))

    findings, expected = scan.results["findings"], uncompressed.results["findings"]
    assert [(f["bbox"], f["areaPx"]) for f in findings] == [(f["bbox"], f["areaPx"]) for f in expected]
    for finding, reference in zip(findings, expected, strict=True):
        # Halving the stored values rounds each pixel by up to 1 HU
        assert finding["meanHu"] == pytest.approx(reference["meanHu"], abs=1)
    assert scan.results["body"]["areaPx"] == uncompressed.results["body"]["areaPx"]


# --- every transfer syntax gives the same analysis ---------------------------------------------------------------

LOSSLESS_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
]


@pytest.mark.parametrize("transfer_syntax", LOSSLESS_SYNTAXES, ids=lambda syntax: UID(syntax).keyword)
def test_lossless_transfer_syntaxes_give_identical_results(
    slice_ds: Dataset, uncompressed: AnalyzedScan, transfer_syntax: str
) -> None:
    scan = analyze_upload(dicom_bytes(slice_ds, transfer_syntax))

    assert scan.results == uncompressed.results
    assert scan.dicom is not None and scan.dicom.transfer_syntax_uid == transfer_syntax
    assert scan.preview_jpeg == uncompressed.preview_jpeg


def test_lossy_12bit_jpeg_extended_finds_the_same_discs(slice_ds: Dataset, uncompressed: AnalyzedScan) -> None:
    scan = analyze_upload(dicom_bytes(slice_ds, JPEGExtended12Bit))

    assert [(f["bbox"], f["areaPx"]) for f in scan.results["findings"]] == [
        (f["bbox"], f["areaPx"]) for f in uncompressed.results["findings"]
    ]
    for lossy, exact in zip(scan.results["findings"], uncompressed.results["findings"], strict=True):
        assert lossy["meanHu"] == pytest.approx(exact["meanHu"], abs=2)


# --- real files from pydicom and pydicom-data --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RealFile:
    name: str
    transfer_syntax: str
    frames: int = 1
    colour: bool = False
    # Only CT in HU has regions (dense ones); every other DICOM image has its body alone.
    method: str = "otsu-body"


REAL_FILES = [
    RealFile("CT_small.dcm", ExplicitVRLittleEndian, method="hu-body+hu-dense"),
    RealFile("MR_small.dcm", ExplicitVRLittleEndian),
    RealFile("MR_small_implicit.dcm", ImplicitVRLittleEndian),
    RealFile("MR_small_bigendian.dcm", ExplicitVRBigEndian),
    RealFile("MR_small_RLE.dcm", RLELossless),
    RealFile("MR_small_jp2klossless.dcm", JPEG2000Lossless),
    RealFile("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
    RealFile("JPEG-lossy.dcm", JPEGExtended12Bit),
    RealFile("JPGExtended.dcm", JPEGExtended12Bit),
    RealFile("JPEG-LL.dcm", JPEGLosslessSV1),
    RealFile("JPGLosslessP14SV1_1s_1f_8b.dcm", JPEGLosslessSV1),
    RealFile("bad_sequence.dcm", JPEGLosslessSV1, method="hu-body+hu-dense"),
    RealFile("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
    RealFile("693_J2KI.dcm", "1.2.840.10008.1.2.4.91", method="hu-body+hu-dense"),
    RealFile("JPEGLSNearLossless_08.dcm", "1.2.840.10008.1.2.4.81"),
    RealFile("image_dfl.dcm", DeflatedExplicitVRLittleEndian),
    RealFile("ExplVR_BigEnd.dcm", ExplicitVRBigEndian, colour=True),
    RealFile("SC_rgb.dcm", ExplicitVRLittleEndian, colour=True),
    RealFile("SC_rgb_16bit.dcm", ExplicitVRLittleEndian, colour=True),
    RealFile("SC_rgb_rle.dcm", RLELossless, colour=True),
    RealFile("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, colour=True),
    RealFile("SC_rgb_gdcm_KY.dcm", "1.2.840.10008.1.2.4.91", colour=True),
    RealFile("US1_J2KI.dcm", "1.2.840.10008.1.2.4.91", colour=True),
    RealFile("OBXXXX1A.dcm", ExplicitVRLittleEndian, colour=True),
    RealFile("gdcm-US-ALOKA-16.dcm", ImplicitVRLittleEndian, colour=True),
    RealFile("SC_ybr_full_uncompressed.dcm", ExplicitVRLittleEndian, colour=True),
    RealFile("SC_ybr_full_422_uncompressed.dcm", ExplicitVRLittleEndian, colour=True),
    RealFile("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", colour=True),
    RealFile("examples_ybr_color.dcm", "1.2.840.10008.1.2.4.50", frames=30, colour=True),
    RealFile("emri_small.dcm", ExplicitVRLittleEndian, frames=10),
    RealFile("emri_small_RLE.dcm", RLELossless, frames=10),
    RealFile("emri_small_jpeg_2k_lossless.dcm", JPEG2000Lossless, frames=10),
    RealFile("SC_rgb_rle_16bit_2frame.dcm", RLELossless, frames=2, colour=True),
    RealFile("rtdose.dcm", ImplicitVRLittleEndian, frames=15),
    RealFile("liver.dcm", ExplicitVRLittleEndian, frames=3),
    RealFile("mlut_18.dcm", ExplicitVRLittleEndian),  # Modality LUT Sequence instead of a rescale
    RealFile("vlut_04.dcm", ExplicitVRLittleEndian),  # VOI LUT Sequence: not used, the auto window applies
    RealFile("eCT_Supplemental.dcm", ExplicitVRLittleEndian, frames=2),
]


@pytest.mark.parametrize("real", REAL_FILES, ids=lambda real: real.name)
def test_real_files_decode_in_their_transfer_syntax(real: RealFile) -> None:
    ds = pydicom.dcmread(io.BytesIO(read_testdata(real.name)), stop_before_pixels=True)

    scan = analyze_upload(read_testdata(real.name))

    assert scan.content_type == DICOM_CONTENT_TYPE
    assert (scan.width, scan.height) == (ds.Columns, ds.Rows)
    assert scan.dicom is not None
    assert scan.dicom.transfer_syntax_uid == real.transfer_syntax
    assert (scan.dicom.frame_count, scan.dicom.frame_analyzed) == (real.frames, (real.frames - 1) // 2 + 1)
    assert scan.results["analysis"]["method"] == real.method
    assert scan.results["regions"]["kind"] == ("dense" if real.method == "hu-body+hu-dense" else "none")
    assert bool(scan.results["findings"]) == (real.method == "hu-body+hu-dense")
    assert json.loads(json.dumps(scan.results)) == scan.results
    preview = image(scan.preview_jpeg)
    assert preview.size == (scan.width, scan.height)
    assert preview.mode == ("RGB" if real.colour else "L")
    assert max(image(scan.thumbnail_jpeg).size) <= 256


def test_every_encoding_of_the_same_mr_slice_gives_identical_results() -> None:
    names = [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ]
    results = [analyze_upload(read_testdata(name)).results for name in names]

    assert all(result == results[0] for result in results)
    # An MR has no regions, but its body is measured the same from every encoding
    assert results[0]["findings"] == []
    assert results[0]["body"]["areaPx"] > 0


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb.dcm",
        "SC_rgb_16bit.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_ybr_full_uncompressed.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    ],
)
def test_colour_files_keep_their_colours(name: str) -> None:
    # The SC_rgb family has bands of known colour: red, green, blue, dark and light grey down column 50.
    # YBR files converted twice (or not at all) would show other colours.
    preview = np.asarray(image(analyze_upload(read_testdata(name)).preview_jpeg)).astype(int)

    expected = {5: (255, 0, 0), 25: (0, 255, 0), 45: (0, 0, 255), 75: (64, 64, 64), 95: (255, 255, 255)}
    for row, colour in expected.items():
        assert np.abs(preview[row, 50] - np.array(colour)).max() <= 8, row


def test_palette_colour_is_rendered_through_its_lookup_table() -> None:
    preview = np.asarray(image(analyze_upload(read_testdata("OBXXXX1A.dcm")).preview_jpeg)).astype(int)

    # Its palette maps some indexes to colours, so not every pixel is grey
    assert np.abs(preview[..., 0] - preview[..., 2]).max() > 60


def test_enhanced_ct_reads_geometry_and_window_from_functional_groups() -> None:
    scan = analyze_upload(read_testdata("eCT_Supplemental.dcm"))

    assert scan.dicom is not None
    assert scan.dicom.pixel_spacing_mm == (0.388672, 0.388672)
    assert scan.dicom.slice_thickness_mm == 10.0
    assert scan.dicom.slice_position == -159.0
    assert (scan.dicom.frame_count, scan.dicom.frame_analyzed) == (2, 1)
    assert scan.results["analysis"]["window"] == {
        "center": 49.0,
        "width": 102.0,
        "function": "LINEAR",
        "source": "file",
    }


# --- the libjpeg-turbo plugin against pydicom's own reference values ----------------------------------------------


def test_jpeg_plugin_is_registered_once_for_lossless_and_extended() -> None:
    from shared.imaging import dicom

    dicom.register_plugins()  # again: harmless
    for decoder in (JPEGLosslessDecoder, JPEGLosslessSV1Decoder, JPEGExtended12BitDecoder):
        assert "imagecodecs" in decoder.available_plugins


@pytest.mark.parametrize(
    ("name", "index", "expected"),
    [
        # pydicom's tests/pixels/pixels_reference.py, decoded there by pylibjpeg-libjpeg
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", (300, slice(512, 520)), (26, 26, 25, 22, 19, 16, 14, 15)),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", (600, slice(512, 520)), (45, 43, 41, 38, 33, 30, 26, 21)),
        ("JPEG-LL.dcm", (400, slice(124, 132)), (60, 58, 61, 68, 59, 65, 64, 67)),
        ("JPEG-LL.dcm", (600, slice(124, 132)), (3, 1, 2, 0, 2, 1, 2, 0)),
        ("JPEG-lossy.dcm", (420, slice(140, 141)), (244,)),
        ("JPEG-lossy.dcm", (230, slice(120, 121)), (95,)),
        ("JPGExtended.dcm", (420, slice(140, 141)), (244,)),
    ],
)
def test_jpeg_plugin_matches_reference_samples(name: str, index: tuple[int, slice], expected: tuple[int, ...]) -> None:
    import shared.imaging.dicom  # noqa: F401  (registers the plugin)

    arr = pixel_array(pydicom.dcmread(io.BytesIO(read_testdata(name))), decoding_plugin="imagecodecs")

    assert tuple(int(value) for value in arr[index]) == expected


def test_jpeg_plugin_decodes_lossless_rgb_exactly() -> None:
    import shared.imaging.dicom  # noqa: F401

    lossless = pixel_array(
        pydicom.dcmread(io.BytesIO(read_testdata("SC_rgb_jpeg_gdcm.dcm"))), decoding_plugin="imagecodecs"
    )

    assert np.array_equal(lossless, pixel_array(pydicom.dcmread(io.BytesIO(read_testdata("SC_rgb.dcm")))))


def test_png_and_jpeg_uploads_do_not_import_pydicom() -> None:
    code = (
        "import io, sys; from PIL import Image; from shared.imaging import analyze_upload; "
        "b = io.BytesIO(); Image.new('L', (32, 32), 9).save(b, 'PNG'); analyze_upload(b.getvalue()); "
        "print('pydicom' in sys.modules, 'imagecodecs' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)

    assert result.stdout.split() == ["False", "False"]


# --- windows ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # PS3.3 C.11.2.1.2 with c = 40, w = 400 at -160, 40, 140, 240 and 500 HU
        ("LINEAR", [0, 128, 192, 255, 255]),
        ("LINEAR_EXACT", [0, 128, 191, 255, 255]),
        # 255 / (1 + exp(-4 (x - c) / w)): 30.4, 127.5, 186.4, 224.6, 252.5
        ("SIGMOID", [30, 128, 186, 225, 252]),
    ],
)
def test_apply_window_follows_the_standard(function: str, expected: list[int]) -> None:
    values = np.array([-160.0, 40.0, 140.0, 240.0, 500.0])

    shown = apply_window(values, Window(40.0, 400.0, function))  # type: ignore[arg-type]

    assert shown.dtype == np.uint8
    assert shown.tolist() == expected


def test_apply_window_linear_edges() -> None:
    # LINEAR: 0 up to c - 0.5 - (w - 1) / 2, 255 above c - 0.5 + (w - 1) / 2; width 1 is a step at c - 0.5
    window = Window(100.0, 11.0, "LINEAR")

    assert apply_window(np.array([94.5, 94.6, 104.5, 104.6]), window).tolist() == [0, 3, 255, 255]
    assert apply_window(np.array([99.4, 99.5, 99.6]), Window(100.0, 1.0, "LINEAR")).tolist() == [0, 0, 255]


def test_apply_window_does_not_change_its_input() -> None:
    values = np.array([-1000, 0, 1000], dtype=np.int16)

    apply_window(values, Window(40.0, 400.0, "SIGMOID"))

    assert values.tolist() == [-1000, 0, 1000]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_grey_display_table_matches_windowing_each_value(dtype: type[np.integer[Any]]) -> None:
    info = np.iinfo(dtype)
    levels = np.random.default_rng(3).integers(info.min, info.max, (40, 50), endpoint=True).astype(dtype)
    window = Window(30.0, 300.0, "LINEAR")

    shown = grey_display(levels, slope=2.0, intercept=-1024.0, window=window)

    assert np.array_equal(shown, apply_window(levels.astype(np.float64) * 2.0 - 1024.0, window))


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ((60.0, 350.0, "LINEAR_EXACT"), {"center": 60.0, "width": 350.0, "function": "LINEAR_EXACT", "source": "file"}),
        ((60.0, 350.0, "SIGMOID"), {"center": 60.0, "width": 350.0, "function": "SIGMOID", "source": "file"}),
        ((60.0, 350.0, None), {"center": 60.0, "width": 350.0, "function": "LINEAR", "source": "file"}),
        (None, {"center": 40.0, "width": 400.0, "function": "LINEAR", "source": "default-ct"}),
    ],
)
def test_window_comes_from_the_file_else_the_ct_default(
    window: tuple[float, float, str | None] | None, expected: dict[str, Any]
) -> None:
    scan = analyze_upload(dicom_bytes(ct_slice_dataset(size=128, discs=(), window=window)))

    assert scan.results["analysis"]["window"] == expected
    # Soft tissue at 40 HU shows as the window maps it (JPEG may move it by a level or two)
    shown = apply_window(np.array([40.0]), Window(expected["center"], expected["width"], expected["function"]))
    assert abs(grey(scan.preview_jpeg)[64, 64] - int(shown[0])) <= 3


def test_first_of_several_windows_is_used() -> None:
    ds = ct_slice_dataset(size=128, discs=())
    ds.WindowCenter = [50, 300]
    ds.WindowWidth = [350, 1500]

    window = analyze_upload(dicom_bytes(ds)).results["analysis"]["window"]

    assert (window["center"], window["width"], window["source"]) == (50.0, 350.0, "file")


def test_invalid_file_window_falls_back_to_the_default() -> None:
    ds = ct_slice_dataset(size=128, discs=(), window=(40.0, 0.0, None))

    assert analyze_upload(dicom_bytes(ds)).results["analysis"]["window"]["source"] == "default-ct"


def test_non_ct_without_window_gets_the_auto_window_on_the_intensity_path() -> None:
    scan = analyze_upload(dicom_bytes(ct_slice_dataset(size=128, discs=series_discs(4, 5), modality="MR")))

    analysis = scan.results["analysis"]
    assert analysis["method"] == "otsu-body"
    assert analysis["window"]["source"] == "auto"
    assert analysis["window"]["function"] == "LINEAR_EXACT"
    assert "meanHu" not in scan.results["body"]


def test_ct_without_rescale_is_not_treated_as_hu() -> None:
    ds = ct_slice_dataset(size=128)
    del ds.RescaleSlope
    del ds.RescaleIntercept

    assert analyze_upload(dicom_bytes(ds)).results["analysis"]["unit"] == "intensity"


# --- what the regions are: dense on CT in HU, none on every other DICOM image ----------------------------------


def red_pixels(jpeg: bytes) -> int:
    """Pixels of the outline colour (255, 64, 64) in an annotated rendering, JPEG noise allowed for."""
    rgb = np.asarray(image(jpeg).convert("RGB")).astype(np.int64)
    return int(np.count_nonzero((rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)))


def test_ct_in_hu_has_dense_regions_at_or_above_the_threshold_it_names(uncompressed: AnalyzedScan) -> None:
    results = uncompressed.results

    assert results["regions"] == {
        "kind": "dense",
        "label": "Dense regions",
        "threshold": {"value": 300.0, "unit": "HU"},
        "reason": None,
    }
    assert [f["label"] for f in results["findings"]] == [f"dense region {n}" for n in (1, 2, 3)]
    assert all(f["meanHu"] >= 300 and f["maxHu"] >= 300 for f in results["findings"])
    assert red_pixels(uncompressed.annotated_jpeg) > 0


def test_the_dense_threshold_shown_is_the_one_used() -> None:
    # Given the default discs (700 to 1000 HU) and a threshold above the dimmest of them
    data = dicom_bytes(ct_slice_dataset(size=256))

    results = analyze_upload(data, dense_hu_threshold=850.0).results

    assert results["regions"]["threshold"] == {"value": 850.0, "unit": "HU"}
    assert results["analysis"]["denseThreshold"] == 850.0
    assert 0 < len(results["findings"]) < len(DEFAULT_DISCS)
    assert all(f["maxHu"] >= 850 for f in results["findings"])


@pytest.mark.parametrize(
    ("modality", "photometric"),
    [
        ("CR", "MONOCHROME1"),
        ("DX", "MONOCHROME1"),
        ("MG", "MONOCHROME2"),
        ("MR", "MONOCHROME2"),
        ("US", "MONOCHROME2"),
        ("PT", "MONOCHROME2"),
        ("NM", "MONOCHROME2"),
        ("XA", "MONOCHROME2"),
        ("OT", "MONOCHROME2"),
    ],
)
def test_other_modalities_have_no_regions_and_say_why(modality: str, photometric: str) -> None:
    # Given the CT phantom's pixels (bright discs, 12-bit, with a rescale) under another modality
    ds = ct_slice_dataset(size=128, discs=series_discs(0, 5), modality=modality, photometric=photometric)

    scan = analyze_upload(dicom_bytes(ds))

    # Then no region is measured, the reason names the modality, and the body is still found
    results = scan.results
    assert results["findings"] == []
    assert results["regions"] == {
        "kind": "none",
        "label": None,
        "threshold": None,
        "reason": f"{modality}: a density threshold means nothing on this kind of image.",
    }
    assert results["body"] is not None and results["body"]["areaPx"] > 0
    assert results["analysis"]["method"] == "otsu-body"
    assert results["analysis"]["denseThreshold"] is None
    # And the annotated image has no outline: it is the preview
    assert red_pixels(scan.annotated_jpeg) == 0
    assert np.abs(grey(scan.annotated_jpeg) - grey(scan.preview_jpeg)).max() <= 2


def test_the_same_pixels_as_ct_in_hu_have_dense_regions() -> None:
    # The control for the test above: the same phantom as a CT has regions and outlines
    scan = analyze_upload(dicom_bytes(ct_slice_dataset(size=128, discs=series_discs(0, 5))))

    assert scan.results["regions"]["kind"] == "dense"
    assert scan.results["findings"]
    assert red_pixels(scan.annotated_jpeg) > 0


def test_a_ct_without_hounsfield_units_has_no_regions() -> None:
    ds = ct_slice_dataset(size=128)
    del ds.RescaleSlope
    del ds.RescaleIntercept

    results = analyze_upload(dicom_bytes(ds)).results

    assert results["findings"] == []
    assert results["regions"]["kind"] == "none"
    assert results["regions"]["reason"] == (
        "A CT without Hounsfield units: a density threshold means nothing on this kind of image."
    )


def test_a_dicom_image_without_a_modality_has_no_regions() -> None:
    ds = ct_slice_dataset(size=128, modality="MR")
    del ds.Modality

    results = analyze_upload(dicom_bytes(ds)).results

    assert results["findings"] == []
    assert results["regions"]["reason"] == "This DICOM image: a density threshold means nothing on this kind of image."


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "US1_J2KI.dcm", "MR_small.dcm"])
def test_real_colour_and_mr_files_have_no_regions(name: str) -> None:
    modality = pydicom.dcmread(io.BytesIO(read_testdata(name)), stop_before_pixels=True).Modality

    scan = analyze_upload(read_testdata(name))

    assert scan.results["findings"] == []
    assert scan.results["regions"]["kind"] == "none"
    assert scan.results["regions"]["reason"].startswith(f"{modality}: ")
    # The annotated rendering is the preview: nothing drawn on it (only JPEG's rounding between them)
    annotated, preview = (
        np.asarray(image(jpeg).convert("RGB")).astype(np.int64) for jpeg in (scan.annotated_jpeg, scan.preview_jpeg)
    )
    assert np.abs(annotated - preview).max() <= 2


# --- series and metadata ----------------------------------------------------------------------------------------


def test_series_slices_carry_their_whitelisted_metadata() -> None:
    series = ct_series(5)

    scans = [analyze_upload(dicom_bytes(ds)) for ds in series]

    infos = [scan.dicom for scan in scans]
    assert all(info is not None for info in infos)
    for index, (info, ds, scan) in enumerate(zip(infos, series, scans, strict=True)):
        assert info is not None
        assert info == DicomInfo(
            modality="CT",
            study_instance_uid=ds.StudyInstanceUID,
            series_instance_uid=ds.SeriesInstanceUID,
            sop_instance_uid=ds.SOPInstanceUID,
            instance_number=index + 1,
            slice_position=-100.0 + index * 2.5,
            pixel_spacing_mm=(0.7, 0.7),
            slice_thickness_mm=2.5,
            rows=128,
            columns=128,
            frame_count=1,
            frame_analyzed=1,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            photometric_interpretation="MONOCHROME2",
            bits_stored=12,
        )
        assert len(scan.results["findings"]) == len(series_discs(index, 5))
    assert len({info.study_instance_uid for info in infos if info}) == 1
    assert len({info.sop_instance_uid for info in infos if info}) == 5


def test_written_series_files_are_read_back_in_order(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "series", 3, transfer_syntax=JPEGLosslessSV1, size=64)

    infos = [analyze_upload(path.read_bytes()).dicom for path in paths]

    assert [path.name for path in paths] == ["slice_001.dcm", "slice_002.dcm", "slice_003.dcm"]
    assert [(info.instance_number, info.transfer_syntax_uid) for info in infos if info] == [
        (1, JPEGLosslessSV1),
        (2, JPEGLosslessSV1),
        (3, JPEGLosslessSV1),
    ]


def test_dicom_info_json_is_camel_case() -> None:
    info = analyze_upload(dicom_bytes(ct_series(1)[0])).dicom

    assert info is not None
    document = info.to_json()
    assert list(document) == [
        "modality",
        "studyInstanceUid",
        "seriesInstanceUid",
        "sopInstanceUid",
        "instanceNumber",
        "slicePosition",
        "pixelSpacingMm",
        "sliceThicknessMm",
        "rows",
        "columns",
        "frameCount",
        "frameAnalyzed",
        "transferSyntaxUid",
        "photometricInterpretation",
        "bitsStored",
    ]
    assert document["pixelSpacingMm"] == [0.7, 0.7]
    assert json.loads(json.dumps(document)) == document


def test_png_and_jpeg_have_no_dicom_info() -> None:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 50).save(buffer, "PNG")

    assert analyze_upload(buffer.getvalue()).dicom is None


def test_multi_frame_analyzes_only_the_middle_frame() -> None:
    # Given 3 frames whose discs move 24 px right per frame
    one = analyze_upload(dicom_bytes(ct_slice_dataset(size=256, discs=(Disc(100, 128, 8.0, 900.0),))))
    three = analyze_upload(
        dicom_bytes(ct_slice_dataset(size=256, discs=(Disc(100, 128, 8.0, 900.0),), frames=3), JPEGLosslessSV1)
    )

    assert three.dicom is not None
    assert (three.dicom.frame_count, three.dicom.frame_analyzed) == (3, 2)
    [single], [middle] = one.results["findings"], three.results["findings"]
    assert middle["bbox"]["x"] == single["bbox"]["x"] + 24


def test_multi_frame_never_decodes_the_other_frames() -> None:
    # Given three JPEG Lossless frames of which only the middle one is a valid codestream
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ct_slice_dataset(size=128, frames=3, discs=()), JPEGLosslessSV1)))
    middle = get_frame(ds.PixelData, 1, number_of_frames=3)
    ds.PixelData = encapsulate([b"\xff\xd8 garbage", middle, b"\xff\xd8 garbage too"])

    scan = analyze_upload(save(ds))

    assert scan.dicom is not None and scan.dicom.frame_analyzed == 2


def save(ds: Dataset, **options: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, **options)
    return buffer.getvalue()


def test_bare_dataset_without_preamble_is_read() -> None:
    # Given a dataset written without the 128-byte preamble, 'DICM' and file meta
    ds = ct_slice_dataset(size=128, discs=series_discs(4, 5))
    del ds.file_meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    assert buffer.getvalue()[128:132] != b"DICM"

    scan = analyze_upload(buffer.getvalue())

    assert scan.content_type == DICOM_CONTENT_TYPE
    assert scan.dicom is not None and scan.dicom.transfer_syntax_uid == ImplicitVRLittleEndian
    assert len(scan.results["findings"]) == 2


def test_content_type_comes_from_the_bytes_not_the_name() -> None:
    # A DICOM file is DICOM whatever it is called; nothing but bytes reaches the analysis anyway
    assert analyze_upload(read_testdata("CT_small.dcm")).content_type == "application/dicom"


# --- hostile and damaged input ------------------------------------------------------------------------------------


def assert_plain_message(error: InvalidImage) -> None:
    # Messages go to API clients: plain words, no library internals
    assert error.message
    assert "Error" not in error.message
    assert "pydicom" not in error.message


@pytest.fixture(scope="module")
def small_bytes() -> bytes:
    return dicom_bytes(ct_slice_dataset(size=128, discs=series_discs(4, 5)))


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 100, 20_000, 32_000])
def test_truncated_dicom_is_refused(small_bytes: bytes, cut: int) -> None:
    with pytest.raises(InvalidImage) as raised:
        analyze_upload(small_bytes[:-cut])

    assert not isinstance(raised.value, NoImageData)
    assert_plain_message(raised.value)


@pytest.mark.parametrize("keep", [132, 140, 300, 700])
def test_dicom_cut_inside_its_header_is_refused(small_bytes: bytes, keep: int) -> None:
    with pytest.raises(InvalidImage) as raised:
        analyze_upload(small_bytes[:keep])

    assert_plain_message(raised.value)


@pytest.mark.parametrize(
    "transfer_syntax", [JPEGLosslessSV1, JPEG2000Lossless, RLELossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian]
)
def test_truncated_compressed_dicom_is_refused(transfer_syntax: str) -> None:
    data = dicom_bytes(ct_slice_dataset(size=128), transfer_syntax)

    # (Not 1: a deflated stream may end in a pad byte to even length, and losing it loses nothing.)
    for cut in (3, 9, len(data) // 3):
        with pytest.raises(InvalidImage):
            analyze_upload(data[:-cut])


def test_dicom_ending_inside_its_encapsulated_pixel_data_is_damaged_not_imageless() -> None:
    # pydicom drops every element it read when the file ends before the pixel data's delimiter
    with pytest.raises(InvalidImage) as raised:
        analyze_upload(read_testdata("emri_small_jpeg_2k_lossless_too_short.dcm"))

    assert not isinstance(raised.value, NoImageData)


def test_deflated_dataset_is_refused_when_it_inflates_beyond_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.imaging import dicom

    data = dicom_bytes(ct_slice_dataset(size=128), DeflatedExplicitVRLittleEndian)
    monkeypatch.setattr(dicom, "MAX_INFLATED_BYTES", 20_000)

    with pytest.raises(InvalidImage, match="inflates"):
        analyze_upload(data)


def test_dicom_without_pixel_data_is_no_image() -> None:
    with pytest.raises(NoImageData) as raised:
        analyze_upload(read_testdata("rtplan.dcm"))

    assert raised.value.code == "no_image"
    assert_plain_message(raised.value)


def test_structured_report_is_no_image() -> None:
    with pytest.raises(NoImageData):
        analyze_upload(read_testdata("test-SR.dcm"))


def test_pixel_data_cut_short_in_the_file_is_refused() -> None:
    # MR_truncated.dcm: its Pixel Data value ends before the length its element declares
    with pytest.raises(InvalidImage) as raised:
        analyze_upload(read_testdata("MR_truncated.dcm"))

    assert not isinstance(raised.value, NoImageData)


def test_pixel_data_shorter_than_rows_and_columns_declare_is_refused() -> None:
    # Given a well-formed element holding 1000 bytes fewer than 128 x 128 x 2
    ds = ct_slice_dataset(size=128)
    ds.PixelData = ds.PixelData[:-1000]

    with pytest.raises(InvalidImage, match="shorter than its header declares"):
        analyze_upload(dicom_bytes(ds))


def test_declared_size_over_max_pixels_is_refused_before_decoding() -> None:
    # Given a header claiming 65535 x 65535 pixels (the most Rows and Columns hold) over 512 bytes of pixel data
    ds = ct_slice_dataset(size=16, discs=())
    ds.Rows = ds.Columns = 65_535

    with pytest.raises(InvalidImage, match="too large") as raised:
        analyze_upload(dicom_bytes(ds))

    assert "40,000,000" in raised.value.message


def test_declared_size_is_checked_against_max_pixels_given() -> None:
    data = dicom_bytes(ct_slice_dataset(size=128, discs=()))

    with pytest.raises(InvalidImage, match="too large"):
        analyze_upload(data, max_pixels=128 * 128 - 1)
    assert analyze_upload(data, max_pixels=128 * 128).width == 128


def test_absurd_total_frame_data_is_refused_before_decoding() -> None:
    # Given frames that fit max_pixels one by one but declare 4 GiB together
    ds = ct_slice_dataset(size=16, discs=())
    ds.Rows = ds.Columns = 16_384
    ds.NumberOfFrames = 8

    with pytest.raises(InvalidImage, match="1 GiB"):
        analyze_upload(dicom_bytes(ds), max_pixels=10**9)


def relabel(data: bytes, transfer_syntax: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    # An element keeps the validation mode it was made with: replace it rather than set its value.
    del ds.file_meta.TransferSyntaxUID
    with pydicom.config.disable_value_validation():
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        return save(ds)


def test_unsupported_transfer_syntax_is_named() -> None:
    data = relabel(dicom_bytes(ct_slice_dataset(size=64), JPEG2000Lossless), "1.2.840.10008.1.2.4.92")

    with pytest.raises(UnsupportedTransferSyntax) as raised:
        analyze_upload(data)

    assert raised.value.code == "unsupported_transfer_syntax"
    assert "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)" in raised.value.message
    assert "1.2.840.10008.1.2.4.92" in raised.value.message


def test_unknown_transfer_syntax_is_named_by_its_uid() -> None:
    data = relabel(dicom_bytes(ct_slice_dataset(size=64), JPEG2000Lossless), "1.2.826.0.1.3680043.99.1")

    with pytest.raises(UnsupportedTransferSyntax, match=r"unknown transfer syntax \(1\.2\.826\.0\.1\.3680043\.99\.1\)"):
        analyze_upload(data)


def test_transfer_syntax_that_is_not_a_uid_is_not_echoed() -> None:
    data = relabel(dicom_bytes(ct_slice_dataset(size=64), JPEG2000Lossless), "Doe^Jane")

    with pytest.raises(InvalidImage) as raised:
        analyze_upload(data)

    assert "Doe" not in raised.value.message


@pytest.mark.parametrize("transfer_syntax", [JPEGLosslessSV1, JPEGExtended12Bit, JPEG2000Lossless, JPEGLSLossless])
def test_garbage_in_an_encapsulated_frame_is_refused(transfer_syntax: str) -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ct_slice_dataset(size=64), transfer_syntax)))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    noise = np.random.default_rng(5).integers(0, 256, len(frame) - 40, dtype=np.uint8).tobytes()
    # Keep the codestream's header so the decoder gets as far as the entropy-coded data
    ds.PixelData = encapsulate([frame[:40] + noise])

    with pytest.raises(InvalidImage) as raised:
        analyze_upload(save(ds))

    assert_plain_message(raised.value)


def test_garbage_rle_segments_are_refused() -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ct_slice_dataset(size=64), RLELossless)))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[:64] + bytes(range(256)) * 4])

    with pytest.raises(InvalidImage):
        analyze_upload(save(ds))


def test_codestream_larger_than_the_header_is_refused_before_decoding() -> None:
    # Given a 64 x 64 header over a 512 x 512 JPEG 2000 frame: a decoder would allocate the larger image
    big = pydicom.dcmread(io.BytesIO(dicom_bytes(ct_slice_dataset(size=512), JPEG2000Lossless)))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ct_slice_dataset(size=64), JPEG2000Lossless)))
    ds.PixelData = big.PixelData

    with pytest.raises(InvalidImage, match="does not match the image size"):
        analyze_upload(save(ds))


def test_inflated_size_limit_is_enforced_without_inflating_everything() -> None:
    data = dicom_bytes(ct_slice_dataset(size=128), DeflatedExplicitVRLittleEndian)
    start, syntax = integrity.dicom_meta_end(data)
    assert syntax == DeflatedExplicitVRLittleEndian

    integrity.check_inflated_size(data, start=start, limit=10**6)
    with pytest.raises(InvalidImage, match="inflates"):
        integrity.check_inflated_size(data, start=start, limit=10_000)


def test_dicm_prefix_over_garbage_is_refused() -> None:
    data = bytes(128) + b"DICM" + bytes(range(256)) * 8

    with pytest.raises(InvalidImage) as raised:
        analyze_upload(data)

    assert_plain_message(raised.value)


def test_float_pixel_data_is_refused_plainly() -> None:
    ds = ct_slice_dataset(size=16, discs=())
    del ds.PixelData
    ds.FloatPixelData = np.zeros(16 * 16, dtype=np.float32).tobytes()
    ds.BitsAllocated = 32

    with pytest.raises(InvalidImage, match="floating-point"):
        analyze_upload(dicom_bytes(ds))


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, JPEGLosslessSV1, JPEG2000Lossless, RLELossless])
def test_randomly_damaged_dicom_only_ever_raises_invalid_image(transfer_syntax: str) -> None:
    # Given a valid file with random bytes overwritten (seeded: the same damage every run)
    data = dicom_bytes(ct_slice_dataset(size=64), transfer_syntax)

    for damaged in randomly_damaged(data, seed=17, copies=60, max_bytes=11):
        # Then it is either read or refused as InvalidImage: no other exception escapes
        try:
            analyze_upload(damaged)
        except InvalidImage as error:
            assert_plain_message(error)


# --- PHI ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phi_bytes() -> bytes:
    return dicom_bytes(ct_slice_dataset(size=128, discs=series_discs(4, 5), phi=True))


def test_phi_never_reaches_results_or_dicom_info(phi_bytes: bytes) -> None:
    assert all(text.encode() in phi_bytes for text in PHI_STRINGS)  # the file does carry them

    scan = analyze_upload(phi_bytes)

    assert scan.dicom is not None
    exported = json.dumps({"results": scan.results, "dicom": scan.dicom.to_json()})
    for text in PHI_STRINGS:
        assert text not in exported
    for image_bytes in (scan.preview_jpeg, scan.annotated_jpeg, scan.thumbnail_jpeg):
        for text in PHI_STRINGS:
            assert text.encode() not in image_bytes


def test_dicom_info_holds_only_whitelisted_fields() -> None:
    assert [field.name for field in dataclasses.fields(DicomInfo)] == [
        "modality",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "instance_number",
        "slice_position",
        "pixel_spacing_mm",
        "slice_thickness_mm",
        "rows",
        "columns",
        "frame_count",
        "frame_analyzed",
        "transfer_syntax_uid",
        "photometric_interpretation",
        "bits_stored",
    ]


def test_whitelisted_slots_refuse_free_text() -> None:
    # Given PHI smuggled into attributes we keep: a name in Modality and in a UID
    ds = ct_slice_dataset(size=64)
    del ds.Modality, ds.SeriesInstanceUID
    with pydicom.config.disable_value_validation():
        ds.Modality = "Jane Doe"
        ds.SeriesInstanceUID = "1.2.3.Doe"
        data = dicom_bytes(ds)

    info = analyze_upload(data).dicom

    assert info is not None
    assert info.modality is None
    assert info.series_instance_uid is None


def test_only_finding_numbers_are_drawn(phi_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[str] = []
    original: Callable[..., None] = ImageDraw.ImageDraw.text

    def record(self: ImageDraw.ImageDraw, xy: Any, text: Any, *args: Any, **kwargs: Any) -> None:
        drawn.append(str(text))
        original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)

    scan = analyze_upload(phi_bytes)

    assert drawn == [str(number) for number in range(1, len(scan.results["findings"]) + 1)]


def test_nothing_is_logged_with_phi(phi_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    # Given also a name where a UID belongs: pydicom's value validation quotes such a value in a warning
    ds = ct_slice_dataset(size=64, phi=True)
    del ds.SeriesInstanceUID
    with pydicom.config.disable_value_validation():
        ds.SeriesInstanceUID = "1.2.Doe^Jane^Quincy"
        smuggled = dicom_bytes(ds)
    caplog.set_level(logging.DEBUG)

    analyze_upload(phi_bytes)
    analyze_upload(smuggled)
    with pytest.raises(InvalidImage):
        analyze_upload(phi_bytes[:-5])

    logged = "\n".join(record.getMessage() for record in caplog.records)
    for text in PHI_STRINGS:
        assert text not in logged


@pytest.mark.parametrize("size", [1, 2, 3])
def test_tiny_dicom_images_are_analyzed(size: int) -> None:
    scan = analyze_upload(dicom_bytes(ct_slice_dataset(size=size, discs=())))

    assert (scan.width, scan.height) == (size, size)
    assert scan.results["findings"] == []
    assert image(scan.thumbnail_jpeg).size == (size, size)


@pytest.mark.parametrize(
    "attributes",
    [
        {"RescaleSlope": 1e-300},
        {"RescaleSlope": 1e300, "RescaleIntercept": -1e300},
        {"PixelSpacing": [1e-300, 1e-300]},
        {"PixelSpacing": [1e300, 1e300]},
        {"PixelSpacing": [0, -1]},
        {"WindowCenter": 1e300, "WindowWidth": 1e-30, "VOILUTFunction": "LINEAR_EXACT"},
        {"WindowCenter": 40, "WindowWidth": 1e-30, "VOILUTFunction": "SIGMOID"},
        {"SliceThickness": -5, "ImagePositionPatient": [0, 0, 1e300]},
    ],
    ids=[
        "tiny-slope",
        "huge-rescale",
        "tiny-spacing",
        "huge-spacing",
        "negative-spacing",
        "tiny-window",
        "tiny-sigmoid",
        "geometry",
    ],
)
def test_absurd_header_values_never_break_the_results(attributes: dict[str, Any]) -> None:
    ds = ct_slice_dataset(size=128)
    for keyword, value in attributes.items():
        if keyword in ds:
            delattr(ds, keyword)
        with pydicom.config.disable_value_validation():
            setattr(ds, keyword, value)
    with pydicom.config.disable_value_validation():
        data = dicom_bytes(ds)

    scan = analyze_upload(data)

    # Then the results are finite JSON (PostgreSQL's jsonb refuses NaN and Infinity)
    assert scan.dicom is not None
    json.dumps({"results": scan.results, "dicom": scan.dicom.to_json()}, allow_nan=False)
