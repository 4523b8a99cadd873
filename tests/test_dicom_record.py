"""shared.dicom.describe_instance on real files (pydicom's and pydicom-data's), checked against what pydicom
reads from the same bytes: UIDs, QIDO attributes, the DICOM JSON, bulk data and frames. Then character
sets, the frame tables pydicom builds from fragments, and hostile input."""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames, get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from scripts.dev.phantom import ct_slice_dataset, dicom_bytes
from shared.core.errors import InvalidDicom, InvalidImage
from shared.dicom import BulkElement, InstanceRecord, describe_instance
from tests.conftest import ROOT
from tests.images import randomly_damaged

PIXEL_DATA = "7FE00010"
VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV"}
    | {"OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)
# Every message describe_instance may raise: fixed text, never a value from the file.
FIXED_MESSAGES = frozenset(
    {
        "The file is not a readable DICOM dataset.",
        "The DICOM file is damaged or incomplete.",
        "The DICOM file's header is larger than we accept.",
        "The DICOM file's encapsulated pixel data is damaged.",
        "The DICOM file lacks a valid SOP Class, SOP Instance, Study or Series Instance UID.",
    }
)

# (file, its transfer syntax, frames served as byte ranges)
REAL_FILES = [
    ("CT_small.dcm", "1.2.840.10008.1.2.1", True),  # native CT
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2", True),  # Implicit VR: ambiguous VRs resolved
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", True),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", True),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", True),  # JPEG baseline, colour
    ("emri_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", True),  # JPEG-LS, 10 frames
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70", True),  # JPEG Lossless
    ("emri_small.dcm", "1.2.840.10008.1.2.1", True),  # native multi-frame
    ("emri_small_RLE.dcm", "1.2.840.10008.1.2.5", True),
    ("emri_small_jpeg_2k_lossless.dcm", "1.2.840.10008.1.2.4.90", True),
    ("eCT_Supplemental.dcm", "1.2.840.10008.1.2.1", True),  # enhanced CT, functional groups
    ("color3d_jpeg_baseline.dcm", "1.2.840.10008.1.2.4.50", True),  # 120 JPEG frames
    ("SC_ybr_full_422_uncompressed.dcm", "1.2.840.10008.1.2.1", True),  # subsampled native colour
    ("liver.dcm", "1.2.840.10008.1.2.1", True),  # SEG, 1 bit, frames on byte boundaries
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2", False),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", False),  # deflated
    ("test-SR.dcm", "1.2.840.10008.1.2.1", False),  # structured report
    ("rtstruct.dcm", "1.2.840.10008.1.2", False),  # a bare dataset: no preamble, no meta
    ("rtplan.dcm", "1.2.840.10008.1.2", False),
    ("waveform_ecg.dcm", "1.2.840.10008.1.2.1", False),  # waveform data in a sequence, as bulk data
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "1.2.840.10008.1.2.1", True),  # overlays, private OB
]


def read_testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is missing: pydicom-data must be installed"
    return Path(str(path)).read_bytes()


def read_charset_file(name: str) -> bytes:
    (path,) = get_charset_files(name)
    return Path(path).read_bytes()


def pydicom_read(data: bytes) -> Dataset:
    """The dataset as pydicom reads it (the reference), its warnings about odd files silenced."""
    config.settings.reading_validation_mode = config.IGNORE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def element_value(ds: Dataset, path: str) -> Any:
    """The value at a bulk data path: tag / item index / tag ..."""
    parts = path.split(".")
    current = ds
    for tag, index in zip(parts[0:-1:2], parts[1:-1:2], strict=True):
        current = current[int(tag, 16)].value[int(index)]
    return current[int(parts[-1], 16)].value


