"""The local gateway over real HTTP: AWS-exact payload 2.0 events in, byte-exact responses out."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from scripts.dev.localgw.containers import Gateway, payload_size, to_http_response
from scripts.dev.localgw.cors import load_cors
from scripts.dev.localgw.events import build_event
from scripts.dev.localgw.routes import Route, load_routes
from scripts.dev.localgw.server import GatewayProtocol, GatewayServer, Limits, make_server
from tests.gateway_fixtures import echo

ROOT = Path(__file__).resolve().parent.parent
LOCALGW = [sys.executable, "-m", "scripts.dev.localgw"]  # the gateway on its own, run from ROOT
FIXTURE_YML = ROOT / "tests" / "gateway_fixtures" / "serverless.yml"
CONTAINERS = 3
TOO_LARGE = {"error": {"code": "payload_too_large", "message": "Request Entity Too Large"}}


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.getheaders()
        self.body = response.read()

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    srv = make_server("127.0.0.1", 0, serverless_yml=FIXTURE_YML, containers=CONTAINERS)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def call(
    server: tuple[str, int],
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    chunks: list[bytes] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection(*server, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=any(n.lower() == "host" for n, _ in headers or []))
        for name, value in headers or []:
            conn.putheader(name, value)
        if chunks is not None:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        else:
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        return Reply(conn.getresponse())
    finally:
        conn.close()


def echoed(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.body[:300]
    event: dict[str, Any] = reply.json()["event"]
    return event


# --- the package: what building an event imports --------------------------------------------------


def server_modules_after_import(module: str) -> list[str]:
    """uvicorn and h11, of those loaded by importing `module` in a fresh interpreter."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted({{'uvicorn', 'h11'}} & set(sys.modules))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize("module", ["", ".routes", ".events", ".containers"])
def test_building_and_invoking_an_event_never_loads_the_server(module: str) -> None:
    # Tests and benchmarks import these to call handlers in process: no HTTP server comes with them.
    assert server_modules_after_import(f"scripts.dev.localgw{module}") == []


def test_the_server_module_does_load_uvicorn_and_h11() -> None:
    # The check above can fail: the module that is meant to load them is seen doing it.
    assert server_modules_after_import("scripts.dev.localgw.server") == ["h11", "uvicorn"]


# --- routes ---------------------------------------------------------------------------------------


def test_load_routes_reads_real_serverless_yml() -> None:
    routes = load_routes(ROOT / "serverless.yml")
    keys = {(r.function_name, r.route_key) for r in routes}
    assert ("images", "GET /api/v1/scans/image/{scan_id}/{image_type}") in keys
    assert ("images", "HEAD /api/v1/scans/image/{scan_id}/{image_type}") in keys
    assert not [r for r in routes if r.function_name == "migrate"]
    upload = next(r for r in routes if r.function_name == "upload")
    assert (upload.handler_ref, upload.timeout_s, upload.memory_mb) == ("functions/upload/handler.handler", 29, 3008)


def test_load_routes_uses_function_timeout_over_provider() -> None:
    routes = {r.route_key: r for r in load_routes(FIXTURE_YML)}
    assert routes["POST /echo"].timeout_s == 7
    assert routes["GET /binary"].timeout_s == 12
    assert "job" not in {r.function_name for r in routes.values()}


def test_gateway_match_prefers_static_over_parameter_and_greedy() -> None:
    gateway = Gateway(load_routes(FIXTURE_YML))

    def key_and_params(method: str, path: str) -> tuple[str, dict[str, str]] | None:
        found = gateway.match(method, path)
        return None if found is None else (found[0].route_key, found[1])

    assert key_and_params("GET", "/echo/static") == ("GET /echo/static", {})
    assert key_and_params("GET", "/echo/other") == ("GET /echo/{item}", {"item": "other"})
    assert key_and_params("GET", "/echo/") is None  # a {name} segment is never empty
    assert key_and_params("GET", "/files/a/b/c") == ("GET /files/{path+}", {"path": "a/b/c"})
    assert key_and_params("HEAD", "/echo/x") is None  # GET does not serve HEAD unless declared


# --- events ---------------------------------------------------------------------------------------


