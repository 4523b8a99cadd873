"""WADO-RS frames as JPEG Lossless SV1 (transfer syntax 1.2.840.10008.1.2.4.70) and the response size
rule, through the local gateway over HTTP (the real serverless.yml routes, AWS-exact events, the
images and render functions) on the test database.

What the browser viewer does (web/js/dicomweb.js fetchFrame): it asks for a frame decoded while a
decoded frame is at most 4,000,000 bytes, else as JPEG Lossless SV1 with
`Accept: multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.70`.
A frame stored in that syntax comes as stored from the images function; any other is redirected (307)
to the render function, which re-encodes it. Each bitstream received is decoded here with imagecodecs
and compared with pydicom's stored values, masked to Bits Stored.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import imagecodecs
import numpy as np
import pg8000.native
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from numpy.typing import NDArray
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from scripts.dev import phantom
from shared import storage
from shared.http.image_cache import image_cache
from shared.storage import MAX_INLINE_BYTES
from tests import test_dicomweb
from tests.conftest import User
from tests.lambda_client import LambdaClient

ROOT_PATH = "/api/v1/dicomweb"
SV1 = "1.2.840.10008.1.2.4.70"
ACCEPT_LOSSLESS = f'multipart/related; type="application/octet-stream"; transfer-syntax={SV1}'
ACCEPT_DECODED = f'multipart/related; type="application/octet-stream"; transfer-syntax={ExplicitVRLittleEndian}'
ACCEPT_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"
REGION = "eu-central-1"


# tests/test_dicomweb.py's local gateway (module-scoped: one of its own here)
gateway = test_dicomweb.gateway


@pytest.fixture
def alice_web(gateway: str, alice: User) -> DICOMwebClient:
    return DICOMwebClient(url=gateway + ROOT_PATH, headers={"Authorization": f"Bearer {alice.token}"})


@pytest.fixture(scope="module")
def chest_cr() -> Dataset:
    """The 2,000 x 2,500 chest radiograph phantom, uncompressed (10 MB of pixel data)."""
    return phantom.chest_cr_dataset()


def read_testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is missing: pydicom-data must be installed"
    return pydicom.dcmread(Path(str(path)))


def stored_values(ds: Dataset) -> NDArray[Any]:
    """Every frame's stored values (frames first) as unsigned bit patterns masked to Bits Stored."""
    import shared.imaging.dicom  # noqa: F401  (registers the JPEG Lossless decoder plugin with pydicom)

    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = ds.pixel_array if frames > 1 else ds.pixel_array[np.newaxis]
    unsigned = pixels.view(np.dtype(f"u{pixels.dtype.itemsize}"))
    return unsigned & ((1 << int(ds.BitsStored)) - 1)


