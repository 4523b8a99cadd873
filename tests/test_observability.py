"""Logs and metrics (shared.core.observability): one JSON line per request, EMF counters, nothing secret."""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from scripts.dev import phantom
from scripts.dev.localgw.events import LambdaContext, build_event
from scripts.dev.localgw.routes import Route
from shared.http.app import create_app, lambda_handler
from tests import images
from tests.conftest import ROOT, User
from tests.lambda_client import ROUTES, LambdaClient, Result, multipart

ANALYZE = "/api/v1/scans/analyze"
SESSIONS = "/api/v1/auth/sessions"
IMAGE_ROUTE = "GET /api/v1/scans/image/{scan_id}/{image_type}"
REQUEST_KEYS = {
    "level",
    "location",
    "message",
    "timestamp",
    "service",
    "name",
    "cold_start",
    "function_name",
    "function_request_id",
    "correlation_id",
    "route",
    "status_code",
    "latency_ms",
}


@dataclass(frozen=True)
class Output:
    """What the functions wrote: all of it as text, and stdout as the JSON documents of its lines."""

    text: str
    documents: list[dict[str, Any]]

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [d for d in self.documents if d.get("message") == "request" and d.get("name") == "ctscan-store"]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [d for d in self.documents if "_aws" in d]

    def totals(self) -> Counter[tuple[str, str]]:
        """Each (function_name, metric) summed over the EMF documents."""
        totals: Counter[tuple[str, str]] = Counter()
        for document in self.metrics:
            for directive in document["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    totals[document["function_name"], metric["Name"]] += int(sum(document[metric["Name"]]))
        return totals


def parse(stdout: str, text: str) -> Output:
    # One line per record: every line the functions print is a whole JSON document.
    return Output(text, [json.loads(line) for line in stdout.splitlines()])


Reader = Callable[[], Output]


@pytest.fixture
def read_output(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Iterator[Reader]:
    """Reads what the functions printed (stdout, stderr) and logged since the last read."""
    caplog.set_level(logging.INFO)  # the level our loggers log at (conftest points their stdout at capfd)

    def read() -> Output:
        out, err = capfd.readouterr()
        # The records' messages; how they print is what stdout shows (caplog's formatter would add
        # exception messages, which ours leaves out).
        logged = "\n".join(record.getMessage() for record in caplog.records)
        caplog.clear()
        return parse(out, out + err + logged)

    yield read


def upload(api: LambdaClient, user: User, data: bytes, filename: str, content_type: str) -> Result:
    body, ctype = multipart({"file": (filename, data, content_type)})
    return api.request("POST", ANALYZE, token=user.token, body=body, headers={"content-type": ctype})


def log_in(api: LambdaClient, username: str, password: str) -> Result:
    body = json.dumps({"username": username, "password": password}).encode()
    return api.request("POST", SESSIONS, body=body, headers={"content-type": "application/json"})


def signatures(value: Any) -> set[str]:
    """Every `sig=` value in the URLs of a JSON document."""
    return set(re.findall(r"[?&]sig=([^&\"\s]+)", json.dumps(value)))


def test_each_request_logs_one_line_counts_its_metrics_and_nothing_secret(
    api: LambdaClient, alice: User, read_output: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no namespace in the environment (the code names it) and files whose names and headers are private
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE", raising=False)
    png = images.png16(size=384, seed=3)
    dicom = phantom.dicom_bytes(phantom.ct_slice_dataset(64, phi=True))
    png_name = f"jane-doe-chest-{secrets.token_hex(4)}.png"
    dicom_name = f"mrn-0042-{secrets.token_hex(4)}.dcm"
    wrong_password = f"not-the-password-{secrets.token_hex(4)}"
    read_output()

    # When the upload path runs (a new PNG, a new DICOM with PHI, the PNG again), an image is read
    # with the bearer token (GET, then HEAD) and with a signed URL, and a login fails and then succeeds
    first = upload(api, alice, png, png_name, "image/png")
    second = upload(api, alice, dicom, dicom_name, "application/octet-stream")
    again = upload(api, alice, png, png_name, "image/png")
    scan_id = first.json()["scanId"]
    by_token = api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=alice.token)
    head = api.request("HEAD", f"/api/v1/scans/image/{scan_id}/original", token=alice.token)
    thumbnail = urlsplit(first.json()["results"]["thumbnailUrl"])
    by_signature = api.request("GET", thumbnail.path, query=thumbnail.query)
    refused = log_in(api, alice.username, wrong_password)
    session = log_in(api, alice.username, alice.password)
    output = read_output()

    answered = [first, second, again, by_token, head, by_signature, refused, session]
    assert [r.status for r in answered] == [201, 201, 200, 200, 200, 200, 401, 201]
    assert by_token.body == png and head.headers["content-length"] == str(len(png))

    # Then one INFO line per request, in order, with the route template and never the raw path
    expected = [
        ("upload", "POST /api/v1/scans/analyze", 201),
        ("upload", "POST /api/v1/scans/analyze", 201),
        ("upload", "POST /api/v1/scans/analyze", 200),
        ("images", IMAGE_ROUTE, 200),
        ("images", IMAGE_ROUTE.replace("GET", "HEAD"), 200),
        ("images", IMAGE_ROUTE, 200),
        ("auth", "POST /api/v1/auth/sessions", 401),
        ("auth", "POST /api/v1/auth/sessions", 201),
    ]
    assert [(r["function_name"], r["route"], r["status_code"]) for r in output.requests] == expected
    for line in output.requests:
        assert set(line) >= REQUEST_KEYS, line
        assert (line["level"], line["service"]) == ("INFO", "ctscan-store")
        assert isinstance(line["cold_start"], bool) and line["latency_ms"] >= 0
        assert line["function_request_id"] and line["correlation_id"]
        assert scan_id not in json.dumps(line)

    # And one EMF document per request that counted something (HEAD sends no bytes; the successful
    # login counts nothing)
    assert len(output.metrics) == 6
    for document in output.metrics:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "CtScanStore"
        assert directive["Dimensions"] == [["function_name", "service"]]
        assert document["service"] == "ctscan-store"
    assert output.totals() == {
        ("upload", "Uploads"): 2,
        ("upload", "DuplicateUploads"): 1,
        ("images", "ImageBytesServed"): len(png) + len(by_signature.body),
        ("auth", "Responses4xx"): 1,
    }
    units = {m["Name"]: m["Unit"] for d in output.metrics for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {
        "Uploads": "Count",
        "DuplicateUploads": "Count",
        "ImageBytesServed": "Bytes",
        "Responses4xx": "Count",
    }
    assert "No application metrics" not in output.text

    # And no token, password, URL signature, filename, header, query string or PHI anywhere
    sigs = signatures([r.json() for r in (first, second, again)])
    assert sigs and dict(parse_qsl(thumbnail.query))["sig"] in sigs
    forbidden = {
        alice.token,
        session.json()["token"],
        alice.password,
        wrong_password,
        png_name,
        dicom_name,
        *sigs,
        *phantom.PHI_STRINGS,
        "Bearer",
        "sig=",
        "exp=",
    }
    for secret in forbidden:
        assert secret not in output.text, f"{secret!r} was logged"


def get_event(route: Route, raw_path: str, raw_query: str = "") -> dict[str, Any]:
    """The HTTP API event of a GET on a route without path parameters, as API Gateway builds it."""
    return build_event(
        method="GET",
        raw_path=raw_path,
        raw_query=raw_query,
        headers=[("host", "api.example.test")],
        body=b"",
        source_ip="203.0.113.9",
        route=route,
        path_params={},
    )


def test_request_ids_come_from_the_lambda_context_and_the_gateway_event(read_output: Reader) -> None:
    # Given a request to a function whose Lambda request id is not the gateway's
    from functions.scans.handler import handler

    route = next(r for r in ROUTES if r.route_key == "GET /api/v1/scans")
    event = get_event(route, "/api/v1/scans", "limit=5")
    read_output()

    # When it is invoked twice
    statuses = [handler(event, LambdaContext(route, f"lambda-request-{n}"))["statusCode"] for n in (1, 2)]
    output = read_output()

    # Then each line names both ids, and the second is no cold start
    assert statuses == [401, 401]
    first, second = output.requests
    assert first["function_request_id"] == "lambda-request-1" and second["function_request_id"] == "lambda-request-2"
    assert first["correlation_id"] == second["correlation_id"] == event["requestContext"]["requestId"]
    assert (first["function_name"], second["cold_start"]) == ("scans", False)
    assert "limit=5" not in output.text


def test_a_request_that_counts_nothing_prints_no_metrics(api: LambdaClient, alice: User, read_output: Reader) -> None:
    read_output()

    listed = api.request("GET", "/api/v1/scans", token=alice.token)

    output = read_output()
    assert listed.status == 200
    assert [r["status_code"] for r in output.requests] == [200]
    assert output.metrics == []
    assert "No application metrics" not in output.text


# A function whose route fails with a message that must not reach the logs.
failing = create_app("failing")
FAILURE = f"patient {secrets.token_hex(6)}"


@failing.get("/fail")
async def fail() -> None:
    raise RuntimeError(FAILURE)


def test_stdlib_logs_and_tracebacks_come_out_as_one_json_line_each_without_the_message(read_output: Reader) -> None:
    # Given a function built by the shared entry point whose route raises
    route = Route("GET", "/fail", "failing", "tests/test_observability.handler", 10)
    event = get_event(route, "/fail")
    read_output()

    # When it is invoked
    result = lambda_handler(failing)(event, LambdaContext(route, "lambda-request-500"))
    output = read_output()

    # Then it is a 500, and every record is one JSON line with the invocation's ids
    assert result["statusCode"] == 500
    by_logger = {d["name"]: d for d in output.documents if "name" in d}
    ours, mangum, request = by_logger["shared.http.errors"], by_logger["mangum.http"], by_logger["ctscan-store"]
    assert ours["level"] == "ERROR" and ours["message"].startswith("unhandled RuntimeError on GET")
    assert {ours["function_request_id"], mangum["function_request_id"]} == {"lambda-request-500"}
    assert request["status_code"] == 500 and request["correlation_id"] == ours["correlation_id"]
    # And a traceback keeps its frames and the exception's type, never its message
    assert mangum["exception_name"] == "RuntimeError"
    assert "in fail" in mangum["exception"] and mangum["exception"].endswith("RuntimeError")
    assert FAILURE not in output.text
    assert output.totals() == {("failing", "Responses5xx"): 1}


# A request the scans function answers without a database (401), in a fresh interpreter.
FRESH_PROCESS = """
import asyncio, json, sys
sys.path.insert(0, '.')
asyncio.set_event_loop(asyncio.new_event_loop())
from scripts.dev.localgw.events import LambdaContext, build_event
from scripts.dev.localgw.routes import load_routes
from pathlib import Path
route = next(r for r in load_routes(Path('serverless.yml')) if r.route_key == 'GET /api/v1/scans')
event = build_event(method='GET', raw_path='/api/v1/scans', raw_query='', headers=[('host', 'x')], body=b'',
                    source_ip='127.0.0.1', route=route, path_params={})
from functions.scans.handler import handler
handler(event, LambdaContext(route, 'fresh'))
"""


@pytest.mark.parametrize(("level", "logged"), [(None, True), ("WARNING", False), ("DEBUG", True)])
def test_log_level_comes_from_powertools_log_level_and_metrics_need_no_namespace_setting(
    level: str | None, logged: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "LOG_LEVEL", "AWS_LAMBDA_"))}
    if level is not None:
        env["POWERTOOLS_LOG_LEVEL"] = level
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    output = parse(run.stdout, run.stdout + run.stderr)
    assert [r["status_code"] for r in output.requests] == ([401] if logged else [])
    assert output.requests == [] or output.requests[0]["cold_start"] is True
    assert output.totals() == {("scans", "Responses4xx"): 1}
    assert output.metrics[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CtScanStore"
    assert "Warning" not in run.stderr


def get(port: int, path: str, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.slow
def test_the_local_gateway_prints_each_line_once_as_each_request_ends(database_url: str, alice: User) -> None:
    # Given the local gateway as `make run` starts it (worker processes), its stdout a pipe
    command = [sys.executable, "-m", "scripts.dev.localgw", "--port", "0", "--no-access-log"]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    env["LOG_FORMAT"] = "json"  # as deployed (the gateway's own default is a readable line)
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            assert process.stdout is not None and process.stderr is not None
            port = int(re.findall(r"http://127\.0\.0\.1:(\d+)", process.stdout.readline())[0])
            lines: queue.SimpleQueue[str] = queue.SimpleQueue()
            reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True)
            reader.start()

            # When two requests are served
            paths = ("/api/v1/scans", "/api/v1/scans/image/scan_x/preview")
            statuses = [get(port, path, alice.token) for path in paths]

            # Then their log lines and metrics arrive while the gateway runs, not at its exit
            live: list[str] = []
            deadline = time.monotonic() + 10
            while sum(line.startswith("{") for line in live) < 3:
                live.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
            reader.join(10)
            err = process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
    rest = []
    while not lines.empty():
        rest.append(lines.get())

    # And each appears once, whole
    assert statuses == [200, 404]
    out = "".join(live + rest)
    output = Output(out + err, [json.loads(line) for line in out.splitlines() if line.startswith("{")])
    assert [(r["function_name"], r["status_code"]) for r in output.requests] == [("scans", 200), ("images", 404)]
    assert output.totals() == {("images", "Responses4xx"): 1}
    assert len(output.documents) == 3
    assert alice.token not in output.text


def test_a_defect_in_our_dicom_decoding_is_a_500_logged_with_its_stack_and_counted(
    api: LambdaClient, alice: User, read_output: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bug in our own decode code (an internal helper that raises TypeError)
    from shared.imaging import dicom

    def broken_helper(*args: object, **kwargs: object) -> None:
        raise TypeError(f"a defect mentioning {phantom.PHI_STRINGS[0]}")

    monkeypatch.setattr(dicom, "_dicom_info", broken_helper)
    data = phantom.dicom_bytes(phantom.ct_slice_dataset(64, phi=True))
    read_output()

    # When a sound DICOM file is uploaded
    result = upload(api, alice, data, "slice.dcm", "application/dicom")
    output = read_output()

    # Then it is a 500 internal_error, not a 422 that blames the file
    assert result.status == 500, result.body
    assert result.error_code == "internal_error"
    # And the defect is logged with its stack (frames and type, no message) and counted
    (record,) = [d for d in output.documents if d.get("name") == "shared.imaging.dicom"]
    assert record["level"] == "ERROR" and record["message"] == "defect in DICOM decoding: TypeError"
    assert "in broken_helper" in record["exception"] and record["exception"].endswith("TypeError")
    assert [metric for _, metric in output.totals() if metric == "DecodeDefects"] == ["DecodeDefects"]
    assert sum(n for (_, metric), n in output.totals().items() if metric == "DecodeDefects") == 1
    assert not any(secret in output.text for secret in phantom.PHI_STRINGS)


def test_a_garbled_pixel_stream_is_the_files_fault_a_422_and_no_defect(
    api: LambdaClient, alice: User, read_output: Reader
) -> None:
    from pydicom.uid import JPEG2000Lossless

    data = bytearray(phantom.dicom_bytes(phantom.ct_slice_dataset(64), JPEG2000Lossless))
    # The codestream's tile data, after its main header, replaced by noise of the same length.
    start = len(data) - 1200
    data[start:-8] = bytes((i * 73 + 41) % 256 for i in range(len(data) - 8 - start))
    read_output()

    result = upload(api, alice, bytes(data), "slice.dcm", "application/dicom")
    output = read_output()

    assert result.status == 422, result.body
    assert result.error_code == "invalid_image"
    assert not any(metric == "DecodeDefects" for _, metric in output.totals())
    assert not any(d.get("level") == "ERROR" for d in output.documents)


# --- the local gateway's output: whole lines; readable by default, JSON on request -----------------

ACCESS_LINE = re.compile(r"(GET|POST) /api/v1/\S+ \d{3} \d+\.\dms")


def gateway_output(env: dict[str, str], token: str, *, clients: int, requests: int) -> tuple[list[str], int]:
    """The lines a gateway of 2 worker processes with 2 containers each prints (stdout and stderr into
    one pipe, as `make run | tee` or a CI log) while `clients` threads send `requests` requests each,
    after its banner and route list; and how many requests were sent."""
    command = [sys.executable, "-m", "scripts.dev.localgw", "--port", "0", "--workers", "2", "--containers", "2"]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            port = int(re.findall(r"http://127\.0\.0\.1:(\d+)", banner)[0])
            lines: queue.SimpleQueue[str] = queue.SimpleQueue()
            reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True)
            reader.start()
            paths = ("/api/v1/scans?limit=5", "/api/v1/scans/image/scan_x/preview", "/api/v1/scans/scan_y")

            def client(n: int) -> None:
                for i in range(requests):
                    get(port, paths[(n + i) % len(paths)], token)

            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
            reader.join(10)
        finally:
            if process.poll() is None:
                process.kill()
    printed = []
    while not lines.empty():
        printed.append(lines.get())
    # The route list the gateway prints after its banner: indented lines
    return [line.rstrip("\n") for line in printed if not line.startswith("  ")], clients * requests


@pytest.mark.slow
def test_the_local_gateway_with_log_format_json_prints_only_whole_json_lines(database_url: str, alice: User) -> None:
    # Given the gateway as make run starts it, 2 processes of 2 containers, LOG_FORMAT=json
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    env["LOG_FORMAT"] = "json"

    # When 8 clients send 40 requests each at once
    printed, sent = gateway_output(env, alice.token, clients=8, requests=40)

    # Then every line is one whole JSON document: a request line per request, its metrics, the access line
    documents = [json.loads(line) for line in printed]
    assert sum(d.get("message") == "request" for d in documents) == sent
    assert sum(d.get("message") == "access" for d in documents) == sent
    assert all(set(d) & {"message", "_aws"} for d in documents)
    assert alice.token not in "\n".join(printed)


@pytest.mark.slow
def test_the_local_gateway_prints_one_readable_line_per_request_by_default(database_url: str, alice: User) -> None:
    # Given the gateway as make run starts it, LOG_FORMAT unset
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONUNBUFFERED", "LOG_FORMAT")}

    # When 4 clients send 10 requests each
    printed, sent = gateway_output(env, alice.token, clients=4, requests=10)

    # Then it printed one line per request, `GET /path status latency`, and nothing else
    assert len(printed) == sent, printed
    assert all(ACCESS_LINE.fullmatch(line) for line in printed), printed


LINE_WRITER_SCRIPT = """
import logging, os, sys, threading
from scripts.dev.localgw import lines

lines.install()
log = logging.getLogger("spam")
log.addHandler(logging.StreamHandler(sys.stderr))
log.setLevel(logging.INFO)

def lines_of(tag):
    for n in range(30):
        size = (n * 7919) % 70000 + 1  # up to 70 KB: past a pipe's 4 KB and TextIOWrapper's 8 KB
        line = f"{tag}N{n}:" + "x" * size + f":{size}"
        if n % 2:
            print(line)
        else:
            log.info(line)

children = []
for process in range(2):
    pid = os.fork()
    if pid == 0:
        threads = [threading.Thread(target=lines_of, args=(f"P{process}T{t}",)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_the_gateways_processes_and_threads_write_whole_lines_however_long() -> None:
    # Given two processes of four threads each printing and logging lines of up to 70 KB into one pipe
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    run = subprocess.run(
        [sys.executable, "-c", LINE_WRITER_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
    )
    assert run.returncode == 0

    # Then every line arrived whole, and each once
    printed = run.stdout.decode().splitlines()
    whole = [re.fullmatch(r"(P\dT\dN\d+):(x+):(\d+)", line) for line in printed]
    assert all(found and len(found.group(2)) == int(found.group(3)) for found in whole), [
        line[:80] for line, found in zip(printed, whole, strict=True) if not found
    ][:5]
    assert sorted(found.group(1) for found in whole if found) == sorted(
        f"P{p}T{t}N{n}" for p in range(2) for t in range(4) for n in range(30)
    )