def test_build_event_has_payload_2_shape() -> None:
    route = Route("GET", "/echo/{item}", "echo", "tests/gateway_fixtures/echo.handler", 7)
    event = build_event(
        method="GET",
        raw_path="/echo/a%20b",
        raw_query="",
        headers=[("Host", "localhost:3000"), ("X-Two", "a"), ("x-two", "b")],
        body=b"",
        source_ip="10.0.0.9",
        route=route,
        path_params={"item": "a b"},
    )
    assert list(event) == [
        "version",
        "routeKey",
        "rawPath",
        "rawQueryString",
        "headers",
        "requestContext",
        "pathParameters",
        "isBase64Encoded",
    ]
    assert event["headers"] == {"host": "localhost:3000", "x-two": "a,b"}
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert (context["domainName"], context["domainPrefix"], context["stage"]) == (
        "localhost:3000",
        "localhost",
        "$default",
    )
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000", context["time"])
    assert isinstance(context["timeEpoch"], int) and context["timeEpoch"] > 1_600_000_000_000
    uuid.UUID(context["requestId"])


# --- requests over HTTP ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["image/png", "multipart/form-data; boundary=----x", "application/octet-stream", None],
)
def test_gateway_binary_body_arrives_base64(server: tuple[str, int], content_type: str | None) -> None:
    payload = bytes(range(256)) * 20
    headers = [("Content-Type", content_type)] if content_type else []
    event = echoed(call(server, "POST", "/echo", body=payload, headers=headers))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


@pytest.mark.parametrize(
    "content_type",
    ["image/png", "multipart/form-data; boundary=b", "application/x-www-form-urlencoded", "application/pdf", None],
)
def test_gateway_non_text_type_is_base64_even_when_utf8(server: tuple[str, int], content_type: str | None) -> None:
    payload = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nplain words\r\n--b--\r\n'
    headers = [("Content-Type", content_type)] if content_type else []
    event = echoed(call(server, "POST", "/echo", body=payload, headers=headers))
    assert (event["isBase64Encoded"], base64.b64decode(event["body"])) == (True, payload)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain; charset=utf-8", "application/vnd.api+json"])
def test_gateway_text_body_arrives_as_text(server: tuple[str, int], content_type: str) -> None:
    payload = '{"name": "Zoë", "scan": "ü"}'
    event = echoed(call(server, "POST", "/echo", body=payload.encode(), headers=[("Content-Type", content_type)]))
    assert event["isBase64Encoded"] is False
    assert event["body"] == payload


def test_gateway_text_type_with_invalid_utf8_is_base64(server: tuple[str, int]) -> None:
    event = echoed(call(server, "POST", "/echo", body=b"\xff\xfe", headers=[("Content-Type", "text/plain")]))
    assert (event["isBase64Encoded"], base64.b64decode(event["body"])) == (True, b"\xff\xfe")


def test_gateway_no_body_omits_body(server: tuple[str, int]) -> None:
    event = echoed(call(server, "GET", "/echo/x"))
    assert "body" not in event and event["isBase64Encoded"] is False
    assert "queryStringParameters" not in event and "cookies" not in event


def test_gateway_query_string_is_raw_and_parameters_joined(server: tuple[str, int]) -> None:
    query = "a=1&a=2&b=%2Fscan%20x%26y&c=&token=s3cr%C3%A9t"
    event = echoed(call(server, "GET", f"/echo/x?{query}"))
    assert event["rawQueryString"] == query
    assert event["queryStringParameters"] == {"a": "1,2", "b": "/scan x&y", "c": "", "token": "s3crét"}


def test_gateway_cookies_split_and_removed_from_headers(server: tuple[str, int]) -> None:
    event = echoed(call(server, "GET", "/echo/x", headers=[("Cookie", "session=abc; theme=dark"), ("Cookie", "z=1")]))
    assert event["cookies"] == ["session=abc", "theme=dark", "z=1"]
    assert "cookie" not in event["headers"]


def test_gateway_headers_lower_cased_and_repeats_comma_joined(server: tuple[str, int]) -> None:
    headers = [("X-Custom-Thing", "One"), ("Accept", "image/png"), ("accept", "*/*"), ("User-Agent", "probe/1")]
    event = echoed(call(server, "GET", "/echo/x", headers=headers))
    assert event["headers"]["x-custom-thing"] == "One"
    assert event["headers"]["accept"] == "image/png,*/*"
    assert all(name == name.lower() for name in event["headers"])
    assert event["headers"]["x-forwarded-proto"] == "http"
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert event["requestContext"]["http"]["userAgent"] == "probe/1"