def file_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def small_dataset(**attributes: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def frame_bytes(data: bytes, record: InstanceRecord) -> list[bytes]:
    assert record.frames is not None
    return [b"".join(data[offset : offset + length] for offset, length in frame) for frame in record.frames]


def pydicom_frames(ds: Dataset, record: InstanceRecord) -> list[bytes]:
    """Each frame as pydicom gives it: its encapsulation helpers, or the slice of native Pixel Data."""
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) if "ExtendedOffsetTable" in ds else None
        frames = list(
            generate_frames(ds.PixelData, number_of_frames=record.number_of_frames, extended_offsets=extended)
        )
        assert frames == [
            get_frame(ds.PixelData, i, number_of_frames=record.number_of_frames, extended_offsets=extended)
            for i in range(record.number_of_frames)
        ]
        return frames
    length = len(ds.PixelData) // record.number_of_frames
    if record.number_of_frames > 1:
        length = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    return [ds.PixelData[i * length : (i + 1) * length] for i in range(record.number_of_frames)]


def json_attributes(objects: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every attribute of a DICOM JSON object, nested ones included, with its path."""
    for tag, attribute in objects.items():
        yield tag, attribute
        for index, item in enumerate(attribute.get("Value", []) if attribute["vr"] == "SQ" else []):
            for path, nested in json_attributes(item):
                yield f"{tag}.{index}.{path}", nested


def assert_refused(data: bytes) -> InvalidImage:
    with pytest.raises(InvalidImage) as caught:
        describe_instance(data)
    error = caught.value
    assert isinstance(error, InvalidDicom)
    assert error.code == "invalid_dicom"
    assert error.message in FIXED_MESSAGES
    # Nothing pydicom said rides along: no cause, no context shown.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


@pytest.fixture(scope="module", params=REAL_FILES, ids=[name for name, _, _ in REAL_FILES])
def real(request: pytest.FixtureRequest) -> tuple[bytes, Dataset, InstanceRecord, bool]:
    name, transfer_syntax, byte_ranges = request.param
    data = read_testdata(name)
    record = describe_instance(data)
    assert record.transfer_syntax_uid == transfer_syntax
    return data, pydicom_read(data), record, byte_ranges


def test_describe_instance_reads_the_uids_and_image_size_pydicom_reads(
    real: tuple[bytes, Dataset, InstanceRecord, bool],
) -> None:
    _, ds, record, _ = real
    assert record.sop_class_uid == ds.SOPClassUID
    assert record.sop_instance_uid == ds.SOPInstanceUID
    assert record.study_instance_uid == ds.StudyInstanceUID
    assert record.series_instance_uid == ds.SeriesInstanceUID
    assert record.has_pixel_data == ("PixelData" in ds)
    assert record.rows == ds.get("Rows")
    assert record.columns == ds.get("Columns")
    assert record.number_of_frames == (int(ds.get("NumberOfFrames") or 1) if "PixelData" in ds else 0)


def test_describe_instance_reads_the_qido_attributes_pydicom_reads(
    real: tuple[bytes, Dataset, InstanceRecord, bool],
) -> None:
    _, ds, record, _ = real

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        if value is None:
            return None
        joined = "\\".join(str(part) for part in value) if isinstance(value, list | tuple) else str(value)
        return joined.strip() or None

    qido = record.attributes
    assert qido.patient_id == text("PatientID")
    assert qido.issuer_of_patient_id == text("IssuerOfPatientID")
    assert qido.patient_birth_date == text("PatientBirthDate")
    assert qido.patient_sex == text("PatientSex")
    assert qido.study_date == text("StudyDate")
    assert qido.study_time == text("StudyTime")
    assert qido.timezone_offset_from_utc == text("TimezoneOffsetFromUTC")
    assert qido.accession_number == text("AccessionNumber")
    assert qido.study_id == text("StudyID")
    assert qido.study_description == text("StudyDescription")
    assert qido.modality == text("Modality")
    assert qido.series_description == text("SeriesDescription")
    assert qido.series_number == (int(ds.SeriesNumber) if ds.get("SeriesNumber") is not None else None)
    assert qido.instance_number == (int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None)
    name = str(ds.get("PatientName") or "").rstrip("=") or None
    assert qido.patient_name == (name if name and name.strip("^=") else None)
    if qido.patient_name:
        assert qido.patient_name_keys[0] == qido.patient_name.split("=")[0].upper().rstrip("^")


def test_describe_instance_json_is_the_dicom_json_model(real: tuple[bytes, Dataset, InstanceRecord, bool]) -> None:
    _, ds, record, _ = real
    objects = json.loads(record.metadata_json)
    # Compact, UTF-8 as it is (no \\u escapes), ordered by tag at every level (PS3.18 F.2.2).
    assert record.metadata_json == json.dumps(objects, ensure_ascii=False, separators=(",", ":"))
    assert objects["00020010"] == {"vr": "UI", "Value": [record.transfer_syntax_uid]}
    assert not [tag for tag in objects if tag.startswith("0002") and tag != "00020010"]
    uris = {}
    for path, attribute in json_attributes(objects):
        tag = path.rsplit(".", 1)[-1]
        assert len(tag) == 8 and tag == tag.upper() and int(tag, 16) >= 0
        assert attribute["vr"] in VRS, path  # ambiguous VRs ("OB or OW", "US or SS") resolved
        assert not tag.endswith("0000") and tag != "FFFCFFFC"  # no group lengths, no padding
        assert len(set(attribute) - {"vr"}) <= 1
        if attribute["vr"] == "SQ":
            for item in attribute.get("Value", []):
                assert list(item) == sorted(item)
        if attribute["vr"] == "PN":
            for name in attribute.get("Value", []):
                assert name is None or (
                    isinstance(name, dict) and set(name) <= {"Alphabetic", "Ideographic", "Phonetic"}
                )
        if "BulkDataURI" in attribute:
            uris[path] = attribute["BulkDataURI"]
    assert list(objects) == sorted(objects)
    assert PIXEL_DATA not in objects or set(objects[PIXEL_DATA]) == {"vr", "BulkDataURI"}
    assert (PIXEL_DATA in uris) == record.has_pixel_data == ("PixelData" in ds)
    # Every value left out is bulk data, at the relative URI OHIF resolves against the series.
    assert uris == {bulk.path: f"instances/{record.sop_instance_uid}/bulkdata/{bulk.path}" for bulk in record.bulk_data}
    for path, attribute in json_attributes(objects):
        if "InlineBinary" in attribute:
            assert len(base64.b64decode(attribute["InlineBinary"])) <= 1024, path


def test_describe_instance_bulk_data_are_the_values_pydicom_reads(
    real: tuple[bytes, Dataset, InstanceRecord, bool],
) -> None:
    data, ds, record, _ = real
    for bulk in record.bulk_data:
        value = element_value(ds, bulk.path)
        assert isinstance(value, bytes)
        assert bulk.length == len(value)
        if record.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
            assert bulk.offset is None  # offsets into the inflated data mean nothing in the file
        else:
            assert bulk.offset is not None
            assert data[bulk.offset : bulk.offset + bulk.length] == value


def test_describe_instance_frames_are_the_frames_pydicom_gives(
    real: tuple[bytes, Dataset, InstanceRecord, bool],
) -> None:
    data, ds, record, byte_ranges = real
    if not byte_ranges:
        assert record.frames is None
        return
    assert record.frames is not None
    assert len(record.frames) == record.number_of_frames
    assert frame_bytes(data, record) == pydicom_frames(ds, record)


def test_describe_instance_frame_tables_of_known_files() -> None:
    # The offsets pydicom reports for these files (DESIGN.md, "A frame table from the original").
    assert describe_instance(read_testdata("CT_small.dcm")).frames == (((6300, 32768),),)
    assert describe_instance(read_testdata("JPEG2000.dcm")).frames == (((3050, 250),),)
    ((rle_fragment,),) = describe_instance(read_testdata("MR_small_RLE.dcm")).frames or ()
    assert rle_fragment[1] == 6108


def test_describe_instance_keeps_enhanced_functional_groups() -> None:
    record = describe_instance(read_testdata("eCT_Supplemental.dcm"))
    objects = json.loads(record.metadata_json)
    shared_groups = objects["52009229"]["Value"][0]
    per_frame = objects["52009230"]["Value"]
    assert len(per_frame) == record.number_of_frames == 2
    ds = pydicom_read(read_testdata("eCT_Supplemental.dcm"))
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert shared_groups["00289110"]["Value"][0]["00280030"] == {"vr": "DS", "Value": [float(v) for v in spacing]}
    positions = [frame["00209113"]["Value"][0]["00200032"]["Value"] for frame in per_frame]
    assert positions == [
        [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        for item in ds.PerFrameFunctionalGroupsSequence
    ]


def test_describe_instance_keeps_a_structured_reports_content_tree() -> None:
    record = describe_instance(read_testdata("test-SR.dcm"))
    assert not record.has_pixel_data and record.number_of_frames == 0 and record.frames is None
    objects = json.loads(record.metadata_json)
    ds = pydicom_read(read_testdata("test-SR.dcm"))

    def texts(items: list[Any]) -> Iterator[str]:
        for item in items:
            yield from item.get("0040A160", {}).get("Value", [])
            yield from texts(item.get("0040A730", {}).get("Value", []))

    def pydicom_texts(items: Any) -> Iterator[str]:
        for item in items:
            if "TextValue" in item:
                yield item.TextValue
            yield from pydicom_texts(item.get("ContentSequence", []))

    assert list(texts([objects])) == list(pydicom_texts([ds]))
    assert list(texts([objects]))


def test_describe_instance_resolves_ambiguous_vrs_as_the_explicit_file_has_them() -> None:
    # The same MR slice in Implicit VR (the dictionary says "US or SS", "OB or OW") and Explicit VR.
    implicit = json.loads(describe_instance(read_testdata("MR_small_implicit.dcm")).metadata_json)
    explicit = json.loads(describe_instance(read_testdata("MR_small.dcm")).metadata_json)
    assert implicit["00280106"] == explicit["00280106"] == {"vr": "SS", "Value": [0]}  # Pixel Representation 1
    implicit.pop("00020010"), explicit.pop("00020010")
    assert implicit == explicit


def test_describe_instance_reads_a_bare_dataset_as_pydicom_finds_it_encoded() -> None:
    # rtstruct.dcm has neither preamble nor meta: Implicit VR Little Endian, the default encoding.
    record = describe_instance(read_testdata("rtstruct.dcm"))
    assert record.transfer_syntax_uid == ImplicitVRLittleEndian
    # An Explicit VR dataset without meta is described as what it is.
    ds = small_dataset(PatientName="Bare^Dataset")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    record = describe_instance(buffer.getvalue())
    assert record.transfer_syntax_uid == ExplicitVRLittleEndian
    assert record.attributes.patient_name == "Bare^Dataset"


CHARSET_NAMES = [
    ("chrArab.dcm", "قباني^لنزار"),
    ("chrFren.dcm", "Buc^Jérôme"),
    ("chrGerm.dcm", "Äneas^Rüdiger"),
    ("chrGreek.dcm", "Διονυσιος"),
    ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("chrH32.dcm", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    ("chrHbrw.dcm", "שרון^דבורה"),
    ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
    ("chrJapMulti.dcm", "やまだ^たろう"),
    ("chrJapMultiExplicitIR6.dcm", "やまだ^たろう"),
    ("chrKoreanMulti.dcm", "김희중"),
    ("chrRuss.dcm", "Люкceмбypг"),  # noqa: RUF001 (the file mixes Latin c, e, y, p into the Cyrillic)
    ("chrX1.dcm", "Wang^XiaoDong=王^小東"),
    ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
]


@pytest.mark.parametrize(("name", "patient_name"), CHARSET_NAMES, ids=[name for name, _ in CHARSET_NAMES])
def test_describe_instance_decodes_each_character_set(name: str, patient_name: str) -> None:
    data = read_charset_file(name)
    record = describe_instance(data)
    assert record.attributes.patient_name == patient_name
    groups = patient_name.split("=")
    assert record.attributes.patient_name_keys == tuple(group.upper().rstrip("^") for group in groups)
    objects = json.loads(record.metadata_json)
    expected = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
    assert objects["00100010"]["Value"] == [expected]
    # The JSON is UTF-8 as it is, whatever the file's set; Specific Character Set keeps the file's value:
    # "reflects the character encoding of the source DICOM dataset and does not indicate the character
    # encoding of the JSON representation, which is UTF-8" (PS3.18 F.2.2 note 3, CP-2518).
    assert patient_name.split("=")[-1] in record.metadata_json
    ds = pydicom_read(data)
    charset = ds.SpecificCharacterSet
    terms = [charset] if isinstance(charset, str) else charset
    assert objects["00080005"]["Value"] == [term or None for term in terms]
    assert record.attributes.patient_id == ds.PatientID


def test_describe_instance_decodes_multi_valued_names_and_text() -> None:
    record = describe_instance(read_charset_file("chrFrenMulti.dcm"))
    objects = json.loads(record.metadata_json)
    assert objects["00101001"]["Value"] == [{"Alphabetic": "Buc^Jérôme"}, {"Alphabetic": "Buc^Jérôme"}]
    assert objects["00101000"]["Value"] == ["eggs", "spam"]
    assert objects["00080020"] == {"vr": "DA"}  # empty: no Value (PS3.18 F.2.5)
    # "^^^^" names no one: the referring physician is empty.
    assert objects["00080090"] == {"vr": "PN"}
    assert record.attributes.referring_physician_name is None
    assert record.attributes.referring_physician_keys == ()


@pytest.mark.parametrize("name", ["chrSQEncoding.dcm", "chrSQEncoding1.dcm"])
def test_describe_instance_decodes_a_sequence_item_in_its_own_or_its_parents_character_set(name: str) -> None:
    # An item with its own Specific Character Set (ISO 2022 Japanese inside UTF-8), and one that inherits
    # it. These files lack the UIDs of an instance; pydicom adds them and keeps the other bytes.
    ds = pydicom_read(read_charset_file(name))
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    objects = json.loads(describe_instance(file_bytes(ds)).metadata_json)
    assert objects["00321032"]["Value"] == [{"Alphabetic": "Doctor^Who^^MD"}]
    (item,) = objects["00321064"]["Value"]
    assert item["00100010"]["Value"] == [
        {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


@pytest.mark.parametrize("declared", [None, "ISO_IR 6"])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_describe_instance_reads_non_ascii_text_without_a_character_set(encoding: str, declared: str | None) -> None:
    # Writers that leave (0008,0005) out (or say ASCII) mostly write UTF-8; bytes that are not UTF-8 read
    # as ISO 8859-1.
    name = "Müller^Jürgen"
    encoded = name.encode(encoding)
    encoded += b" " * (len(encoded) % 2)
    placeholder = "X" * len(encoded)
    ds = small_dataset(PatientName=placeholder, StudyDescription=placeholder)
    if declared:
        ds.SpecificCharacterSet = declared
    data = file_bytes(ds).replace(placeholder.encode(), encoded)
    record = describe_instance(data)
    assert record.attributes.patient_name == name
    assert record.attributes.study_description == name
    assert record.attributes.patient_name_keys == ("MÜLLER^JÜRGEN",)
    objects = json.loads(record.metadata_json)
    assert objects["00100010"]["Value"] == [{"Alphabetic": name}]
    assert objects.get("00080005") == ({"vr": "CS", "Value": [declared]} if declared else None)


def test_describe_instance_writes_numbers_as_json_numbers_unless_they_would_change() -> None:
    ds = small_dataset(
        PixelSpacing=["0.5", "1.000"],
        SliceThickness="9007199254740993",  # past 2**53 a JSON number loses it: stays a string
        WindowCenter="40",
        SeriesNumber="7",
        RescaleSlope="1e-3",
    )
    ds.add_new(0x00181060, "DS", "88888888")  # Trigger Time, made no number at all below
    ds.add_new(0x00189087, "FD", float("nan"))  # Diffusion b-value
    ds.add_new(0x00200013, "IS", "1.5")  # Instance Number that is no integer
    data = file_bytes(ds).replace(b"88888888", b"nonsense")
    objects = json.loads(describe_instance(data).metadata_json)
    assert objects["00280030"]["Value"] == [0.5, 1.0]
    assert objects["00180050"]["Value"] == ["9007199254740993"]
    assert objects["00281050"]["Value"] == [40]
    assert objects["00200011"]["Value"] == [7]
    assert objects["00281053"]["Value"] == [0.001]
    assert objects["00181060"]["Value"] == ["nonsense"]
    assert objects["00189087"]["Value"] == ["NaN"]
    assert objects["00200013"]["Value"] == ["1.5"]
    assert describe_instance(data).attributes.instance_number is None
    # Numbers of a length no number has keep their bytes, as UN: inline up to 1024 bytes, else bulk data.
    odd = struct.pack("<HH2sH", 0x0099, 0x0010, b"LO", 4) + b"TEST"
    odd += struct.pack("<HH2sH", 0x0099, 0x1000, b"US", 3) + b"\x01\x02\x03"
    odd += struct.pack("<HH2sH", 0x0099, 0x1001, b"US", 2001) + b"\x05" * 2001
    record = describe_instance(data + odd)
    objects = json.loads(record.metadata_json)
    assert objects["00991000"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"\x01\x02\x03").decode()}
    assert objects["00991001"]["vr"] == "UN" and "BulkDataURI" in objects["00991001"]
    assert [(bulk.path, bulk.length) for bulk in record.bulk_data] == [("00991001", 2001)]
    # pydicom itself cannot convert IS "1A" (badVR.dcm): the string goes through.
    assert json.loads(describe_instance(read_testdata("badVR.dcm")).metadata_json)["00280008"]["Value"] == ["1A"]


def test_describe_instance_sends_long_text_and_number_values_to_bulk_data() -> None:
    # A contour of 7000 points is 64 KiB and more of DS text: bulk data (PS3.18 F.2.2 lets DS be),
    # like any binary value over 1024 bytes; a long value of a VR that may not be bulk data goes as UN.
    contour = [f"{i * 0.5:.1f}" for i in range(21000)]
    item = Dataset()
    item.ContourData = contour
    item.NumberOfContourPoints = len(contour) // 3
    roi = Dataset()
    roi.ContourSequence = [item]
    ds = small_dataset(ROIContourSequence=[roi], StudyDescription="A" * (70 << 10))  # no real file has that
    ds.add_new(0x00090010, "LO", "Private Creator")
    ds.add_new(0x00091011, "OB", b"\x01" * 1026)
    ds.add_new(0x00091012, "OB", b"\x02" * 1024)
    data = file_bytes(ds, ImplicitVRLittleEndian)
    record = describe_instance(data)
    objects = json.loads(record.metadata_json)
    by_path = {bulk.path: bulk for bulk in record.bulk_data}
    contour_path = "30060039.0.30060040.0.30060050"
    assert by_path[contour_path].vr == "DS"
    offset = by_path[contour_path].offset
    assert offset is not None
    assert data[offset : offset + by_path[contour_path].length].rstrip(b" ").split(b"\\") == [
        value.encode() for value in contour
    ]
    assert objects["30060039"]["Value"][0]["30060040"]["Value"][0]["30060050"] == {
        "vr": "DS",
        "BulkDataURI": f"instances/{record.sop_instance_uid}/bulkdata/{contour_path}",
    }
    assert by_path["00091011"] == BulkElement("00091011", "UN", by_path["00091011"].offset, 1026)
    assert objects["00091012"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"\x02" * 1024).decode()}
    assert by_path["00081030"].vr == "UN"
    assert record.attributes.study_description is None


def test_describe_instance_frames_of_fragmented_jpeg_frames_without_an_offset_table() -> None:
    # 120 JPEG frames, each cut into 3 fragments, no Basic Offset Table: the frames are told by the
    # markers that begin and end a JPEG codestream, as pydicom does.
    source = pydicom_read(read_testdata("color3d_jpeg_baseline.dcm"))
    frames = list(generate_frames(source.PixelData, number_of_frames=int(source.NumberOfFrames)))
    for has_bot in (False, True):
        ds = copy.deepcopy(source)
        ds.PixelData = encapsulate(frames, fragments_per_frame=3, has_bot=has_bot)
        data = file_bytes(ds, ds.file_meta.TransferSyntaxUID)
        record = describe_instance(data)
        assert record.frames is not None
        assert all(len(frame) == 3 for frame in record.frames)
        assert frame_bytes(data, record) == frames


def test_describe_instance_frames_from_an_extended_offset_table() -> None:
    source = pydicom_read(read_testdata("emri_small_jpeg_2k_lossless.dcm"))
    frames = list(generate_frames(source.PixelData, number_of_frames=int(source.NumberOfFrames)))
    ds = copy.deepcopy(source)
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    data = file_bytes(ds, ds.file_meta.TransferSyntaxUID)
    record = describe_instance(data)
    assert frame_bytes(data, record) == frames == pydicom_frames(pydicom_read(data), record)


def test_describe_instance_frames_are_none_when_they_cannot_be_told() -> None:
    source = pydicom_read(read_testdata("emri_small_RLE.dcm"))
    frames = list(generate_frames(source.PixelData, number_of_frames=int(source.NumberOfFrames)))
    # RLE has no markers: 10 frames in 20 fragments without an offset table.
    ds = copy.deepcopy(source)
    ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    record = describe_instance(file_bytes(ds, RLELossless))
    assert record.has_pixel_data and record.number_of_frames == 10 and record.frames is None
    # 1-bit frames that do not end on a byte: 3 frames of 5 x 5 bits.
    seg = small_dataset(Rows=5, Columns=5, SamplesPerPixel=1, BitsAllocated=1, BitsStored=1, NumberOfFrames=3)
    seg.PhotometricInterpretation, seg.PixelRepresentation, seg.HighBit = "MONOCHROME2", 0, 0
    seg.PixelData = b"\xff" * 10
    record = describe_instance(file_bytes(seg))
    assert record.has_pixel_data and record.frames is None
    # Native Pixel Data shorter than its frames.
    seg.BitsAllocated = seg.BitsStored = 8
    seg.HighBit = 7
    assert describe_instance(file_bytes(seg)).frames is None


def test_describe_instance_accepts_trailing_padding_and_refuses_trailing_data() -> None:
    data = read_testdata("CT_small.dcm")
    assert describe_instance(data + b"\x00" * 3).frames == describe_instance(data).frames
    assert describe_instance(data + b"\x00" * 4096).frames == describe_instance(data).frames
    assert describe_instance(read_testdata("MR_small_padded.dcm")).has_pixel_data
    assert_refused(data + b"\x00\x00\x00\x00garbage!")


def test_describe_instance_refuses_what_is_not_dicom() -> None:
    for data in (b"", b"DICM", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, b"\xff\xd8\xff" + bytes(range(256)) * 4):
        assert_refused(data)
    meta = b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\x00"
    assert_refused(meta)
    assert_refused(meta + bytes(64 << 20))  # at once: zeros are no dataset
    # Bytes that pydicom reads as a bare dataset, but are no instance.
    assert_refused(b"\x08\x00\x60\x00CS\x02\x00CT" + bytes(range(256)))


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda data: data[: 6300 + 16000], id="inside-pixel-data"),
        pytest.param(lambda data: data[:-10], id="inside-trailing-padding"),
        pytest.param(lambda data: data[:1000], id="inside-the-header"),
        pytest.param(lambda data: data[: 6300 - 5], id="inside-an-element-header"),
        pytest.param(lambda data: data[:300], id="inside-the-meta-group"),
    ],
)
def test_describe_instance_refuses_a_truncated_file(cut: Any) -> None:
    data = read_testdata("CT_small.dcm")
    assert b"CompressedSamples" in data
    error = assert_refused(cut(data))
    assert "CompressedSamples" not in str(error)


def test_describe_instance_refuses_truncated_encapsulated_pixel_data() -> None:
    data = read_testdata("JPEG2000.dcm")
    assert_refused(data[:-8])  # the sequence delimiter is gone
    assert_refused(data[:3200])


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "test-SR.dcm", "rtstruct.dcm", "image_dfl.dcm"])
def test_describe_instance_on_damaged_files_refuses_or_stays_inside_the_file(name: str) -> None:
    # Random bytes overwritten, mostly in the header: refused with one of our messages, or described with
    # byte ranges that lie inside the file. Never another exception.
    data = read_testdata(name)
    header = data[:4096]
    for index, damaged_header in enumerate(randomly_damaged(header, seed=7, copies=60, max_bytes=6)):
        damaged = damaged_header + data[4096:]
        if index % 5 == 0:
            damaged = damaged[: len(damaged) * (index + 1) // 61]
        try:
            record = describe_instance(damaged)
        except InvalidImage as error:
            assert error.message in FIXED_MESSAGES
            continue
        json.loads(record.metadata_json)
        for bulk in record.bulk_data:
            assert bulk.offset is None or bulk.offset + bulk.length <= len(damaged)
        for frame in record.frames or ():
            assert all(offset + length <= len(damaged) for offset, length in frame)


def test_describe_instance_refuses_a_file_without_an_instance_uid() -> None:
    ds = small_dataset(PatientName="Secret^Patient")
    del ds.SOPInstanceUID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    error = assert_refused(buffer.getvalue())
    assert "Secret" not in error.message
    # A UID that is no UID (it would land in a URL) is refused the same way.
    ds = small_dataset(PatientName="Secret^Patient", SOPInstanceUID="../1.2.3")
    assert_refused(file_bytes(ds))


def test_describe_instance_refuses_a_lying_fragment_length() -> None:
    data = bytearray(read_testdata("JPEG2000.dcm"))
    # The fragment's item header is at 3042 (value at 3050, 250 bytes).
    assert bytes(data[3042:3046]) == b"\xfe\xff\x00\xe0" and struct.unpack_from("<I", data, 3046)[0] == 250
    for lie in (0x7FFFFFF0, 100, 0xFFFFFFFF):
        struct.pack_into("<I", data, 3046, lie)
        peak = peak_memory(bytes(data))
        assert peak < 100 << 20


def test_describe_instance_refuses_a_deflated_file_that_inflates_past_the_cap() -> None:
    # 1000 MiB of zeros in a private OB deflate to about 1 MB; only 64 MiB of it may ever be inflated.
    data = deflated_bomb(1000 << 20)
    assert len(data) < 2 << 20
    assert peak_memory(data) < 100 << 20


def test_describe_instance_reads_a_deflated_file_under_the_cap() -> None:
    data = deflated_bomb(1 << 20)
    record = describe_instance(data)
    assert record.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert record.frames is None
    assert record.bulk_data == (BulkElement("00091000", "OB", None, 1 << 20),)


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_pydicom_logs_nothing_the_root_logger_sees() -> None:
    # pydicom warns in its log, quoting what it read, for example when a file says Explicit VR but holds
    # Implicit VR. The Lambda runtime's handler sits on the root logger: nothing of pydicom's may reach it.
    ds = small_dataset(PatientName="Secret^Patient")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    header = DicomBytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    root, recorder = logging.getLogger(), Recorder()
    level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    try:
        record = describe_instance(header.getvalue() + buffer.getvalue())
    finally:
        root.removeHandler(recorder)
        root.setLevel(level)
    assert record.transfer_syntax_uid == ImplicitVRLittleEndian
    assert record.attributes.patient_name == "Secret^Patient"
    assert [r for r in recorder.records if r.name.startswith("pydicom")] == []


def test_describe_instance_on_a_phantom_ct_slice() -> None:
    data = dicom_bytes(ct_slice_dataset(64, seed=1))
    record = describe_instance(data)
    assert record.rows == record.columns == 64
    assert frame_bytes(data, record) == [pydicom_read(data).PixelData]
    assert record.attributes.modality == "CT"


def test_the_front_door_loads_no_pydicom_until_a_record_is_described() -> None:
    code = (
        "import json, sys; import shared.dicom; from shared.dicom import InstanceRecord, BulkElement; "
        "before = 'pydicom' in sys.modules; shared.dicom.describe_instance; "
        "print(json.dumps([before, 'pydicom' in sys.modules, 'numpy' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    # pydicom imports numpy itself when it is installed; our modules never do (import-linter checks).
    before, after, _ = json.loads(out.stdout)
    assert (before, after) == (False, True)


def deflated_bomb(private_length: int) -> bytes:
    """A Deflated Explicit VR Little Endian file whose dataset ends in a private OB of zeros."""
    ds = small_dataset(PatientName="Secret^Patient")
    ds.add_new(0x00090010, "LO", "BOMB")
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    header = DicomBytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body.getvalue() + struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, private_length))]
    zeros = bytes(1 << 20)
    for _ in range(private_length >> 20):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    return header.getvalue() + b"".join(parts)


def peak_memory(data: bytes) -> int:
    """Refused, with the peak of what Python allocated meanwhile."""
    tracemalloc.start()
    try:
        assert_refused(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
