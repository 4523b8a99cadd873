"""DICOM through the real handlers: upload, the preview, the dicom block, series listing, PHI, bad files."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pg8000.native
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from scripts.bench import hostile
from scripts.dev import phantom
from tests.conftest import User
from tests.lambda_client import LambdaClient, Result, multipart

ANALYZE = "/api/v1/scans/analyze"
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES_A = "1.2.826.0.1.3680043.8.498.1.1"
SERIES_B = "1.2.826.0.1.3680043.8.498.1.2"
MPEG2 = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile video: no decoder here

# Every PHI value the PHI-laden phantom carries; none may leave the original file.
PHI_MARKERS = phantom.PHI_STRINGS


def upload(api: LambdaClient, user: User, data: bytes, filename: str = "slice.dcm") -> Result:
    body, content_type = multipart({"file": (filename, data, "application/octet-stream")})
    return api.request("POST", ANALYZE, token=user.token, body=body, headers={"content-type": content_type})


def slice_bytes(
    *,
    instance_number: int | None = 1,
    slice_position: float | None = 0.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **kwargs: Any,
) -> bytes:
    """A phantom CT slice as a file; None for instance_number or slice_position leaves that attribute out."""
    dataset = phantom.ct_slice_dataset(
        instance_number=instance_number or 1, slice_position=slice_position or 0.0, **kwargs
    )
    if instance_number is None:
        del dataset.InstanceNumber
    if slice_position is None:
        del dataset.ImagePositionPatient
        del dataset.SliceLocation
    return phantom.dicom_bytes(dataset, transfer_syntax=transfer_syntax)


def scan_count(pg: pg8000.native.Connection) -> int:
    return int(pg.run("SELECT count(*) FROM scans")[0][0])


def test_dicom_upload_is_stored_as_dicom_with_its_index_and_a_preview(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    data = slice_bytes(size=256, instance_number=7, slice_position=-42.5, series_uid=SERIES_A, study_uid=STUDY)

    result = upload(api, alice, data)

    assert result.status == 201, result.body
    body = result.json()
    assert body["contentType"] == "application/dicom"
    assert (body["width"], body["height"]) == (256, 256)
    dicom = body["dicom"]
    assert dicom["modality"] == "CT"
    assert dicom["studyInstanceUid"] == STUDY and dicom["seriesInstanceUid"] == SERIES_A
    assert dicom["sopInstanceUid"]
    assert dicom["instanceNumber"] == 7 and dicom["slicePosition"] == -42.5
    assert (dicom["rows"], dicom["columns"], dicom["frameCount"], dicom["frameAnalyzed"]) == (256, 256, 1, 1)
    assert dicom["transferSyntaxUid"] == ExplicitVRLittleEndian
    assert dicom["photometricInterpretation"] == "MONOCHROME2"
    assert len(dicom["pixelSpacingMm"]) == 2 and dicom["bitsStored"] >= 12
    assert body["results"]["analysis"]["window"]["source"] in ("file", "default-ct")
    assert body["results"]["findings"], "the phantom's bone discs are dense findings"
    assert all("meanHu" in f and "areaMm2" in f for f in body["results"]["findings"])

    # The original is the file of record, byte for byte, served as application/dicom.
    scan_id = body["scanId"]
    original = api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=alice.token)
    assert original.status == 200
    assert original.body == data
    assert original.headers["content-type"] == "application/dicom"
    # The preview is what a browser shows: a full-size JPEG.
    preview = api.request("GET", f"/api/v1/scans/image/{scan_id}/preview", token=alice.token)
    assert preview.status == 200
    assert preview.headers["content-type"] == "image/jpeg"
    assert preview.headers["etag"] == f'"{hashlib.sha256(preview.body).hexdigest()}"'
    assert Image.open(io.BytesIO(preview.body)).size == (256, 256)
    # The same dicom block and preview URL in GET one and in the list.
    one = api.request("GET", f"/api/v1/scans/{scan_id}", token=alice.token).json()
    assert one["dicom"] == dicom and one["results"]["previewUrl"].partition("?")[0].endswith(f"/{scan_id}/preview")
    item = api.request("GET", "/api/v1/scans", token=alice.token).json()["items"][0]
    assert item["dicom"] == dicom and item["previewUrl"] == one["results"]["previewUrl"]


def test_png_scans_have_no_dicom_block_but_a_preview(api: LambdaClient, alice: User) -> None:
    from tests import images

    body = upload(api, alice, images.png16(size=128, regions=()), filename="slice.png").json()
    assert body["dicom"] is None
    preview = api.request("GET", f"/api/v1/scans/image/{body['scanId']}/preview", token=alice.token)
    assert preview.status == 200 and preview.headers["content-type"] == "image/jpeg"
    head = api.request("HEAD", f"/api/v1/scans/image/{body['scanId']}/preview", token=alice.token)
    assert head.status == 200 and head.headers["etag"] == preview.headers["etag"] and head.body == b""


# --- what the regions are: dense on CT in HU, none on other modalities ---------------------------------


def red_outline_pixels(jpeg: bytes) -> int:
    """Pixels of the annotated image's outline colour (255, 64, 64), JPEG noise allowed for."""
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int64)
    return int(np.count_nonzero((rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)))


