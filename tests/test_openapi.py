"""The OpenAPI document: current, true to the handlers, and a fuzzer (schemathesis) that uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.build import openapi
from scripts.dev.localgw.routes import load_routes
from scripts.dev.localgw.server import make_server
from shared import db
from shared.core.dicom_index import DicomIndex
from shared.http import schemas
from tests import images
from tests.conftest import ROOT, User
from tests.lambda_client import LambdaClient, multipart

PHANTOM_SIZE = 64


def test_openapi_json_is_current() -> None:
    # `make openapi` writes it; a route or schema changed without regenerating it fails here.
    assert (ROOT / "openapi.json").read_text(encoding="utf-8") == openapi.render(openapi.build())


def test_openapi_describes_every_route_of_serverless_yml_and_nothing_else() -> None:
    document = openapi.build()
    described = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    routed = {(route.method, route.path_template) for route in load_routes(ROOT / "serverless.yml")}
    assert described == routed


def test_images_stub_lists_the_image_types_the_function_serves() -> None:
    assert [kind.value for kind in openapi.ImageType] == [kind.value for kind in db.ImageType]


def test_every_protected_operation_names_its_security_and_the_error_shape() -> None:
    document = openapi.build()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if (method, path) not in openapi.PUBLIC_OPERATIONS:
                assert {"bearer": []} in operation["security"], (method, path)
                assert "401" in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if status == "409" and path.startswith("/api/v1/dicomweb/studies") and method == "post":
                    # STOW-RS answers none-stored with its Store Instances Response (PS3.18 10.5.3), not an error body.
                    assert list(response["content"]) == ["application/dicom+json"], (method, path, status)
                elif status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def test_the_models_describe_what_the_handlers_answer(api: LambdaClient, alice: User) -> None:
    from scripts.dev import phantom

    # Given a PNG, a CT and an MR scan: bright, dense and no regions
    answers = []
    for filename, data in (
        ("slice.png", images.png16(size=PHANTOM_SIZE, regions=(images.Region(20, 20, 10, 10),))),
        ("slice.dcm", phantom.dicom_bytes(phantom.ct_slice_dataset(PHANTOM_SIZE))),
        ("mr.dcm", phantom.dicom_bytes(phantom.ct_slice_dataset(PHANTOM_SIZE, modality="MR", seed=8))),
    ):
        body, ctype = multipart({"file": (filename, data, "application/octet-stream")})
        result = api.request(
            "POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype}
        )
        assert result.status == 201
        answers.append(result.json())

    # Then every answer validates against its documented model, field for field
    assert [answer["results"]["regions"]["kind"] for answer in answers] == ["bright", "dense", "none"]
    for answer in answers:
        schemas.UploadResult.model_validate(answer, strict=False)
        assert set(answer) <= set(schemas.UploadResult.model_json_schema(by_alias=True)["properties"])
        one = api.request("GET", f"/api/v1/scans/{answer['scanId']}", token=alice.token).json()
        schemas.ScanPublic.model_validate(one)
    page = api.request("GET", "/api/v1/scans", token=alice.token).json()
    schemas.ScanPage.model_validate(page)
    item_fields = set(schemas.ScanSummary.model_json_schema(by_alias=True)["properties"])
    assert all(set(item) <= item_fields for item in page["items"])
    session = api.request(
        "POST",
        "/api/v1/auth/sessions",
        body=json.dumps({"username": "alice", "password": alice.password}).encode(),
        headers={"content-type": "application/json"},
    ).json()
    schemas.SessionCreated.model_validate(session)


@pytest.fixture
def gateway(database_url: str) -> Iterator[str]:
    """The local gateway on a free port, in this process, on the test database."""
    server = make_server("127.0.0.1", 0, serverless_yml=ROOT / "serverless.yml", containers=2)
    server.access_log = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(
    gateway: str, alice: User, api: LambdaClient, tmp_path: Path
) -> None:
    # Given one scan, so that reads of a real id are possible too
    body, ctype = multipart({"file": ("slice.png", images.png8(size=PHANTOM_SIZE, regions=()), "image/png")})
    api.request("POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype})

    # When schemathesis fuzzes every operation through the gateway, bounded in examples and time
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            str(ROOT / "openapi.json"),
            "--url",
            gateway,
            "--header",
            f"Authorization: Bearer {alice.token}",
            # Logging out (here or everywhere) would end the token every other operation uses
            # (tests/test_auth.py covers both).
            "--exclude-path",
            "/api/v1/auth/sessions/current",
            "--exclude-name",
            "DELETE /api/v1/auth/sessions",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "15",
            "--max-time",
            "45",
            "--seed",
            "20261126",
            "--workers",
            "1",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={
            **os.environ,
            "NO_COLOR": "1",
            # STOW-RS bodies (multipart/related) through a serializer of ours.
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        },
    )

    # Then it reports no failure (schemathesis exits non-zero on any failed check)
    print(result.stdout[-3000:])  # the summary, in pytest's output with -s or on failure
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert report.exists() and report.stat().st_size > 0


def test_the_dicom_model_and_the_dicom_index_name_the_same_fields() -> None:
    # shared.http.schemas.Dicom documents what shared.core.dicom_index.DicomIndex.to_json() answers.
    index = DicomIndex(None, None, None, None, None, None, None, None, 1, 1, 1, 1, "1.2.840.10008.1.2.1", "RGB", 8)
    assert set(schemas.Dicom.model_json_schema(by_alias=True)["properties"]) == set(index.to_json())
    schemas.Dicom.model_validate(index.to_json())