def instance_url(gateway: str, ds: Dataset) -> str:
    return (
        f"{gateway}{ROOT_PATH}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def parts(reply: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    boundary = reply.headers["content-type"].split("boundary=")[1].strip('"').encode()
    found = []
    for segment in reply.content.split(b"--" + boundary)[1:-1]:
        head, _, body = segment.partition(b"\r\n\r\n")
        content_type = head.decode().split("Content-Type: ")[1].strip()
        found.append((content_type, body.removesuffix(b"\r\n")))
    return found


def get(url: str, user: User, accept: str, *, follow: bool = True) -> requests.Response:
    headers = {"Authorization": f"Bearer {user.token}", "Accept": accept}
    return requests.get(url, headers=headers, timeout=120, allow_redirects=follow)


def levels(pg: pg8000.native.Connection) -> list[str]:
    rows = pg.run("SELECT details->>'level' FROM audit_events WHERE action = 'dicomweb.retrieve' ORDER BY id")
    return [row[0] for row in rows]


# ---------------------------------------------------------------- transcoded by the render function


LOSSLESS_SOURCES = {
    "signed 16-bit CT": "CT_small.dcm",
    "signed 16-bit MR": "MR_small.dcm",
    "8-bit": "OBXXXX1A.dcm",
    "multi-frame 12-bit": "emri_small.dcm",
    "RGB": "SC_rgb.dcm",
    "JPEG 2000": "JPEG2000.dcm",
}


@pytest.mark.parametrize("name", sorted(LOSSLESS_SOURCES))
def test_frames_of_any_image_come_as_jpeg_lossless_with_the_stored_values(
    gateway: str, alice: User, alice_web: DICOMwebClient, pg: pg8000.native.Connection, name: str
) -> None:
    # Given an image stored in another syntax
    ds = read_testdata(LOSSLESS_SOURCES[name])
    alice_web.store_instances([ds])
    expected = stored_values(ds)
    numbers = list(range(1, len(expected) + 1))
    url = f"{instance_url(gateway, ds)}/frames/{','.join(map(str, numbers))}"

    # When the viewer asks for its frames as JPEG Lossless SV1
    redirect = get(url, alice, ACCEPT_LOSSLESS, follow=False)
    reply = get(url, alice, ACCEPT_LOSSLESS)

    # Then the images function sends it to the render function, which re-encodes every frame, in order
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(f"{ROOT_PATH}/decoded/")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    received = parts(reply)
    assert [content_type for content_type, _ in received] == [f"application/octet-stream; transfer-syntax={SV1}"] * len(
        numbers
    )
    for (_, bitstream), values in zip(received, expected, strict=True):
        assert bitstream[:2] == b"\xff\xd8"
        assert np.array_equal(imagecodecs.ljpeg_decode(bitstream), values), name
    assert levels(pg)[-1] == "frame.transcoded"


def test_decoded_and_lossless_answers_never_share_a_cache_entry(
    gateway: str, alice: User, alice_web: DICOMwebClient
) -> None:
    ds = read_testdata("CT_small.dcm")
    alice_web.store_instances([ds])
    url = f"{instance_url(gateway, ds)}/frames/1"

    decoded = get(url, alice, ACCEPT_DECODED)
    lossless = get(url, alice, ACCEPT_LOSSLESS)
    as_jpeg = get(url, alice, f'multipart/related; type="image/jpeg"; transfer-syntax={SV1}')

    tags = {decoded.headers["etag"], lossless.headers["etag"], as_jpeg.headers["etag"]}
    assert len(tags) == 3 and all(ExplicitVRLittleEndian in tag or SV1 in tag for tag in tags)
    assert decoded.headers["vary"] == lossless.headers["vary"] == "Accept"
    assert parts(as_jpeg)[0][0] == f"image/jpeg; transfer-syntax={SV1}"
    assert parts(as_jpeg)[0][1] == parts(lossless)[0][1]
    assert lossless.headers["cache-control"] == "private, max-age=31536000, immutable"


def test_dicomweb_client_retrieves_ct_small_as_jpeg_lossless(alice_web: DICOMwebClient) -> None:
    # dicomweb-client 0.61.2 refuses ("application/octet-stream", SV1) itself, before any request
    # (its octet-stream retrieval knows only Explicit VR Little Endian): it asks for the same
    # bitstream as image/jpeg, which Table 8.7.3-5 lists for SV1.
    ds = read_testdata("CT_small.dcm")
    alice_web.store_instances([ds])
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    with pytest.raises(ValueError, match="not supported"):
        alice_web.retrieve_instance_frames(*uids, [1], media_types=(("application/octet-stream", SV1),))

    for media_types in ((("image/jpeg", SV1),), ("image/jpeg",)):
        (frame,) = alice_web.retrieve_instance_frames(*uids, [1], media_types=media_types)

        # CT_small is signed: its negative values travel as 16-bit two's complement
        decoded = imagecodecs.ljpeg_decode(frame)
        assert np.array_equal(decoded, stored_values(ds)[0])
        assert np.array_equal(decoded.view(np.int16), ds.pixel_array)


def test_a_frame_stored_as_jpeg_lossless_is_sent_as_stored_by_the_images_function(
    gateway: str, alice: User, alice_web: DICOMwebClient, pg: pg8000.native.Connection
) -> None:
    ds = phantom.ct_series(1, seed=301)[0]
    stored = pydicom.dcmread(io.BytesIO(phantom.dicom_bytes(ds, JPEGLosslessSV1)))
    alice_web.store_instances([stored])
    url = f"{instance_url(gateway, ds)}/frames/1"

    reply = get(url, alice, ACCEPT_LOSSLESS, follow=False)

    assert reply.status_code == 200  # no redirect: nothing to transcode
    frame = next(generate_frames(stored.PixelData))
    assert parts(reply) == [(f"application/octet-stream; transfer-syntax={SV1}", frame)]
    assert levels(pg)[-1] == "frames"  # the images function's audit, not the render function's


# ---------------------------------------------------------------- the large radiograph and the size rule


def test_a_large_radiograph_stored_as_jpeg_lossless_comes_as_stored_and_decoded_is_400_naming_it(
    gateway: str, alice: User, alice_web: DICOMwebClient, chest_cr: Dataset
) -> None:
    # Given the 2,000 x 2,500 CR in JPEG Lossless SV1, small enough (~3.2 MB) to STOW directly
    data = phantom.dicom_bytes(chest_cr, JPEGLosslessSV1)
    assert len(data) < 4_500_000 < len(chest_cr.PixelData)
    stored = pydicom.dcmread(io.BytesIO(data))
    answer = alice_web.store_instances([stored])
    assert "FailedSOPSequence" not in answer
    url = f"{instance_url(gateway, chest_cr)}/frames/1"

    # When the viewer asks for frame 1 as JPEG Lossless: the stored bitstream, from the images function
    lossless = get(url, alice, ACCEPT_LOSSLESS, follow=False)
    assert lossless.status_code == 200
    ((content_type, bitstream),) = parts(lossless)
    assert content_type == f"application/octet-stream; transfer-syntax={SV1}"
    assert bitstream == next(generate_frames(stored.PixelData))
    assert np.array_equal(imagecodecs.ljpeg_decode(bitstream), phantom.chest_cr_values())

    # When a client asks for it decoded (10 MB): the render function refuses, naming what fits
    decoded = get(url, alice, ACCEPT_DECODED)
    assert decoded.history[0].status_code == 307
    assert decoded.status_code == 400 and decoded.json()["error"]["code"] == "response_too_large"
    message = decoded.json()["error"]["message"]
    assert "10,000,000 bytes" in message and f"transfer-syntax={SV1}" in message and "JPEG Lossless" in message

    # When it asks for more JPEG Lossless frames than fit (the same frame twice): fewer frames per request
    twice = get(url.replace("/frames/1", "/frames/1,1"), alice, ACCEPT_LOSSLESS)
    assert twice.status_code == 400 and twice.json()["error"]["code"] == "response_too_large"
    assert "fewer frames per request" in twice.json()["error"]["message"]
    assert SV1 not in twice.json()["error"]["message"]


# The images bucket on moto's S3 server: an uncompressed radiograph (10 MB) is past what a request to
# a Lambda carries (MAX_UPLOAD_BYTES, 4.5 MB), so it goes up as a presigned POST (README, "Uploads past 4.5 MB").


@pytest.fixture
def images_bucket(settings_env: pytest.MonkeyPatch, fake_aws_credentials: None, moto_endpoint: str) -> Iterator[str]:
    settings_env.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    bucket = f"ctscan-test-{secrets.token_hex(4)}"
    client = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    settings_env.setenv("IMAGES_BUCKET", bucket)
    storage.clear_cache()
    image_cache().clear()
    yield bucket
    storage.clear_cache()
    image_cache().clear()


def upload_through_s3(api: LambdaClient, user: User, data: bytes, filename: str) -> dict[str, Any]:
    """What the web app does past 4.5 MB: start, post the file to the bucket, complete."""
    created = api.request(
        "POST",
        "/api/v1/scans/uploads",
        token=user.token,
        body=json.dumps({"filename": filename, "size": len(data)}).encode(),
        headers={"content-type": "application/json"},
    )
    assert created.status == 201, created.body
    started = created.json()
    posted = requests.post(
        started["url"], data=started["fields"], files={"file": (filename, data, "application/dicom")}, timeout=60
    )
    assert posted.status_code == 204, posted.text
    completed = api.request("POST", f"/api/v1/scans/uploads/{started['uploadId']}/complete", token=user.token)
    assert completed.status == 201, completed.body
    result: dict[str, Any] = completed.json()
    return result


def test_an_uncompressed_large_radiograph_is_400_decoded_and_transcoded_as_jpeg_lossless(
    gateway: str,
    alice: User,
    api: LambdaClient,
    images_bucket: str,
    chest_cr: Dataset,
    pg: pg8000.native.Connection,
) -> None:
    # Given the same radiograph uncompressed (10 MB), uploaded through the presigned S3 path
    data = phantom.dicom_bytes(chest_cr, ExplicitVRLittleEndian)
    assert len(data) > 10_000_000
    upload_through_s3(api, alice, data, "chest_cr.dcm")
    url = f"{instance_url(gateway, chest_cr)}/frames/1"

    # When a client asks for frame 1 decoded, or as stored: the images function refuses, naming JPEG Lossless
    for accept in (ACCEPT_DECODED, ACCEPT_STORED):
        refused = get(url, alice, accept, follow=False)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "response_too_large"
        assert f"transfer-syntax={SV1}" in refused.json()["error"]["message"]

    # When the viewer asks for it as JPEG Lossless: the render function transcodes it, and it fits
    redirect = get(url, alice, ACCEPT_LOSSLESS, follow=False)
    assert redirect.status_code == 307
    reply = get(url, alice, ACCEPT_LOSSLESS)
    assert reply.status_code == 200, reply.text
    ((content_type, bitstream),) = parts(reply)
    assert content_type == f"application/octet-stream; transfer-syntax={SV1}"
    assert len(bitstream) < MAX_INLINE_BYTES
    assert np.array_equal(imagecodecs.ljpeg_decode(bitstream), phantom.chest_cr_values())
    assert levels(pg)[-1] == "frame.transcoded"

    # When it asks for more than fit: the render function stops encoding and says to ask fewer
    twice = get(url.replace("/frames/1", "/frames/1,1"), alice, ACCEPT_LOSSLESS)
    assert twice.status_code == 400 and twice.json()["error"]["code"] == "response_too_large"
    assert "fewer frames per request" in twice.json()["error"]["message"]