def rendering(api: LambdaClient, user: User, scan_id: str, image_type: str) -> bytes:
    result = api.request("GET", f"/api/v1/scans/image/{scan_id}/{image_type}", token=user.token)
    assert result.status == 200
    return result.body


def test_ct_upload_has_dense_regions_at_or_above_the_hu_threshold_it_names(api: LambdaClient, alice: User) -> None:
    body = upload(api, alice, slice_bytes(size=256)).json()

    results = body["results"]
    assert results["regions"] == {
        "kind": "dense",
        "label": "Dense regions",
        "threshold": {"value": 300.0, "unit": "HU"},
        "reason": None,
    }
    assert len(results["findings"]) == len(phantom.DEFAULT_DISCS)
    for number, finding in enumerate(results["findings"], start=1):
        assert finding["label"] == f"dense region {number}"
        assert finding["meanHu"] >= 300 and finding["maxHu"] >= finding["meanHu"]
        assert finding["areaMm2"] > 0
    assert red_outline_pixels(rendering(api, alice, body["scanId"], "annotated")) > 0
    # GET one and the list say the same
    one = api.request("GET", f"/api/v1/scans/{body['scanId']}", token=alice.token).json()
    assert one["results"]["regions"] == results["regions"]
    item = api.request("GET", "/api/v1/scans", token=alice.token).json()["items"][0]
    assert item["findingsCount"] == len(phantom.DEFAULT_DISCS)


def test_ct_regions_name_the_configured_threshold(
    api: LambdaClient, alice: User, settings_env: pytest.MonkeyPatch
) -> None:
    # The discs are 700 to 1000 HU: at 850 HU only the denser ones remain
    settings_env.setenv("DENSE_HU_THRESHOLD", "850")

    results = upload(api, alice, slice_bytes(size=256)).json()["results"]

    assert results["regions"]["threshold"] == {"value": 850.0, "unit": "HU"}
    assert 0 < len(results["findings"]) < len(phantom.DEFAULT_DISCS)
    assert all(finding["maxHu"] >= 850 for finding in results["findings"])