def test_gateway_path_parameters_decoded_and_raw_path_kept(server: tuple[str, int]) -> None:
    event = echoed(call(server, "GET", "/echo/scan%20%2F1"))
    assert event["rawPath"] == "/echo/scan%20%2F1"
    assert event["pathParameters"] == {"item": "scan /1"}
    greedy = echoed(call(server, "GET", "/files/a/b%20c/d.png"))
    assert (greedy["routeKey"], greedy["pathParameters"]) == ("GET /files/{path+}", {"path": "a/b c/d.png"})


def test_gateway_route_key_and_request_context(server: tuple[str, int]) -> None:
    reply = call(server, "GET", "/echo/abc?q=1")
    event = echoed(reply)
    context = event["requestContext"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == context["routeKey"] == "GET /echo/{item}"
    assert context["http"]["method"] == "GET"
    assert context["http"]["path"] == "/echo/abc"
    assert context["http"]["protocol"] == "HTTP/1.1"
    assert context["http"]["sourceIp"] == "127.0.0.1"
    assert context["domainName"] == f"{server[0]}:{server[1]}"
    assert (context["accountId"], context["apiId"], context["stage"]) == ("000000000000", "local", "$default")
    lambda_context = reply.json()["context"]
    assert lambda_context["aws_request_id"] == context["requestId"]
    assert lambda_context["function_name"] == "echo"
    assert 0 < lambda_context["remaining_ms"] <= 7000


def test_gateway_chunked_body(server: tuple[str, int]) -> None:
    payload = bytes(range(256)) * 40
    chunks = [payload[i : i + 1000] for i in range(0, len(payload), 1000)]
    event = echoed(call(server, "POST", "/echo", chunks=chunks, headers=[("Content-Type", "image/png")]))
    assert base64.b64decode(event["body"]) == payload


# --- responses ------------------------------------------------------------------------------------


def test_gateway_binary_response_byte_exact_with_cookies(server: tuple[str, int]) -> None:
    reply = call(server, "GET", "/binary")
    assert reply.status == 200
    assert reply.body == echo.BINARY_PAYLOAD
    assert reply.header("Content-Type") == "image/png"
    assert reply.all("Set-Cookie") == echo.RESPONSE_COOKIES


def test_gateway_head_sends_headers_without_body(server: tuple[str, int]) -> None:
    # Given a HEAD and a GET pipelined on one connection: stray HEAD body bytes would precede the GET's status line
    with socket.create_connection(server, timeout=10) as sock:
        host = f"Host: 127.0.0.1:{server[1]}\r\n".encode()
        sock.sendall(
            b"HEAD /binary HTTP/1.1\r\n" + host + b"\r\nGET /plain HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {len(echo.BINARY_PAYLOAD)}".encode() in head.split(b"\r\n")
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.endswith(b'{"hello": "world", "rawPath": "/plain"}')


def test_gateway_result_without_status_code_is_json_200(server: tuple[str, int]) -> None:
    reply = call(server, "GET", "/plain")
    assert (reply.status, reply.header("Content-Type")) == (200, "application/json")
    assert reply.json() == {"hello": "world", "rawPath": "/plain"}


@pytest.mark.parametrize(("method", "path"), [("GET", "/nowhere"), ("DELETE", "/binary"), ("GET", "/echo")])
def test_gateway_unknown_route_is_404_json(server: tuple[str, int], method: str, path: str) -> None:
    reply = call(server, method, path)
    assert (reply.status, reply.header("Content-Type"), reply.json()) == (
        404,
        "application/json",
        {"error": {"code": "not_found", "message": "Not Found"}},
    )


def test_gateway_oversize_event_is_413_without_calling_handler(server: tuple[str, int]) -> None:
    # Given 4.8 MB of binary: about 6.4 MB once base64-encoded into the event
    payload = b"\x89" * 4_800_000
    before = len(echo.calls)
    reply = call(server, "POST", "/echo", body=payload, headers=[("Content-Type", "image/png")])
    assert (reply.status, reply.json()) == (413, TOO_LARGE)
    assert len(echo.calls) == before


def test_gateway_largest_event_under_limit_reaches_handler(server: tuple[str, int]) -> None:
    payload = b"\x89" * 4_500_000
    event = echoed(call(server, "POST", "/echo", body=payload, headers=[("Content-Type", "image/png")]))
    assert base64.b64decode(event["body"]) == payload


def test_gateway_upload_over_quota_is_read_out_and_answered_413(server: tuple[str, int]) -> None:
    # Given a 20 MB upload sent whole (over the 10 MB HTTP API quota), then a second request on the connection
    conn = http.client.HTTPConnection(*server, timeout=30)
    try:
        conn.request("POST", "/echo", body=b"\x89" * 20_000_000, headers={"Content-Type": "image/png"})
        reply = Reply(conn.getresponse())
        # Then the client reads the JSON 413 (no reset), and the drained connection serves on
        assert (reply.status, reply.json()) == (413, TOO_LARGE)
        conn.request("GET", "/plain")
        assert Reply(conn.getresponse()).status == 200
    finally:
        conn.close()


@pytest.mark.parametrize(
    "extra", [b"Content-Length: 20000000\r\nExpect: 100-continue\r\n", b"Content-Length: 900000000\r\n"]
)
def test_gateway_body_over_quota_refused_before_reading(server: tuple[str, int], extra: bytes) -> None:
    # Given a client waiting for 100 Continue, or declaring more than the gateway will drain
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (server[1], extra))
        response = http.client.HTTPResponse(sock)
        response.begin()
        # Then the 413 comes at once, and the connection is closed
        assert (response.status, response.getheader("Connection")) == (413, "close")
        assert json.loads(response.read()) == TOO_LARGE


def test_gateway_oversize_response_is_413(server: tuple[str, int]) -> None:
    reply = call(server, "GET", "/huge")
    assert (reply.status, reply.header("Content-Type")) == (413, "application/json")
    assert reply.json()["error"]["code"] == "payload_too_large"


def test_gateway_handler_exception_is_502_with_traceback_on_stderr(
    server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    reply = call(server, "GET", "/boom")
    assert (reply.status, reply.json()) == (502, {"error": {"code": "bad_gateway", "message": "Internal Server Error"}})
    assert "RuntimeError: fixture handler failed on purpose" in capsys.readouterr().err


def test_gateway_access_log_has_no_query_headers_or_body(
    server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    call(
        server,
        "POST",
        "/echo?token=QUERYSECRET",
        body=b'{"secret": "BODYSECRET"}',
        headers=[("Content-Type", "application/json"), ("Authorization", "Bearer HEADERSECRET")],
    )
    # The server thread logs after sending the response: wait for its line.
    err, deadline = "", time.monotonic() + 5
    while not re.search(r"^POST /echo 200 \d+\.\dms$", err, re.MULTILINE):
        assert time.monotonic() < deadline, err
        time.sleep(0.01)
        err += capsys.readouterr().err
    assert not re.search("QUERYSECRET|HEADERSECRET|BODYSECRET", err)


# --- containers -----------------------------------------------------------------------------------


def test_gateway_pool_runs_parallel_requests_on_at_most_containers_threads(server: tuple[str, int]) -> None:
    echo.slow_runs.clear()
    with ThreadPoolExecutor(max_workers=8) as clients:
        statuses = list(clients.map(lambda _: call(server, "GET", "/slow").status, range(8)))
    assert statuses == [204] * 8
    runs = list(echo.slow_runs)
    assert len(runs) == 8
    threads = {run["thread"] for run in runs}
    assert 1 < len(threads) <= CONTAINERS
    # Each container keeps its own event loop across invocations.
    assert all(len({r["loop"] for r in runs if r["thread"] == t}) == 1 for t in threads)
    # Peak overlap from recorded start/end times: parallel, never more than the pool allows.
    edges = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    active = peak = 0
    for _, step in edges:
        active += step
        peak = max(peak, active)
    assert 1 < peak <= CONTAINERS


def test_gateway_answers_a_handler_past_its_timeout_with_500_and_replaces_its_container(
    server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    def timed_call(path: str) -> tuple[Reply, float, float]:
        started = time.monotonic()
        reply = call(server, "GET", path)
        return reply, started, time.monotonic()

    echo.stuck_threads.clear()
    echo.release_stuck.clear()
    try:
        # Given a function with a 1 s timeout whose handler does not return: one request more
        # than it has containers, so the last one waits for a free container first
        with ThreadPoolExecutor(max_workers=CONTAINERS + 1) as clients:
            replies = list(clients.map(lambda _: timed_call("/stuck"), range(CONTAINERS + 1)))

        # Then each caller gets API Gateway's answer to a function error (502) at its timeout:
        # three at 1 s, and the queued one 1 s after a container took it
        timed_out = {"error": {"code": "bad_gateway", "message": "Internal Server Error"}}
        assert [(reply.status, reply.json()) for reply, _, _ in replies] == [(502, timed_out)] * (CONTAINERS + 1)
        elapsed = sorted(ended - started for _, started, ended in replies)
        assert all(1.0 <= seconds < 1.8 for seconds in elapsed[:CONTAINERS]), elapsed
        assert elapsed[-1] < 2.8, elapsed
        # A container took the queued one when the first was lost, 1 s after the first request at the
        # earliest; its caller's clock may have started a little after that request's (the client
        # threads start in turn), so the 2 s are counted from the first request sent.
        first_sent, last_answered = min(started for _, started, _ in replies), max(ended for _, _, ended in replies)
        assert last_answered - first_sent >= 2.0, (elapsed, last_answered - first_sent)
        assert capsys.readouterr().err.count("stuck: timed out after 1 s; its container is lost") == CONTAINERS + 1
        assert len(echo.stuck_threads) == CONTAINERS + 1

        # And while every one of those handlers still runs, the function serves from new containers
        quick, started, ended = timed_call("/stuck?quick")
        assert quick.status == 200 and ended - started < 0.5, ended - started
        assert quick.json()["thread"] not in echo.stuck_threads
        assert 0 < quick.json()["remaining_ms"] <= 1000
    finally:
        echo.release_stuck.set()

    # And a lost container never serves again, even once its handler has returned
    wait_for(lambda: not any(t.name in echo.stuck_threads for t in threading.enumerate()))
    served = {call(server, "GET", "/stuck?quick").json()["thread"] for _ in range(2 * CONTAINERS)}
    assert not served & echo.stuck_threads


# --- end to end through Mangum and FastAPI --------------------------------------------------------


@pytest.mark.parametrize("content_type", ["image/png", "multipart/form-data; boundary=----x"])
def test_gateway_mangum_app_receives_exact_upload(server: tuple[str, int], content_type: str) -> None:
    payload = bytes(range(256)) * 64
    reply = call(server, "POST", "/asgi/upload", body=payload, headers=[("Content-Type", content_type)])
    assert reply.status == 200, reply.body
    assert reply.json() == {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "length": len(payload),
        "content_type": content_type,
        "scheme": "http",
    }


def test_gateway_mangum_app_binary_response_and_head(server: tuple[str, int]) -> None:
    reply = call(server, "GET", "/asgi/image")
    assert (reply.status, reply.header("Content-Type"), reply.body) == (200, "image/png", echo.BINARY_PAYLOAD)
    head = call(server, "HEAD", "/asgi/image")
    assert (head.status, head.header("Content-Length"), head.body) == (200, str(len(echo.BINARY_PAYLOAD)), b"")


# --- command line ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_main_runs_as_script_from_project_root() -> None:
    command = [*LOCALGW, "--port", "0", "--containers", "2", "--config", str(FIXTURE_YML)]
    command += ["--workers", "1"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            found = re.fullmatch(r"Local gateway on http://127\.0\.0\.1:(\d+)\n", banner)
            assert found, banner
            listed = [process.stdout.readline() for _ in load_routes(FIXTURE_YML)]
            assert any(re.fullmatch(r"\s+GET /echo/\{item\}\s+-> echo\n", line) for line in listed), listed
            event = echoed(call(("127.0.0.1", int(found.group(1))), "GET", "/echo/cli"))
            assert event["pathParameters"] == {"item": "cli"}
        finally:
            process.terminate()


def worker_pids(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc")
def test_main_with_workers_serves_from_each_replaces_a_dead_one_and_stops_on_sigint() -> None:
    command = [*LOCALGW, "--port", "0", "--containers", "2", "--config", str(FIXTURE_YML)]
    command += ["--workers", "2", "--no-access-log"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            found = re.fullmatch(r"Local gateway on http://127\.0\.0\.1:(\d+), 2 worker processes\n", banner)
            assert found, banner
            address = ("127.0.0.1", int(found.group(1)))
            wait_for(lambda: len(worker_pids(process.pid)) == 2)
            workers = worker_pids(process.pid)
            served = {echoed_pid(call(address, "GET", f"/echo/w{n}")) for n in range(20)}
            assert served and served <= workers

            victim = next(iter(workers))
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(worker_pids(process.pid)) == 2 and victim not in worker_pids(process.pid))
            replacements = worker_pids(process.pid)
            served = {echoed_pid(call(address, "GET", f"/echo/r{n}")) for n in range(20)}
            assert served and served <= replacements

            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=20) == 0
            assert process.stderr is not None
            assert f"worker {victim} exited" in process.stderr.read()
            for worker in replacements:
                with pytest.raises(ProcessLookupError):
                    os.kill(worker, 0)
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc")
def test_workers_end_with_their_parent_even_on_sigkill() -> None:
    command = [*LOCALGW, "--port", "0", "--config", str(FIXTURE_YML), "--workers", "2"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        assert process.stdout is not None
        process.stdout.readline()
        wait_for(lambda: len(worker_pids(process.pid)) == 2)
        workers = worker_pids(process.pid)
        process.kill()
        process.wait(timeout=10)

        def gone(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
            except FileNotFoundError:
                return True

        wait_for(lambda: all(gone(pid) for pid in workers))


def echoed_pid(reply: Reply) -> int:
    assert reply.status == 200, reply.body
    return int(reply.json()["pid"])


def test_load_routes_reads_cloudformation_short_forms(tmp_path: Path) -> None:
    config = tmp_path / "serverless.yml"
    config.write_text(
        "provider:\n  environment:\n    DB_HOST: !GetAtt DatabaseProxy.Endpoint\n"
        "    ARN: !Sub 'arn:${AWS::Partition}:x'\n  vpc:\n    subnetIds: [!Ref SubnetA]\n"
        "functions:\n  f:\n    handler: tests/gateway_fixtures/echo.handler\n"
        "    events:\n      - httpApi: {method: GET, path: /x}\n"
    )
    assert [r.route_key for r in load_routes(config)] == ["GET /x"]


@contextlib.contextmanager
def running(yml: Path = FIXTURE_YML, **options: Any) -> Iterator[GatewayServer]:
    """A gateway of its own, for tests that change its limits or hosts."""
    srv = make_server("127.0.0.1", 0, serverless_yml=yml, containers=1, **options)
    srv.access_log = False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_gateway_sockets_send_without_nagle_delay_and_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a gateway that records the sockets it accepts
    accepted: list[socket.socket] = []
    original = GatewayProtocol.connection_made

    def connection_made(self: GatewayProtocol, transport: Any) -> None:
        accepted.append(transport.get_extra_info("socket"))
        original(self, transport)

    monkeypatch.setattr(GatewayProtocol, "connection_made", connection_made)
    with running() as srv:
        # When a client makes several requests on one kept-alive connection
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
        for _ in range(3):
            conn.request("GET", "/echo/small")
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200
        # Then one connection served them all, with Nagle's algorithm off (no delayed-ACK stall)
        assert len(accepted) == 1
        assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert srv.request_queue_size >= 128
        conn.close()


# --- CORS as HTTP API applies it ------------------------------------------------------------------

ORIGIN = "http://localhost:5173"


def test_load_cors_resolves_stage_params_from_real_serverless_yml() -> None:
    dev = load_cors(ROOT / "serverless.yml")
    assert dev is not None
    assert dev.allowed_origins == ("http://localhost:5173", "http://127.0.0.1:5173")
    assert "Authorization" in dev.allowed_headers and "GET" in dev.allowed_methods
    assert "ETag" in dev.exposed_headers and dev.max_age == 3600
    prod = load_cors(ROOT / "serverless.yml", stage="prod")
    assert prod is not None and "*" not in prod.allowed_origins and prod.allowed_origins != dev.allowed_origins


def test_gateway_preflight_from_allowed_origin_answered_without_function(server: tuple[str, int]) -> None:
    before = len(echo.calls)
    reply = call(
        server,
        "OPTIONS",
        "/echo",
        headers=[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
    )
    assert (reply.status, reply.body) == (204, b"")
    assert reply.header("Access-Control-Allow-Origin") == ORIGIN
    assert reply.header("Access-Control-Allow-Methods") == "GET,POST"
    assert reply.header("Access-Control-Allow-Headers") == "Authorization,Content-Type"
    assert reply.header("Access-Control-Max-Age") == "600"
    assert reply.header("Vary") == "Origin"
    assert len(echo.calls) == before


@pytest.mark.parametrize(
    ("origin", "method", "asked"),
    [
        ("http://evil.example", "POST", ""),
        (ORIGIN, "DELETE", ""),
        (ORIGIN, "POST", "x-not-allowed"),
    ],
)
def test_gateway_preflight_not_allowed_gets_no_cors_headers(
    server: tuple[str, int], origin: str, method: str, asked: str
) -> None:
    headers = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if asked:
        headers.append(("Access-Control-Request-Headers", asked))
    reply = call(server, "OPTIONS", "/echo", headers=headers)
    assert reply.status == 204
    assert not [n for n, _ in reply.headers if n.lower().startswith("access-control-")]


def test_gateway_request_from_allowed_origin_gets_cors_and_exposed_headers(server: tuple[str, int]) -> None:
    reply = call(server, "GET", "/own-cors", headers=[("Origin", ORIGIN)])
    assert reply.status == 200
    # The function's own "*" is replaced by the configured answer, as API Gateway does
    assert reply.all("Access-Control-Allow-Origin") == [ORIGIN]
    assert reply.header("Access-Control-Expose-Headers") == "ETag,X-Scan-Id"
    assert reply.header("Vary") == "Accept-Encoding, Origin"
    assert (reply.header("ETag"), reply.header("X-Scan-Id")) == ('"v1"', "scan_1")


@pytest.mark.parametrize("origin", ["http://evil.example", None])
def test_gateway_request_from_other_origin_gets_no_cors_headers(server: tuple[str, int], origin: str | None) -> None:
    reply = call(server, "GET", "/own-cors", headers=[("Origin", origin)] if origin else [])
    assert reply.status == 200
    assert not [n for n, _ in reply.headers if n.lower().startswith("access-control-")]


def test_gateway_without_cors_config_passes_function_headers(tmp_path: Path) -> None:
    yml = tmp_path / "serverless.yml"
    yml.write_text(
        "functions:\n  cors:\n    handler: tests/gateway_fixtures/echo.own_cors\n"
        "    events:\n      - httpApi: {method: GET, path: /own-cors}\n"
    )
    with running(yml) as srv:
        reply = call(srv.server_address, "GET", "/own-cors", headers=[("Origin", ORIGIN)])
    assert reply.header("Access-Control-Allow-Origin") == "*"


# --- Host: only the gateway's own names -----------------------------------------------------------


@pytest.mark.parametrize(
    "host_lines",
    [
        [b"Host: a:b"],
        [b"Host: "],
        [b"Host: 127.0.0.1:1", b"Host: 127.0.0.1:2"],
        [b"Host: evil.example"],
        [b"Host: localhost:1"],  # our name, another port: image URLs would point elsewhere
        [],
    ],
)
def test_gateway_bad_host_is_400_json_before_any_function(server: tuple[str, int], host_lines: list[bytes]) -> None:
    before = len(echo.calls)
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"GET /echo/x HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in host_lines) + b"\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, response.getheader("Content-Type")) == (400, "application/json")
        assert json.loads(response.read())["error"]["code"] in ("invalid_host", "bad_request")
    assert len(echo.calls) == before


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_gateway_accepts_its_own_host_names(server: tuple[str, int], host: str) -> None:
    event = echoed(call(server, "GET", "/echo/x", headers=[("Host", f"{host}:{server[1]}")]))
    assert event["headers"]["host"] == f"{host}:{server[1]}"


def test_gateway_allowed_hosts_extend_the_defaults() -> None:
    with running(allowed_hosts=["dev.example.test", "api.example.test:8443"]) as srv:
        for host, status in [
            ("dev.example.test:9999", 200),
            ("api.example.test:8443", 200),
            ("api.example.test:8444", 400),
        ]:
            reply = call(srv.server_address, "GET", "/echo/x", headers=[("Host", host)])
            assert reply.status == status, host


# --- malformed and slow clients -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"NONSENSE\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n",
    ],
)
def test_gateway_malformed_request_is_json_400_without_banner(server: tuple[str, int], raw: bytes) -> None:
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, response.getheader("Content-Type")) == (400, "application/json")
        assert json.loads(response.read())["error"]["code"] == "bad_request"
        assert response.getheader("Server") is None


@pytest.mark.parametrize("path", ["/echo/x", "/nowhere", "/binary"])
def test_gateway_responses_carry_no_server_banner(server: tuple[str, int], path: str) -> None:
    reply = call(server, "GET", path)
    assert reply.header("Server") is None
    assert reply.header("Date")


def test_gateway_slow_request_head_is_cut_off() -> None:
    # Given a gateway that allows half a second for a request head
    with (
        running(limits=Limits(header_timeout=0.5)) as srv,
        socket.create_connection(srv.server_address, timeout=20) as sock,
    ):
        # When a client sends part of its head and then dawdles
        started = time.monotonic()
        sock.sendall(b"GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(3):
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Drip: 1\r\n")
        # Then the gateway answers 408 and closes, long before the client would have finished
        received = read_until_closed(sock)
        assert time.monotonic() - started < 15
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert received.endswith(b'"code":"request_timeout","message":"Request head not received in time"}}')


def test_gateway_idle_connection_is_closed() -> None:
    with (
        running(limits=Limits(header_timeout=0.5)) as srv,
        socket.create_connection(srv.server_address, timeout=20) as sock,
    ):
        # A connection that never sends anything is closed, without an answer
        assert read_until_closed(sock) == b""


def test_gateway_slow_body_is_408() -> None:
    # Given a gateway that allows half a second for a body
    with (
        running(limits=Limits(body_timeout=0.5)) as srv,
        socket.create_connection(srv.server_address, timeout=20) as sock,
    ):
        # When a client declares 100 bytes and sends 10
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 100\r\n\r\n" % srv.server_address[1]
        )
        sock.sendall(b"0123456789")
        received = read_until_closed(sock)
    # Then it is answered 408 and the connection closed
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received[:200]
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_gateway_connections_are_bounded() -> None:
    # Given a gateway that takes two connections, both held open
    with running(limits=Limits(max_connections=2)) as srv:
        held = [socket.create_connection(srv.server_address, timeout=10) for _ in range(2)]
        try:
            time.sleep(0.2)
            # When a third connects, it is told so and closed
            with socket.create_connection(srv.server_address, timeout=10) as third:
                received = read_until_closed(third)
            assert received.startswith(b"HTTP/1.1 503 "), received[:200]
            assert b'"code":"service_unavailable"' in received
        finally:
            for sock in held:
                sock.close()
        # And once they are gone, new connections are served again
        time.sleep(0.2)
        assert call(srv.server_address, "GET", "/echo/x").status == 200


@pytest.mark.parametrize("size", [12_000, 70_000])
def test_gateway_oversize_request_head_is_431_json(server: tuple[str, int], size: int) -> None:
    # HTTP API's quota: 10240 bytes of request line and headers
    before = len(echo.calls)
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Big: %s\r\n\r\n" % (server[1], b"a" * size))
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, response.getheader("Content-Type")) == (431, "application/json")
        assert json.loads(response.read())["error"]["code"] == "headers_too_large"
    assert len(echo.calls) == before


# --- payload sizes without a JSON round trip ------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"statusCode": 200, "headers": {"a": "b"}, "body": "aGVsbG8=", "isBase64Encoded": True},
        {"statusCode": 200, "body": 'Zoë "quoted"\n', "isBase64Encoded": False},
        {"statusCode": 204},
        {"hello": "wörld"},
        "plain string",
    ],
)
def test_payload_size_is_the_json_length(payload: Any) -> None:
    expected = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    assert payload_size(payload) == expected


def test_gateway_response_with_bad_base64_is_502() -> None:
    with pytest.raises(ValueError):
        to_http_response({"statusCode": 200, "body": "not base64!", "isBase64Encoded": True})


# --- /openapi.json and /docs ----------------------------------------------------------------------


def test_gateway_serves_openapi_json_and_docs(server: tuple[str, int]) -> None:
    spec = call(server, "GET", "/openapi.json")
    assert (spec.status, spec.header("Content-Type")) == (200, "application/json")
    assert spec.body == (FIXTURE_YML.parent / "openapi.json").read_bytes()
    page = call(server, "GET", "/docs")
    assert (page.status, page.header("Content-Type")) == (200, "text/html; charset=utf-8")
    assert b"/openapi.json" in page.body
    # Every script and stylesheet the page names is served by the gateway itself (no CDN)
    for asset in re.findall(rb'(?:src|href)="(/docs/[^"]+)"', page.body):
        assert call(server, "GET", asset.decode()).status == 200, asset


def test_gateway_missing_openapi_json_is_404_json(tmp_path: Path) -> None:
    yml = tmp_path / "serverless.yml"
    yml.write_text("functions: {}\n")
    with running(yml) as srv:
        reply = call(srv.server_address, "GET", "/openapi.json")
    assert (reply.status, reply.json()["error"]["code"]) == (404, "not_found")


def test_real_openapi_json_is_served_from_repository_root() -> None:
    if not (ROOT / "openapi.json").exists():
        pytest.skip("openapi.json not written yet")
    with running(ROOT / "serverless.yml") as srv:
        reply = call(srv.server_address, "GET", "/openapi.json")
    assert reply.status == 200 and "paths" in reply.json()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_gateway_completes_its_own_host_name_sent_without_a_port(server: tuple[str, int], host: str) -> None:
    # dicomweb-client sends Host from the URL's host alone; URLs built from Host must name our port.
    event = echoed(call(server, "GET", "/echo/x", headers=[("Host", host)]))
    assert event["headers"]["host"] == f"{host}:{server[1]}"
