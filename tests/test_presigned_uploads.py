"""Uploads past 4.5 MB: POST /api/v1/scans/uploads presigns an S3 POST, the client posts the file to the
bucket, POST /api/v1/scans/uploads/{upload_id}/complete answers exactly as /analyze does.

S3 is moto in server mode (a real HTTP endpoint the client posts its multipart form to, the functions
reach through AWS_ENDPOINT_URL_S3); PostgreSQL is real. moto does not enforce presigned-POST policies,
so the policy document itself is decoded and checked, its signature recomputed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pg8000.native
import pydicom.data
import pytest
import requests

from shared import storage
from shared.http import schemas
from shared.http.image_cache import image_cache
from shared.scans import direct_uploads
from tests import images
from tests.conftest import User
from tests.lambda_client import LambdaClient, Result, multipart

REGION = "eu-central-1"
UPLOADS = "/api/v1/scans/uploads"
CT_SMALL = pydicom.data.get_testdata_file("CT_small.dcm")


@dataclass(frozen=True)
class Bucket:
    """The test's images bucket on the moto server, and a client of it."""

    client: Any
    name: str


@pytest.fixture
def s3(settings_env: pytest.MonkeyPatch, fake_aws_credentials: None, moto_endpoint: str) -> Iterator[Bucket]:
    """A fresh bucket on the moto server, the functions' images bucket; every image goes to S3 (threshold 1)."""
    settings_env.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    bucket = f"ctscan-test-{secrets.token_hex(4)}"
    client = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    settings_env.setenv("IMAGES_BUCKET", bucket)
    settings_env.setenv("STORAGE_TIER_S3_MIN_BYTES", "1")
    storage.clear_cache()
    image_cache().clear()
    yield Bucket(client, bucket)
    storage.clear_cache()
    image_cache().clear()


def start(api: LambdaClient, user: User | None, body: dict[str, Any]) -> Result:
    return api.request(
        "POST",
        UPLOADS,
        token=None if user is None else user.token,
        body=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )


def complete(api: LambdaClient, user: User | None, upload_id: str) -> Result:
    return api.request("POST", f"{UPLOADS}/{upload_id}/complete", token=None if user is None else user.token)


def post_file(started: dict[str, Any], data: bytes, filename: str = "scan.bin") -> requests.Response:
    """What a client does with the answer: the fields, then the file last, as multipart/form-data."""
    return requests.post(
        started["url"], data=started["fields"], files={"file": (filename, data, "application/octet-stream")}, timeout=30
    )


def upload_through_s3(api: LambdaClient, user: User, data: bytes, filename: str) -> tuple[dict[str, Any], Result]:
    created = start(api, user, {"filename": filename, "size": len(data)})
    assert created.status == 201, created.body
    started: dict[str, Any] = created.json()
    posted = post_file(started, data)
    assert posted.status_code == 204, posted.text
    return started, complete(api, user, started["uploadId"])


def bucket_keys(s3: Bucket) -> set[str]:
    return {item["Key"] for item in s3.client.list_objects_v2(Bucket=s3.name).get("Contents", [])}


def count(pg: pg8000.native.Connection, table: str) -> int:
    assert table in ("uploads", "scans", "storage_orphans")
    return int(pg.run(f"SELECT count(*) FROM {table}")[0][0])