def assert_no_regions(api: LambdaClient, user: User, body: dict[str, Any], modality: str) -> None:
    """No findings, kind none with a reason naming the modality, the body still found, nothing drawn."""
    results = body["results"]
    assert results["findings"] == []
    assert results["regions"]["kind"] == "none"
    assert results["regions"]["label"] is None and results["regions"]["threshold"] is None
    assert results["regions"]["reason"] == f"{modality}: a density threshold means nothing on this kind of image."
    assert results["body"] is not None and results["body"]["areaPx"] > 0
    annotated = rendering(api, user, body["scanId"], "annotated")
    preview = rendering(api, user, body["scanId"], "preview")
    assert red_outline_pixels(annotated) == 0
    shown = [np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")).astype(np.int64) for jpeg in (annotated, preview)]
    assert np.abs(shown[0] - shown[1]).max() <= 2
    items = api.request("GET", "/api/v1/scans", token=user.token, query="limit=100").json()["items"]
    assert [item["findingsCount"] for item in items if item["scanId"] == body["scanId"]] == [0]


def test_mr_upload_has_no_regions_and_says_why(api: LambdaClient, alice: User) -> None:
    path = get_testdata_file("MR_small.dcm")
    assert path is not None

    result = upload(api, alice, Path(str(path)).read_bytes(), filename="MR_small.dcm")

    assert result.status == 201, result.body
    assert result.json()["dicom"]["modality"] == "MR"
    assert_no_regions(api, alice, result.json(), "MR")


def test_cr_upload_has_no_regions_and_says_why(api: LambdaClient, alice: User) -> None:
    # Given a computed radiograph: 12-bit, MONOCHROME1 (white is low), bright bone on darker tissue
    ds = phantom.ct_slice_dataset(size=256, modality="CR", photometric="MONOCHROME1", bits_stored=12, seed=41)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = (4095 - np.frombuffer(ds.PixelData, dtype=np.uint16)).astype(np.uint16).tobytes()
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "SliceThickness"):
        delattr(ds, keyword)

    result = upload(api, alice, phantom.dicom_bytes(ds), filename="chest.dcm")

    assert result.status == 201, result.body
    body = result.json()
    assert (body["dicom"]["modality"], body["dicom"]["photometricInterpretation"]) == ("CR", "MONOCHROME1")
    assert body["dicom"]["bitsStored"] == 12
    assert_no_regions(api, alice, body, "CR")
    # The body is the patient, not the air around it, though air has the highest values here
    ct = phantom.ct_slice_dataset(size=256, seed=41)  # the same anatomy as a CT (MONOCHROME2)
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    same_as_ct = upload(api, alice, phantom.dicom_bytes(ct), filename="ct.dcm").json()["results"]["body"]
    assert abs(body["results"]["body"]["areaPx"] - same_as_ct["areaPx"]) < 0.02 * same_as_ct["areaPx"]


def test_colour_ultrasound_upload_has_no_regions(api: LambdaClient, alice: User) -> None:
    path = get_testdata_file("US1_J2KI.dcm")
    assert path is not None

    body = upload(api, alice, Path(str(path)).read_bytes(), filename="us.dcm").json()

    assert body["results"]["findings"] == []
    assert body["results"]["regions"]["kind"] == "none"
    assert body["results"]["regions"]["reason"].startswith("US: ")


def test_multi_frame_upload_reports_the_middle_frame(api: LambdaClient, alice: User) -> None:
    data = slice_bytes(size=64, frames=5)

    body = upload(api, alice, data).json()

    assert (body["dicom"]["frameCount"], body["dicom"]["frameAnalyzed"]) == (5, 3)


def upload_series(api: LambdaClient, user: User, series_uid: str, numbers: list[int]) -> dict[int, str]:
    ids = {}
    for number in numbers:
        data = slice_bytes(
            size=32, instance_number=number, slice_position=2.5 * number, series_uid=series_uid, study_uid=STUDY
        )
        result = upload(api, user, data)
        assert result.status == 201, result.body
        ids[number] = result.json()["scanId"]
    return ids


