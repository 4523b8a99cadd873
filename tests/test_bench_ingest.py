"""The ingest bench's own mechanics (scripts/bench/ingest.py), so that its figures can be trusted: it
reads the upload function's durations from the function's real log line, its client stores every
file once on every server and fails loudly on a refusal, it finds which gateway worker process took a
connection, and its ratios compare ours with Orthanc's best."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.bench import ingest
from shared.core import observability
from tests.lambda_client import multipart


class Context:
    function_name = "upload"
    aws_request_id = "req-1"


def test_upload_duration_reads_the_upload_functions_own_log_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the upload function's handler wrapper as deployed (LOG_FORMAT=json), answering 201
    monkeypatch.setenv("LOG_FORMAT", "json")
    handler = observability.observed(lambda event, context: {"statusCode": 201, "body": ""})
    event = {"routeKey": "POST /api/v1/scans/analyze", "requestContext": {"requestId": "r1"}}
    # When it handles one upload
    handler(event, Context())
    lines = capsys.readouterr().out.splitlines()
    # Then exactly one of its lines is read as (201, its duration), and nothing else is
    found = [ingest.upload_duration(line) for line in lines]
    durations = [d for d in found if d is not None]
    assert len(durations) == 1 and durations[0][0] == 201 and durations[0][1] >= 0


def test_upload_duration_ignores_other_functions_routes_and_text() -> None:
    line = {"message": "request", "function_name": "upload", "route": "POST /api/v1/scans/analyze", "latency_ms": 12.5}
    assert ingest.upload_duration(json.dumps({**line, "status_code": 201})) == (201, 12.5)
    assert ingest.upload_duration(json.dumps({**line, "function_name": "images", "status_code": 200})) is None
    assert ingest.upload_duration(json.dumps({**line, "route": "POST /dicom-web/studies", "status_code": 200})) is None
    assert ingest.upload_duration(json.dumps({**line, "message": "access", "status_code": 201})) is None
    assert ingest.upload_duration("INFO shared.db: request") is None
    assert ingest.upload_duration("{not json") is None


def test_durations_refuse_to_give_a_figure_from_missing_lines() -> None:
    durations = ingest.Durations()
    line = {"message": "request", "function_name": "upload", "route": "POST /api/v1/scans/analyze"}
    durations.take(json.dumps({**line, "status_code": 201, "latency_ms": 10.0}))
    durations.take(json.dumps({**line, "status_code": 422, "latency_ms": 3.0}))
    assert durations.since(0, 1) == [10.0] and durations.other == 1
    with pytest.raises(RuntimeError, match="1 upload log lines with a duration for 2 instances"):
        durations.since(0, 2, timeout=0.05)


def test_ratios_compare_ours_with_orthancs_best_pool() -> None:
    results: dict[str, dict[str, Any]] = {
        "ours": {"upload_p50_ms_512": 20.0, "per_s_5clients_512": 100.0},
        "orthanc": {"upload_p50_ms_512": 25.0, "per_s_5clients_512": 80.0},
        "orthanc_1conn": {"upload_p50_ms_512": 16.0, "per_s_5clients_512": 125.0},
    }
    # The lowest time and the highest rate of Orthanc's two pools
    assert ingest.best_orthanc(results, "upload_p50_ms_512") == 16.0
    assert ingest.best_orthanc(results, "per_s_5clients_512") == 125.0
    assert ingest.ratio(20.0, 16.0) == 1.25 and ingest.ratio(100.0, 125.0) == 0.8
    assert ingest.ratio(None, 1.0) is None and ingest.ratio(1.0, 0.0) is None
    assert ingest.best_orthanc({"ours": results["ours"]}, "upload_p50_ms_512") is None


def test_in_turns_worker_shares_and_cpu_used() -> None:
    turns = [ingest.in_turns("abc", turn) for turn in range(4)]
    assert turns == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert ingest.worker_shares({1: 1.0, 2: 2.0, 3: 0.0}, {1: 2.0, 2: 5.0, 3: 0.0}) == [0.75, 0.25, 0.0]
    assert ingest.worker_shares({1: 1.0}, {1: 1.0}) == []
    # A process that started between the readings counts whole; one that ended is gone from both
    assert ingest.cpu_used({1: 1.0, 2: 4.0}, {1: 1.5, 3: 0.25}) == 0.75


def test_our_request_body_is_the_upload_routes_multipart_form() -> None:
    data = b"DICM" + bytes(range(256))
    body, headers = ingest.Client.body({"multipart": True, "headers": {"Authorization": "Bearer t"}}, data)
    expected, content_type = multipart({"file": ("slice.dcm", data, "application/dicom")}, ingest.Client.BOUNDARY)
    assert body == expected and headers == {"Authorization": "Bearer t", "Content-Type": content_type}
    assert ingest.Client.body({"multipart": False, "headers": {}}, data) == (data, {})


class StoreServer(http.server.ThreadingHTTPServer):
    request_queue_size = 64
    bodies: list[bytes]
    status = 201
    answer = b"{}"


class StoreHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StoreServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(self.server.answer)))
        self.end_headers()
        self.wfile.write(self.server.answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def store_servers() -> Iterator[list[StoreServer]]:
    servers = [StoreServer(("127.0.0.1", 0), StoreHandler) for _ in range(2)]
    for server in servers:
        server.bodies = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[1].status, servers[1].answer = 200, b'{"Status": "Success", "ID": "x"}'  # as Orthanc answers
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def specs(servers: list[StoreServer]) -> list[dict[str, Any]]:
    return [
        ingest.Server("ours", servers[0].server_address[1], "/a", {}, multipart=True).spec(),
        ingest.Server("orthanc", servers[1].server_address[1], "/instances", {}, multipart=False).spec(),
    ]


def test_the_client_stores_every_file_once_on_every_server(store_servers: list[StoreServer], tmp_path: Path) -> None:
    files = []
    for number in range(23):
        files.append(tmp_path / f"{number}.dcm")
        files[-1].write_bytes(bytes([number]) * 1000)
    sequential = ingest.run(
        {"mode": "sequential", "servers": specs(store_servers), "files": [str(f) for f in files[:3]]}
    )
    rounds = [[str(f) for f in files[3:13]], [str(f) for f in files[13:]]]
    load = ingest.run({"mode": "parallel", "servers": specs(store_servers), "rounds": rounds, "clients": 5})
    assert {name: (len(v["ms"]), v["stored"]) for name, v in sequential.items()} == {"ours": (3, 3), "orthanc": (3, 3)}
    assert {name: v["stored"] for name, v in load.items()} == {"ours": 20, "orthanc": 20}
    assert all(v["seconds"] > 0 for v in load.values())
    # Orthanc got the files themselves, ours each in a multipart form; every file once, none lost
    assert sorted(store_servers[1].bodies) == sorted(f.read_bytes() for f in files)
    wrapped = {ingest.Client.body({"multipart": True, "headers": {}}, f.read_bytes())[0] for f in files}
    assert sorted(store_servers[0].bodies) == sorted(wrapped)


def test_the_client_fails_loudly_when_a_server_refuses(store_servers: list[StoreServer], tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"x")
    store_servers[0].status = 422
    with pytest.raises(RuntimeError, match="ours: 422"):
        ingest.run(
            {"mode": "parallel", "servers": specs(store_servers), "rounds": [[str(tmp_path / "a.dcm")]], "clients": 1}
        )


ACCEPTING_CHILD = """
import socket, sys
listener = socket.socket(fileno=int(sys.argv[1]))
held = []
print("ready", flush=True)
while True:
    held.append(listener.accept()[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_worker_that_accepted_a_connection_is_found_in_proc() -> None:
    # Given a listening socket held by this process and by a child that accepts (as the gateway's
    # watching process and its workers hold theirs)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-c", ACCEPTING_CHILD, str(listener.fileno())],
        pass_fds=[listener.fileno()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        # Then the child is the one worker, and a connection to the port is found in its hands
        assert ingest.server_processes(port) == [child.pid]
        client = ingest.Client({"port": port, "name": "x"})
        client.connection.connect()
        assert ingest.accepting_worker(client, [child.pid]) == child.pid
        assert ingest.accepting_worker(client, [child.pid + 10_000_000], wait=0.05) is None
        client.close()
        # And a process that holds the listening socket alone (Orthanc) is the server's one process
        listener.close()
        assert ingest.server_processes(port) == [child.pid]
    finally:
        child.kill()
        child.communicate()
        listener.close()