def policy_of(fields: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(base64.b64decode(fields["policy"]))
    return document


def sigv4_policy_signature(policy_b64: str, credential: str, secret_key: str) -> str:
    """The AWS Signature Version 4 of a POST policy: HMAC-SHA256 chain over date, region, service."""
    _, date, region, service, terminator = credential.split("/")
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, policy_b64.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- the policy document


def test_the_presigned_post_binds_bucket_exact_key_size_signature_v4_and_a_short_expiry(
    s3: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # When Alice asks for an upload of a 12,345-byte DICOM file with a path in its name
    before = datetime.now(UTC)
    created = start(
        api, alice, {"filename": "../../etc/Patient Doe slice.dcm", "size": 12_345, "contentType": "application/dicom"}
    )

    # Then she gets the presigned POST for a key of ours, never her file name
    assert created.status == 201, created.body
    body = created.json()
    schemas.DirectUpload.model_validate(body)
    upload_id, fields = body["uploadId"], body["fields"]
    assert upload_id.startswith("upl_") and len(upload_id) >= 4 + 24
    key = f"uploads/{upload_id}"
    assert fields["key"] == key
    assert "Doe" not in key and "etc" not in key and "slice" not in key
    assert body["url"].endswith(f"/{s3.name}") and body["maxBytes"] == 12_345
    assert fields["Content-Type"] == "application/dicom"
    assert fields["x-amz-signature"] and fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"

    # And the policy says: this bucket, exactly this key, 1..12,345 bytes, signature v4, 15 minutes
    policy = policy_of(fields)
    conditions = policy["conditions"]
    assert {"bucket": s3.name} in conditions
    assert {"key": key} in conditions
    assert ["content-length-range", 1, 12_345] in conditions
    assert {"x-amz-algorithm": "AWS4-HMAC-SHA256"} in conditions
    assert {"Content-Type": "application/dicom"} in conditions
    credential = next(c["x-amz-credential"] for c in conditions if isinstance(c, dict) and "x-amz-credential" in c)
    assert credential == fields["x-amz-credential"] and credential.endswith(f"/{REGION}/s3/aws4_request")
    assert {"x-amz-date": fields["x-amz-date"]} in conditions
    # No starts-with (or any other list) condition that would let another key or size through.
    assert [c for c in conditions if isinstance(c, list)] == [["content-length-range", 1, 12_345]]
    expiration = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    ttl = timedelta(seconds=direct_uploads.UPLOAD_TTL_SECONDS)
    assert ttl == timedelta(minutes=15)
    assert before + ttl - timedelta(seconds=1) <= expiration <= datetime.now(UTC) + ttl
    expires_at = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert abs(expires_at - expiration) < timedelta(seconds=2)

    # And the signature is the SigV4 of that policy with the function's credentials
    assert fields["x-amz-signature"] == sigv4_policy_signature(fields["policy"], credential, "testing")

    # And the upload is recorded for her, with the cleaned file name and the declared size
    row = pg.run("SELECT owner_id, filename, max_bytes, expires_at FROM uploads WHERE id = :id", id=upload_id)
    assert row[0][:3] == [alice.id, "Patient Doe slice.dcm", 12_345]
    assert abs(row[0][3] - expiration) < timedelta(seconds=2)


def test_without_a_content_type_the_policy_has_no_content_type_condition(
    s3: Bucket, api: LambdaClient, alice: User
) -> None:
    body = start(api, alice, {"filename": "a.png", "size": 10}).json()
    assert "Content-Type" not in body["fields"]
    assert not [c for c in policy_of(body["fields"])["conditions"] if isinstance(c, dict) and "Content-Type" in c]


# ---------------------------------------------------------------- errors


def test_both_routes_need_a_bearer_token(s3: Bucket, api: LambdaClient, alice: User) -> None:
    started = start(api, alice, {"filename": "a.png", "size": 10}).json()
    for result in (start(api, None, {"filename": "a.png", "size": 10}), complete(api, None, started["uploadId"])):
        assert result.status == 401 and result.error_code == "not_authenticated"
        assert result.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"filename": "a.dcm", "size": 0}, 422, "invalid_request"),
        ({"filename": "a.dcm", "size": -5}, 422, "invalid_request"),
        ({"filename": "a.dcm", "size": "5"}, 422, "invalid_request"),
        ({"filename": "a.dcm", "size": 1.5}, 422, "invalid_request"),
        ({"filename": "a.dcm", "size": 1001}, 413, "upload_too_large"),
        ({"filename": "a.dcm", "size": 10**30}, 413, "upload_too_large"),
        ({"filename": "", "size": 5}, 422, "invalid_request"),
        ({"size": 5}, 422, "invalid_request"),
        ({"filename": "a.dcm", "size": 5, "contentType": "text/html; charset=utf-8"}, 422, "invalid_request"),
        ({"filename": "a.dcm", "size": 5, "key": "scans/1/x"}, 422, "invalid_request"),
    ],
    ids=["zero", "negative", "string", "float", "over-limit", "huge", "empty-name", "no-name", "bad-type", "extra"],
)
def test_sizes_and_bodies_outside_the_limits_are_refused_and_record_nothing(
    s3: Bucket,
    settings_env: pytest.MonkeyPatch,
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    settings_env.setenv("MAX_DIRECT_UPLOAD_BYTES", "1000")
    refused = start(api, alice, body)
    assert (refused.status, refused.error_code) == (status, code), refused.body
    assert count(pg, "uploads") == 0
    # The limit itself is allowed.
    assert start(api, alice, {"filename": "a.dcm", "size": 1000}).status == 201


def test_unknown_foreign_and_expired_uploads_are_404(
    s3: Bucket, api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection
) -> None:
    data = images.png8(size=64, regions=())
    started = start(api, alice, {"filename": "a.png", "size": len(data)}).json()
    assert post_file(started, data).status_code == 204
    upload_id = started["uploadId"]

    for user, which in ((alice, "upl_" + "x" * 24), (bob, upload_id), (alice, "scan_" + "y" * 22)):
        missing = complete(api, user, which)
        assert missing.status == 404 and missing.error_code == "upload_not_found", which
    pg.run("UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = :id", id=upload_id)
    expired = complete(api, alice, upload_id)
    assert expired.status == 404 and expired.error_code == "upload_not_found"
    assert count(pg, "scans") == 0 and count(pg, "uploads") == 1  # the cleanup job's to delete


def test_completing_before_the_file_is_posted_is_409_and_the_upload_stays(
    s3: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    data = images.png8(size=64, regions=())
    started = start(api, alice, {"filename": "a.png", "size": len(data)}).json()

    early = complete(api, alice, started["uploadId"])

    assert early.status == 409 and early.error_code == "upload_incomplete"
    assert "POST it" in early.json()["error"]["message"]
    assert count(pg, "uploads") == 1 and count(pg, "scans") == 0
    # Posting it then completes it.
    assert post_file(started, data).status_code == 204
    assert complete(api, alice, started["uploadId"]).status == 201


def test_a_file_that_is_not_an_image_is_422_and_its_upload_and_object_are_gone(
    s3: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    started, failed = upload_through_s3(api, alice, b"%PDF-1.7 not a scan at all\n" * 40, "report.pdf")

    assert failed.status == 422 and failed.error_code == "invalid_image"
    assert count(pg, "uploads") == 0 and count(pg, "scans") == 0
    assert bucket_keys(s3) == set()
    assert count(pg, "storage_orphans") == 0
    # Nothing is left to complete.
    assert complete(api, alice, started["uploadId"]).status == 404


def test_a_posted_file_over_the_declared_size_is_413_and_deleted(
    s3: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # moto lets it through (S3 itself refuses it by the policy's content-length-range)
    data = images.png8(size=64, regions=())
    started = start(api, alice, {"filename": "a.png", "size": 100}).json()
    assert post_file(started, data).status_code == 204

    refused = complete(api, alice, started["uploadId"])

    assert refused.status == 413 and refused.error_code == "upload_too_large"
    assert bucket_keys(s3) == set() and count(pg, "scans") == 0


def test_without_a_bucket_presigned_uploads_are_409_and_analyze_still_works(
    settings_env: pytest.MonkeyPatch, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    settings_env.delenv("IMAGES_BUCKET", raising=False)
    storage.clear_cache()

    refused = start(api, alice, {"filename": "a.png", "size": 10})
    not_completed = complete(api, alice, "upl_" + "x" * 24)

    for result in (refused, not_completed):
        assert result.status == 409 and result.error_code == "direct_upload_unavailable"
        assert "/api/v1/scans/analyze" in result.json()["error"]["message"]
    assert count(pg, "uploads") == 0
    body, ctype = multipart({"file": ("a.png", images.png8(size=64, regions=()), "image/png")})
    analyzed = api.request(
        "POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype}
    )
    assert analyzed.status == 201


def test_s3_down_at_completion_is_503_and_the_upload_can_be_completed_later(
    s3: Bucket,
    settings_env: pytest.MonkeyPatch,
    moto_endpoint: str,
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
) -> None:
    data = images.png8(size=64, regions=())
    started = start(api, alice, {"filename": "a.png", "size": len(data)}).json()
    assert post_file(started, data).status_code == 204

    # When S3 cannot be reached (a port nothing listens on)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    settings_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{dead_port}")
    storage.clear_cache()
    down = complete(api, alice, started["uploadId"])

    # Then completing is a 503 that writes nothing and keeps the upload
    assert down.status == 503 and down.error_code == "storage_unavailable"
    assert down.headers["retry-after"]
    assert count(pg, "scans") == 0 and count(pg, "uploads") == 1
    # And once S3 is back, the same upload completes
    settings_env.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    storage.clear_cache()
    assert complete(api, alice, started["uploadId"]).status == 201


# ---------------------------------------------------------------- end to end


def analyze(api: LambdaClient, user: User, data: bytes, filename: str) -> Result:
    body, ctype = multipart({"file": (filename, data, "application/octet-stream")})
    return api.request("POST", "/api/v1/scans/analyze", token=user.token, body=body, headers={"content-type": ctype})


def comparable(scan: dict[str, Any]) -> dict[str, Any]:
    """A scan's JSON without what differs between two stored copies (id, time, URLs)."""
    results = {k: v for k, v in scan["results"].items() if not k.endswith("Url")}
    return {**{k: v for k, v in scan.items() if k not in ("scanId", "createdAt", "results")}, "results": results}


def original(api: LambdaClient, user: User, scan_id: str) -> Result:
    return api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=user.token)


def test_end_to_end_a_dicom_ct_goes_to_s3_by_a_server_side_copy_and_answers_as_analyze(
    s3: Bucket,
    api: LambdaClient,
    alice: User,
    bob: User,
    pg: pg8000.native.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with open(CT_SMALL, "rb") as file:
        data = file.read()
    digest = hashlib.sha256(data).hexdigest()
    copies: list[tuple[str, str]] = []
    puts: list[str] = []
    real_copy, real_put = storage.ObjectStore.copy, storage.ObjectStore.put

    def copy(self: storage.ObjectStore, source_key: str, key: str, **kwargs: Any) -> None:
        copies.append((source_key, key))
        real_copy(self, source_key, key, **kwargs)

    def put(self: storage.ObjectStore, key: str, data: bytes, **kwargs: Any) -> None:
        puts.append(key)
        real_put(self, key, data, **kwargs)

    monkeypatch.setattr(storage.ObjectStore, "copy", copy)
    monkeypatch.setattr(storage.ObjectStore, "put", put)

    # When Alice uploads a CT through the bucket
    started, completed = upload_through_s3(api, alice, data, "CT_small.dcm")

    # Then it is stored and answered exactly as /analyze answers Bob's direct upload of the same file
    assert completed.status == 201, completed.body
    scan = completed.json()
    schemas.UploadResult.model_validate(scan)
    direct = analyze(api, bob, data, "CT_small.dcm")
    assert direct.status == 201
    assert set(scan) == set(direct.json())
    assert comparable(scan) == comparable(direct.json())
    assert scan["duplicate"] is False and scan["fileHash"] == digest and scan["fileSize"] == len(data)
    assert scan["contentType"] == "application/dicom" and scan["dicom"]["modality"] == "CT"

    # And the original was copied from the staging key to the scan's key (the renderings put), and the upload is gone
    row = pg.run("SELECT original_storage, original_size FROM scans WHERE id = :id", id=scan["scanId"])
    assert row == [["s3", len(data)]]
    assert copies == [(f"uploads/{started['uploadId']}", f"scans/{alice.id}/{digest}")]
    alice_keys = {key for key in bucket_keys(s3) if key.startswith(f"scans/{alice.id}/")}
    assert f"scans/{alice.id}/{digest}" in alice_keys
    assert {key for key in puts if key in alice_keys} == alice_keys - {f"scans/{alice.id}/{digest}"}
    assert f"uploads/{started['uploadId']}" not in bucket_keys(s3)
    assert count(pg, "uploads") == 0 and count(pg, "storage_orphans") == 0

    # And the images function serves the very same bytes
    served = original(api, alice, scan["scanId"])
    assert served.status == 200 and served.body == data
    assert served.headers["content-type"] == "application/dicom" and served.headers["etag"] == f'"{digest}"'

    # And the upload cannot be completed twice
    assert complete(api, alice, started["uploadId"]).status == 404

    # When she uploads the same file again through the bucket
    again_started, again = upload_through_s3(api, alice, data, "copy.dcm")

    # Then it is her first scan, a duplicate, and that upload is gone too
    assert again.status == 200, again.body
    assert again.json()["duplicate"] is True and again.json()["scanId"] == scan["scanId"]
    assert again.json()["filename"] == "CT_small.dcm"
    assert f"uploads/{again_started['uploadId']}" not in bucket_keys(s3)
    assert count(pg, "uploads") == 0 and count(pg, "storage_orphans") == 0
    assert int(pg.run("SELECT count(*) FROM scans WHERE owner_id = :o", o=alice.id)[0][0]) == 1


def test_end_to_end_a_png_below_the_threshold_goes_to_postgresql_like_a_direct_upload(
    s3: Bucket, settings_env: pytest.MonkeyPatch, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    settings_env.delenv("STORAGE_TIER_S3_MIN_BYTES")
    data = images.png16()

    _, completed = upload_through_s3(api, alice, data, "slice.png")

    assert completed.status == 201, completed.body
    scan = completed.json()
    schemas.UploadResult.model_validate(scan)
    assert scan["contentType"] == "image/png" and scan["filename"] == "slice.png"
    assert scan["results"]["findings"]
    tiers = pg.run(
        "SELECT original_storage, preview_storage, annotated_storage, thumbnail_storage FROM scans WHERE id = :id",
        id=scan["scanId"],
    )
    assert tiers == [["postgres"] * 4]
    assert bucket_keys(s3) == set() and count(pg, "uploads") == 0 and count(pg, "storage_orphans") == 0
    served = original(api, alice, scan["scanId"])
    assert served.status == 200 and served.body == data


def upload_metrics(printed: str) -> list[str]:
    """The Uploads/DuplicateUploads counters in the EMF documents a run printed."""
    names = []
    for line in printed.splitlines():
        if line.startswith('{"_aws"'):
            document = json.loads(line)
            names += [name for name in ("Uploads", "DuplicateUploads") if name in document]
    return names


def test_a_presigned_upload_counts_as_one_upload_when_completed_not_when_started(
    s3: Bucket, api: LambdaClient, alice: User, capsys: pytest.CaptureFixture[str]
) -> None:
    data = images.png16()
    created = start(api, alice, {"filename": "slice.png", "size": len(data)})
    assert created.status == 201
    assert upload_metrics(capsys.readouterr().out) == []
    assert post_file(created.json(), data).status_code == 204
    assert complete(api, alice, created.json()["uploadId"]).status == 201
    assert upload_metrics(capsys.readouterr().out) == ["Uploads"]
    _, again = upload_through_s3(api, alice, data, "slice.png")
    assert again.status == 200
    assert upload_metrics(capsys.readouterr().out) == ["DuplicateUploads"]