def list_all(api: LambdaClient, user: User, query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = api.request(
            "GET", "/api/v1/scans", token=user.token, query=query + (f"&cursor={cursor}" if cursor else "")
        )
        assert page.status == 200, page.body
        items += page.json()["items"]
        cursor = page.json()["nextCursor"]
        if cursor is None:
            return items


def test_series_listing_is_in_reading_order_paginated_and_per_owner(api: LambdaClient, alice: User, bob: User) -> None:
    numbers = [4, 1, 5, 2, 3]
    random.Random(3).shuffle(numbers)
    series_a = upload_series(api, alice, SERIES_A, numbers)
    series_b = upload_series(api, alice, SERIES_B, [2, 1])
    upload_series(api, bob, SERIES_A, [9])

    listed = list_all(api, alice, f"seriesInstanceUid={SERIES_A}&limit=2")

    assert [item["scanId"] for item in listed] == [series_a[n] for n in sorted(series_a)]
    assert [item["dicom"]["instanceNumber"] for item in listed] == [1, 2, 3, 4, 5]
    # A study lists its series one after the other, each in reading order.
    study = list_all(api, alice, f"studyInstanceUid={STUDY}&limit=3")
    expected = [series_a[n] for n in sorted(series_a)] + [series_b[n] for n in sorted(series_b)]
    assert [item["scanId"] for item in study] == expected
    # Both filters together narrow to the series.
    assert len(list_all(api, alice, f"seriesInstanceUid={SERIES_B}&studyInstanceUid={STUDY}")) == 2
    # Bob sees only his own slice of the same series.
    assert [item["dicom"]["instanceNumber"] for item in list_all(api, bob, f"seriesInstanceUid={SERIES_A}")] == [9]


def test_series_slices_without_instance_numbers_sort_by_position_then_last(api: LambdaClient, alice: User) -> None:
    uploaded = []
    for position in (30.0, -10.0, None):
        data = slice_bytes(size=32, instance_number=None, slice_position=position, series_uid=SERIES_A)
        uploaded.append(upload(api, alice, data).json()["scanId"])

    listed = list_all(api, alice, f"seriesInstanceUid={SERIES_A}&limit=1")

    assert [item["scanId"] for item in listed] == [uploaded[1], uploaded[0], uploaded[2]]


@pytest.mark.parametrize(
    "query",
    [
        "seriesInstanceUid=not-a-uid",
        "studyInstanceUid=1.2.3' OR 1=1 --",
        "seriesInstanceUid=" + "1" * 65,
        f"seriesInstanceUid={SERIES_A}&cursor=bm90LWEtY3Vyc29y",
    ],
)
def test_series_listing_bad_parameters_are_422(api: LambdaClient, alice: User, query: str) -> None:
    result = api.request("GET", "/api/v1/scans", token=alice.token, query=query)
    assert result.status == 422, result.body
    assert result.error_code == "invalid_request"


def test_a_cursor_of_one_listing_is_refused_by_the_other(api: LambdaClient, alice: User) -> None:
    upload_series(api, alice, SERIES_A, [1, 2])
    newest = api.request("GET", "/api/v1/scans", token=alice.token, query="limit=1").json()["nextCursor"]
    in_series = api.request(
        "GET", "/api/v1/scans", token=alice.token, query=f"seriesInstanceUid={SERIES_A}&limit=1"
    ).json()["nextCursor"]
    assert newest and in_series

    wrong_way = api.request(
        "GET", "/api/v1/scans", token=alice.token, query=f"seriesInstanceUid={SERIES_A}&cursor={newest}"
    )
    other_way = api.request("GET", "/api/v1/scans", token=alice.token, query=f"cursor={in_series}")

    assert (wrong_way.status, other_way.status) == (422, 422)


def test_phi_never_leaves_the_original(
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a file full of PHI (names, IDs, dates, institution, physicians, descriptions, private tags)
    caplog.set_level(logging.DEBUG)
    data = slice_bytes(size=128, phi=True, series_uid=SERIES_A, study_uid=STUDY)
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert str(dataset.PatientName) == phantom.PHI["PatientName"] and any(e.tag.is_private for e in dataset)

    # When it is uploaded, read back and listed
    uploaded = upload(api, alice, data)
    assert uploaded.status == 201, uploaded.body
    scan_id = uploaded.json()["scanId"]
    responses = [
        uploaded,
        api.request("GET", f"/api/v1/scans/{scan_id}", token=alice.token),
        api.request("GET", "/api/v1/scans", token=alice.token),
        api.request("GET", "/api/v1/scans", token=alice.token, query=f"seriesInstanceUid={SERIES_A}"),
    ]
    # Every column of the row except the original, as PostgreSQL renders it (derived images included).
    row = pg.run(
        "SELECT to_jsonb(s) - 'original_image_data' FROM scans s WHERE id = :id",
        id=scan_id,
    )[0][0]
    derived = pg.run(
        "SELECT preview_image_data, annotated_image_data, thumbnail_image_data FROM scans WHERE id = :id", id=scan_id
    )[0]

    # Then no PHI value appears anywhere but in the original itself
    texts = {
        **{f"response {i}": r.body.decode() + json.dumps(r.headers) for i, r in enumerate(responses)},
        "row": json.dumps(row),
        "logs": caplog.text + "".join(capsys.readouterr()),
    }
    for where, text in texts.items():
        for marker in PHI_MARKERS:
            assert marker not in text, f"{marker!r} leaked into {where}"
    for image in derived:
        for marker in PHI_MARKERS:
            assert marker.encode() not in image, marker  # no JPEG comment or EXIF carries header text
    original = api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=alice.token)
    assert original.body == data  # the file of record keeps everything, for its owner alone


def bad_dicom_files() -> list[tuple[str, Callable[[], bytes], str]]:
    def truncated() -> bytes:
        return slice_bytes(size=64)[:-3000]

    def short_pixels() -> bytes:
        dataset = phantom.ct_slice_dataset(size=64)
        dataset.PixelData = dataset.PixelData[:-100]
        return phantom.dicom_bytes(dataset)

    def no_pixels() -> bytes:
        dataset = phantom.ct_slice_dataset(size=64)
        del dataset.PixelData
        return phantom.dicom_bytes(dataset)

    def huge() -> bytes:
        dataset = phantom.ct_slice_dataset(size=64)
        dataset.Rows = dataset.Columns = 60000
        return phantom.dicom_bytes(dataset)

    def unsupported() -> bytes:
        dataset = pydicom.dcmread(io.BytesIO(slice_bytes(size=64, transfer_syntax=RLELossless)))
        dataset.file_meta.TransferSyntaxUID = MPEG2
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def huge_declared_frames() -> bytes:
        # A 64x64 JPEG 2000 frame in a file whose header says a million of them (8 GB uncompressed).
        data = bytearray(hostile.huge_frame(64))
        dataset = pydicom.dcmread(io.BytesIO(bytes(data)))
        dataset.NumberOfFrames = 1_000_000
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def garbage_frame() -> bytes:
        data = bytearray(slice_bytes(size=64, transfer_syntax=RLELossless))
        data[-400:-8] = bytes(range(256)) + bytes(136)
        return bytes(data)

    return [
        ("truncated", truncated, "invalid_image"),
        ("pixel data shorter than declared", short_pixels, "invalid_image"),
        ("no pixel data", no_pixels, "no_image"),
        ("declared size over the pixel cap", huge, "invalid_image"),
        ("unsupported transfer syntax", unsupported, "unsupported_transfer_syntax"),
        ("garbage in an encapsulated frame", garbage_frame, "invalid_image"),
        # 1 MB on disk, 1000 MiB of zeros in a private OB once inflated: refused in a stream at 64 MiB.
        ("deflated header that inflates to 1000 MiB", hostile.deflate_bomb, "invalid_image"),
        ("frames declaring 8 GB in a small file", huge_declared_frames, "invalid_image"),
        # 1 KB of JPEG 2000 declaring one 6320x6320 frame of 32-bit RGB: 480 MB decoded, 1.3 GB analyzed.
        ("a 1 KB frame that decodes to 480 MB", lambda: hostile.huge_frame(bits=32), "invalid_image"),
    ]


@pytest.mark.parametrize(("case", "build", "code"), bad_dicom_files(), ids=[c[0] for c in bad_dicom_files()])
def test_bad_dicom_is_a_422_and_writes_nothing(
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    case: str,
    build: Callable[[], bytes],
    code: str,
) -> None:
    result = upload(api, alice, build())

    assert result.status == 422, result.body
    assert result.error_code == code
    message = result.json()["error"]["message"]
    assert message
    if code == "unsupported_transfer_syntax":
        assert MPEG2 in message
    assert scan_count(pg) == 0


def test_a_frame_in_a_million_fragments_is_a_422_and_writes_nothing(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, settings_env: pytest.MonkeyPatch
) -> None:
    # A 64x64 frame split into 1,000,000 fragments (8 MB): each costs a Python object in every reader.
    settings_env.setenv("MAX_UPLOAD_BYTES", "10000000")
    data = hostile.many_fragments(1_000_000)

    result = upload(api, alice, data)

    assert result.status == 422, result.body
    assert result.error_code == "invalid_image"
    assert "fragments" in result.json()["error"]["message"]
    assert scan_count(pg) == 0
