"""The DICOMweb bench's own mechanics (scripts/bench/dicomweb.py), so that its figures can be trusted:
STOW requests stay under their size limit and carry every file in order, and the frame load client
measures each server it is given, with OHIF's Accept header, and fails loudly on a wrong answer."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator

import pytest

from scripts.bench import dicomweb
from shared.dicomweb import media


def test_stow_bodies_stay_under_the_limit_and_carry_every_file_in_order() -> None:
    # Given 23 distinct "files" of 300 kB
    files = [bytes([n]) * 300_000 for n in range(23)]
    # When they are packed into requests of at most 1 MB
    requests = dicomweb.stow_bodies(files, max_bytes=1_000_000)
    # Then three fit in each (a fourth would pass 1 MB), and reading the requests back gives the files
    assert [count for _, _, count in requests] == [3] * 7 + [2]
    assert all(len(body) <= 1_000_000 for _, body, _ in requests)
    read = []
    for content_type, body, _ in requests:
        kind, parts = media.read_multipart_related(body, content_type)
        assert kind == "application/dicom"
        read += [bytes(part.body) for part in parts]
    assert read == files


def test_stow_bodies_refuse_a_file_over_the_limit() -> None:
    with pytest.raises(ValueError, match="over 1000 bytes"):
        dicomweb.stow_bodies([b"x" * 2000], max_bytes=1000)


FRAME = bytes(range(256)) * 8


class FrameServer(http.server.ThreadingHTTPServer):
    request_queue_size = 64  # 16 connections at once: a backlog of 5 would drop SYNs (1 s retransmits)
    accepts: list[str]
    status = 200


class FrameHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: FrameServer

    def do_GET(self) -> None:
        self.server.accepts.append(self.headers["Accept"])
        content_type, body = media.write_multipart_related(
            [("application/octet-stream", FRAME)], type_parameter="application/octet-stream"
        )
        self.send_response(self.server.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def frame_servers() -> Iterator[list[FrameServer]]:
    servers = [FrameServer(("127.0.0.1", 0), FrameHandler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for server, thread in zip(servers, threads, strict=True):
        server.accepts = []
        thread.start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def spec(servers: list[FrameServer]) -> dict[str, object]:
    return {
        "servers": [
            {
                "name": f"s{n}",
                "address": ["127.0.0.1", server.server_address[1]],
                "headers": {},
                "frame": "/frames/1",
                "sweep": [f"/i{k}/frames/1" for k in range(20)],
            }
            for n, server in enumerate(servers)
        ],
        "accept": dicomweb.FRAME_ACCEPT,
        "min_bytes": len(FRAME),
        "rounds": 1,
        "requests": 32,
    }


def test_the_frame_load_client_measures_every_server_with_ohifs_accept(frame_servers: list[FrameServer]) -> None:
    figures = dicomweb.run_load(spec(frame_servers))
    assert set(figures) == {"s0", "s1"}
    for values in figures.values():
        assert values["frame_p50_ms"] > 0 and values["frames_per_s_16conn"] > 0
        assert values["series_frames_per_s_16conn"] > 0
    # 10 warm-up and 200 timed requests, two throughput rounds of 32 and of 20 (the sweep), each server
    for server in frame_servers:
        assert len(server.accepts) == 210 + 2 * (32 + 20)
        assert set(server.accepts) == {dicomweb.FRAME_ACCEPT}


def test_the_frame_load_client_fails_on_an_error_answer(frame_servers: list[FrameServer]) -> None:
    frame_servers[1].status = 404
    with pytest.raises(RuntimeError, match="404"):
        dicomweb.run_load(spec(frame_servers))


def test_ohif_time_to_first_image_says_why_and_reports_nothing_without_chromium(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given no Chromium on the machine
    from scripts.bench import common
    from scripts.web import browser

    report = io.StringIO()
    monkeypatch.setattr(common, "REPORT", report)
    monkeypatch.setattr(browser, "chromium_executable", lambda: None)
    server = dicomweb.Server("ours", "http://127.0.0.1:9", dicomweb.OUR_ROOT)
    # When the bench asks for OHIF's time to first image, Then it reports nothing, in one line saying why
    assert dicomweb.ohif_time_to_first_image([server], "1.2.3", 300, tokens={"ours": "t"}) == {}
    lines = report.getvalue().splitlines()
    assert len(lines) == 1 and "not measured" in lines[0] and "Chromium was not found" in lines[0]


def test_flat_figures_give_the_ohif_ratio_only_where_both_servers_were_measured() -> None:
    ours = {"series_metadata_p50_ms": 5.0, "series_metadata_sql_floor_p50_ms": 4.0}
    ours |= {"frame_p50_ms": 4.0, "frames_per_s_16conn": 500.0}
    theirs = {"series_metadata_p50_ms": 500.0, "frame_p50_ms": 5.0, "frames_per_s_16conn": 400.0}
    versions = {"orthanc": "1.10.1"}
    measured = dicomweb.flat_figures(
        {"ours": {**ours, "ohif_first_image_ms": 3000}, "orthanc": {**theirs, "ohif_first_image_ms": 4000}}, versions
    )
    assert measured["dicomweb_ohif_first_image_vs_orthanc"] == 0.75
    assert "dicomweb_ohif_first_image_vs_orthanc" not in dicomweb.TARGETS  # reported, no target
    one_side = dicomweb.flat_figures({"ours": {**ours, "ohif_first_image_ms": 3000}, "orthanc": theirs}, versions)
    assert "dicomweb_ohif_first_image_vs_orthanc" not in one_side
