"""The cold-start bench's own mechanics (scripts/bench/coldstart.py), so that its figures can be trusted:
each function's first request is an HTTP API event its own route serves (or its invocation payload),
the child process sees only its package and the function's environment, and its report is read back
from among the handler's log lines. `make bench` takes the figures; nothing here is timed."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest

from scripts.bench import coldstart
from scripts.build.serverless_yml import read_serverless_yml
from scripts.dev.localgw.routes import load_routes
from tests.conftest import ROOT

SERVERLESS = read_serverless_yml(ROOT / "serverless.yml")
ROUTES = load_routes(ROOT / "serverless.yml")
FIXTURE = coldstart.Fixture(token="tok_cold", scan_id="scan_abc", study="1.2.3", series="1.2.3.4", instance="1.2.3.4.5")


def test_every_function_http_reaches_is_measured() -> None:
    # A function given an httpApi route later must not be left out of the cold-start figures.
    http = {name for name, function in coldstart.functions(SERVERLESS).items() if function.http}
    assert http == {"upload", "images", "render", "scans", "auth"}
    assert http | {"admin", "migrate"} == set(coldstart.FUNCTIONS)
    # upload runs first: its uncounted run stores the scan that images and render read.
    assert coldstart.FUNCTIONS[0] == "upload"


@pytest.mark.parametrize("name", ["upload", "images", "render", "scans", "auth"])
def test_the_first_request_is_an_http_api_event_its_own_function_serves(name: str) -> None:
    event = coldstart.request(name, FIXTURE, 1, ROUTES)
    assert event["version"] == "2.0" and event["requestContext"]["http"]["method"] == event["routeKey"].split()[0]
    # The local gateway's routing (the most specific route first) sends the event's path to this function.
    method, path = event["requestContext"]["http"]["method"], event["rawPath"]
    matching = [route for route in ROUTES if route.match(method, path) is not None]
    assert matching and {route.function_name for route in matching} == {name}
    assert event["routeKey"] in {route.route_key for route in matching}
    if name == "auth":  # a login: credentials, no token
        assert "authorization" not in event["headers"]
        assert json.loads(event["body"]) == {"username": coldstart.USERNAME, "password": coldstart.PASSWORD}
    else:
        assert event["headers"]["authorization"] == "Bearer tok_cold"


def test_the_reads_name_the_stored_scan() -> None:
    assert coldstart.request("images", FIXTURE, 1, ROUTES)["pathParameters"] == {
        "scan_id": "scan_abc",
        "image_type": "thumbnail",
    }
    rendered = coldstart.request("render", FIXTURE, 1, ROUTES)
    assert rendered["pathParameters"] == {"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5"}
    assert rendered["rawPath"].endswith("/rendered")
    assert coldstart.request("scans", FIXTURE, 1, ROUTES)["rawPath"] == "/api/v1/scans"


def _uploaded(event: dict[str, Any]) -> pydicom.Dataset:
    body = base64.b64decode(event["body"])
    start = body.index(b"\r\n\r\n") + 4
    end = body.rindex(b"\r\n--")
    return pydicom.dcmread(io.BytesIO(body[start:end]))


def test_each_upload_run_posts_a_distinct_512_ct_slice_and_run_0_is_the_one_read() -> None:
    # A stored SOP Instance UID is refused a second time (DUPLICATE_SOP_POLICY=reject): every run's differs.
    events = [coldstart.request("upload", FIXTURE, run, ROUTES) for run in range(3)]
    assert all(event["isBase64Encoded"] for event in events)
    assert all(e["headers"]["content-type"].startswith("multipart/form-data; boundary=") for e in events)
    slices = [_uploaded(event) for event in events]
    assert [(ds.Modality, ds.Rows, ds.Columns) for ds in slices] == [("CT", 512, 512)] * 3
    assert len({ds.SOPInstanceUID for ds in slices}) == 3
    # What images and render are then asked for is what run 0 stored.
    fixture = coldstart.Fixture(token="t")
    coldstart.remember_upload(fixture, {"statusCode": 201, "body": json.dumps({"scanId": "scan_1"})})
    assert (fixture.scan_id, fixture.instance) == ("scan_1", slices[0].SOPInstanceUID)
    assert (fixture.study, fixture.series) == (slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID)


def test_the_ops_functions_get_their_invocation_payloads() -> None:
    assert coldstart.request("admin", FIXTURE, 1, ROUTES) == {"action": "audit", "limit": 1}
    assert coldstart.request("migrate", FIXTURE, 1, ROUTES) == {"backfill": True}
    with pytest.raises(ValueError, match="no first request"):
        coldstart.request("cleanup", FIXTURE, 1, ROUTES)


def test_the_child_environment_is_the_functions_own_without_cloudformation_references(tmp_path: Path) -> None:
    env = coldstart.function_environment(SERVERLESS, "images", "postgresql://u@db:5432/cold", tmp_path)
    assert env["DATABASE_URL"] == "postgresql://u@db:5432/cold"
    # The deployed database variables are replaced by DATABASE_URL; references resolve only in the stack.
    assert not {"DB_HOST", "DB_SECRET_ARN", "DB_SSLMODE", "IMAGES_BUCKET", "IMAGE_URL_SECRET_ARN"} & set(env)
    assert all(isinstance(value, str) for value in env.values())
    # Its own plain values and the provider's, and the keys as local files in the scratch directory.
    assert env["STORAGE_TIER_S3_MIN_BYTES"] == "1048576" and env["DUPLICATE_SOP_POLICY"] == "reject"
    assert env["IMAGE_URL_KEYS_FILE"] == str(tmp_path / "image-url-keys.json")
    assert (env["AWS_LAMBDA_FUNCTION_NAME"], env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]) == ("images", "1024")
    scans = coldstart.function_environment(SERVERLESS, "scans", "postgresql://u@db/cold", tmp_path)
    assert scans["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512" and "STORAGE_TIER_S3_MIN_BYTES" not in scans
    # Nothing of the bench process's own environment leaks in (PYTHONPATH, a developer's AWS profile).
    assert "PYTHONPATH" not in env and "AWS_PROFILE" not in env and "HOME" not in env


def test_the_report_is_read_from_among_the_handlers_log_lines() -> None:
    result = {"statusCode": 200, "body": "{}"}
    report = {"coldstart": {"import_ms": 120.5, "request_ms": 30.25, "import_cpu_ms": 99.0, "result": result}}
    stdout = "\n".join(
        [
            '{"level":"INFO","message":"request","status_code":200}',
            "not json {",
            '{"_aws": {"CloudWatchMetrics": []}}',
            json.dumps(report),
            "",
        ]
    )
    sample = coldstart.parse_child_output(stdout)
    assert (sample.import_ms, sample.request_ms, sample.init_ms, sample.import_cpu_ms) == (120.5, 30.25, 150.75, 99.0)
    assert sample.result == {"statusCode": 200, "body": "{}"}
    with pytest.raises(ValueError, match="no cold-start report"):
        coldstart.parse_child_output('{"level":"INFO"}\n{"coldstart": 3}\n')


def test_a_first_request_that_did_not_do_the_work_fails_the_bench() -> None:
    coldstart.check("images", {"statusCode": 200, "body": None})
    coldstart.check("admin", {"ok": True, "events": []})
    with pytest.raises(RuntimeError, match="answered 401, not 201"):
        coldstart.check("upload", {"statusCode": 401, "body": "{}"})
    with pytest.raises(RuntimeError, match="admin"):
        coldstart.check("admin", {"ok": False, "error": "x"})
    with pytest.raises(RuntimeError, match="migrate"):
        coldstart.check("migrate", {"status": "error", "error": "x"})


def test_medians_per_function() -> None:
    runs = [coldstart.Sample(i, r, None, c) for i, r, c in [(100, 10, 90), (300, 1, 95), (200, 50, 80)]]
    assert coldstart.figures_from({"scans": runs}) == {
        "cold_scans_import_ms": 200.0,
        "cold_scans_first_request_ms": 10.0,
        "cold_scans_init_ms": 250.0,  # the median of the sums (110, 301, 250), not the sum of the medians
        "cold_scans_import_cpu_ms": 90.0,
    }


# A stand-in handler: what the child could see of the project and its environment, as its "response".
FAKE_HANDLER = """
import importlib.util, json, os, sys
print(json.dumps({"level": "INFO", "message": "request"}))  # a log line before the report, as Powertools'
def handler(event, context):
    return {"statusCode": 200, "isBase64Encoded": False, "body": json.dumps({
        "cwd": os.getcwd(), "project_visible": importlib.util.find_spec("scripts") is not None,
        "flags": [sys.flags.isolated, sys.flags.dont_write_bytecode], "event": event,
        "function_name": context.function_name, "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(), "env": os.environ.get("DATABASE_URL")})}
"""


def test_the_child_runs_the_handler_in_its_package_alone(tmp_path: Path) -> None:
    package, scratch = tmp_path / "package", tmp_path / "scratch"
    (package / "functions" / "scans").mkdir(parents=True)
    scratch.mkdir()
    (package / "functions" / "__init__.py").write_text("")
    (package / "functions" / "scans" / "__init__.py").write_text("")
    (package / "functions" / "scans" / "handler.py").write_text(FAKE_HANDLER)
    function = coldstart.Function("scans", "functions.scans.handler", 512, 10, http=True)
    env = {"DATABASE_URL": "postgresql://u@db/cold", "PATH": "/usr/bin:/bin"}
    sample = coldstart.run_once(sys.executable, package, function, {"k": "v"}, env, scratch, 3)
    seen = json.loads(sample.result["body"])
    assert seen["cwd"] == str(package) and seen["project_visible"] is False
    assert seen["flags"] == [1, 1]  # -I and -B, as Lambda's read-only /var/task
    assert seen["event"] == {"k": "v"} and seen["env"] == "postgresql://u@db/cold"
    assert (seen["function_name"], seen["memory"]) == ("scans", 512) and 0 < seen["remaining_ms"] <= 10_000
    assert sample.import_ms > 0 and sample.request_ms > 0 and sample.import_cpu_ms > 0
    assert list(scratch.iterdir()) == []  # the event file is gone
    # A handler that fails is reported with its error, not measured.
    (package / "functions" / "scans" / "handler.py").write_text("raise ImportError('no such library')\n")
    with pytest.raises(RuntimeError, match="no such library"):
        coldstart.run_once(sys.executable, package, function, {}, env, scratch, 4)
