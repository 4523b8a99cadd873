"""The DICOMweb section of `make bench` (alone: `python -m scripts.bench.main --dicomweb`).

Our DICOMweb root and Orthanc's DICOMweb plugin side by side, measured by the same client, in one
run, on one PostgreSQL server, for one 300-slice 512x512 CT series (uncompressed, as a scanner
exports it):

  STOW-RS   the series in requests of at most 4 MB: instances/s, and the p50 per request
  metadata  GET .../studies/{s}/series/{se}/metadata (gzip accepted, as a browser asks): p50; for ours
            also the floor, the same JSON read by one SQL query straight from PostgreSQL, and the ratio
  QIDO-RS   GET .../studies/{s}/series/{se}/instances: p50
  frames    GET .../instances/{sop}/frames/1 with OHIF's Accept: p50 on one kept-alive connection and
            frames/s over 16 kept-alive connections, from a client process of its own; then every
            frame of the series once over 16 connections, as a viewer opens a series
  OHIF      OHIF 3.13.2's time to its first image of the series in headless Chromium, from the
            navigation's start (the median of 5 runs each, in turns, each in a fresh browser context;
            ohif_time_to_first_image), and how much of it came after OHIF's first request to the root

Each measurement takes turns between the servers (a request or a block of requests each, in turn),
so that drift on a shared 2-core machine (other processes, checkpoints, autovacuum) weighs on both;
medians after warm-up runs. Each answer is checked (counts, the frame's bytes, the floor's JSON equal
to ours; in OHIF, every request to the root a 2xx and the frame timed an image) before its time
counts for anything.

`dicomweb_figures(base_url, root, headers)` measures one server alone with the same code.

Run as `python -m scripts.bench.dicomweb` it is the frame load client (a spec as JSON on stdin, the
figures as JSON on stdout): standard library only at the top of this module, so that the client
process starts light.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from scripts.bench import threads

OUR_ROOT = "/api/v1/dicomweb"
SLICES = 300
SIZE = 512
MAX_STOW_BYTES = 4_000_000
# What OHIF asks for each slice (Facts for DICOMweb in DESIGN.md).
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
JSON_HEADERS = {"Accept": "application/dicom+json", "Accept-Encoding": "gzip"}
# Ours against Orthanc's plugin on the same run; ours against its own floor (one SQL query).
TARGETS = {
    "dicomweb_metadata_vs_orthanc": 0.1,
    "dicomweb_metadata_vs_sql_floor": 2.0,
    "dicomweb_metadata_nothing_held_vs_sql_floor": 2.0,
    "dicomweb_frame_p50_vs_orthanc": 1.5,
}
AT_LEAST = {"dicomweb_frames_per_s_vs_orthanc": 1.0}


@dataclass(frozen=True)
class Server:
    """A DICOMweb server as a client sees it: its base URL, its DICOMweb root, the headers that authorise."""

    name: str
    base_url: str
    root: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.base_url)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass(frozen=True)
class Series:
    """One CT series as Part 10 files, in reading order."""

    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    files: tuple[bytes, ...]
    pixel_data: bytes  # the middle slice's, to check the frame the servers send

    @property
    def middle(self) -> int:
        return len(self.files) // 2

    def path(self, server: Server, tail: str = "") -> str:
        return f"{server.root}/studies/{self.study_uid}/series/{self.series_uid}{tail}"

    def frame_path(self, server: Server, index: int) -> str:
        return self.path(server, f"/instances/{self.sop_uids[index]}/frames/1")


def ct_series(slices: int = SLICES, *, size: int = SIZE, seed: int = 9100) -> Series:
    """A CT series of `slices` distinct size x size slices, 1 mm apart, with a patient module and a
    soft-tissue window, as a scanner exports one (uncompressed, Explicit VR Little Endian)."""
    from scripts.dev import phantom

    study_uid, series_uid = phantom.uid("bench-dicomweb-study", seed), phantom.uid("bench-dicomweb-series", seed)
    datasets = [
        phantom.ct_slice_dataset(
            size,
            instance_number=index + 1,
            slice_position=-150.0 + index,
            study_uid=study_uid,
            series_uid=series_uid,
            window=(40.0, 400.0, None),
            phi=True,
            seed=seed + index,
        )
        for index in range(slices)
    ]
    return Series(
        study_uid,
        series_uid,
        tuple(str(ds.SOPInstanceUID) for ds in datasets),
        tuple(phantom.dicom_bytes(ds) for ds in datasets),
        bytes(datasets[slices // 2].PixelData),
    )


def stow_bodies(files: Sequence[bytes], *, max_bytes: int = MAX_STOW_BYTES) -> list[tuple[str, bytes, int]]:
    """The files as STOW-RS requests of at most max_bytes each, in order: (Content-Type, body, instances)."""
    from shared.dicomweb import media

    def build(batch: Sequence[bytes]) -> tuple[str, bytes]:
        return media.write_multipart_related(
            [("application/dicom", f) for f in batch], type_parameter="application/dicom"
        )

    requests: list[tuple[str, bytes, int]] = []
    batch: list[bytes] = []
    for data in files:
        if batch and len(build([*batch, data])[1]) > max_bytes:
            requests.append((*build(batch), len(batch)))
            batch = []
        batch.append(data)
    if batch:
        requests.append((*build(batch), len(batch)))
    if any(len(body) > max_bytes for _, body, _ in requests):
        raise ValueError(f"a single file is over {max_bytes} bytes")
    return requests


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes  # gunzipped when it came gzipped
    wire_bytes: int
    ms: float


class Client:
    """One kept-alive HTTP/1.1 connection to a server. A request that finds the connection closed by
    the server while it sat idle (Orthanc's keep-alive timeout is 1 s) is sent again on a new one;
    only the try that answered is timed."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._connection = http.client.HTTPConnection(*server.address, timeout=300)

    def request(
        self, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        sent = {**self.server.headers, **(headers or {})}
        for attempt in (1, 2):
            start = time.perf_counter()
            try:
                self._connection.request(method, path, body=body, headers=sent)
                response = self._connection.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._connection.close()
                if attempt == 2:
                    raise
                continue
            data = gzip.decompress(raw) if response.getheader("Content-Encoding") == "gzip" else raw
            elapsed = (time.perf_counter() - start) * 1000
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data, len(raw), elapsed)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._connection.close()


def _in_turns(servers: Sequence[Server], turn: int) -> list[Server]:
    """The servers in a rotating order, so that neither always goes first (or right after the other)."""
    shift = turn % len(servers)
    return [*servers[shift:], *servers[:shift]]


def _p50(samples: Sequence[float]) -> float:
    return round(statistics.median(samples), 2)


def stow_figures(clients: Mapping[str, Client], series: Series) -> dict[str, dict[str, Any]]:
    """STOW-RS of the series, request by request in turns: instances/s (instances over the time spent
    in requests) and the p50 per request. Every instance must be stored (200, nothing failed)."""
    requests = stow_bodies(series.files)
    warmup = stow_bodies(ct_series(2, size=SIZE, seed=9900).files, max_bytes=600_000)  # one instance each
    spent: dict[str, list[float]] = {name: [] for name in clients}
    servers = [client.server for client in clients.values()]
    for number, (content_type, body, count) in enumerate([*warmup, *requests]):
        for server in _in_turns(servers, number):
            reply = clients[server.name].request(
                "POST",
                f"{server.root}/studies",
                body=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
            answer = json.loads(reply.body) if reply.body else {}
            stored = answer.get("00081199", {}).get("Value", [])
            failed = answer.get("00081198", {}).get("Value", [])  # Orthanc sends it empty
            if reply.status != 200 or len(stored) != count or failed:
                raise RuntimeError(f"{server.name}: STOW answered {reply.status}: {reply.body[:300]!r}")
            if number >= len(warmup):
                spent[server.name].append(reply.ms)
    return {
        name: {
            "stow_instances_per_s": round(len(series.files) / (sum(samples) / 1000), 1),
            "stow_request_p50_ms": _p50(samples),
            "stow_requests": len(requests),
            "stow_largest_request_mb": round(max(len(body) for _, body, _ in requests) / 1e6, 2),
        }
        for name, samples in spent.items()
    }


def get_figures(
    clients: Mapping[str, Client],
    path_of: Callable[[Server], str],
    check: Callable[[Server, Reply], None],
    *,
    label: str,
    runs: int,
    warmup: int = 2,
    floors: Mapping[str, Callable[[], str]] | None = None,
    headers: Mapping[str, str] = JSON_HEADERS,
) -> dict[str, dict[str, Any]]:
    """p50 of a GET (JSON; gzip accepted by default) per server, one request per server per round, in
    turns. A floor (server name -> a function returning the same JSON another way) is timed in the same turn."""
    servers = [client.server for client in clients.values()]
    samples: dict[str, list[float]] = {name: [] for name in clients}
    floor_samples: dict[str, list[float]] = {name: [] for name in floors or {}}
    sizes: dict[str, int] = {}
    for number in range(warmup + runs):
        for server in _in_turns(servers, number):
            reply = clients[server.name].request("GET", path_of(server), headers=headers)
            check(server, reply)
            sizes[server.name] = reply.wire_bytes
            floor = (floors or {}).get(server.name)
            start = time.perf_counter()
            text = floor() if floor is not None else None
            floor_ms = (time.perf_counter() - start) * 1000
            if text is not None and text.encode() != reply.body:
                raise RuntimeError(f"{server.name}: the floor's JSON differs from the {label} answer")
            if number >= warmup:
                samples[server.name].append(reply.ms)
                if floor is not None:
                    floor_samples[server.name].append(floor_ms)
    figures: dict[str, dict[str, Any]] = {}
    for name, values in samples.items():
        figures[name] = {f"{label}_p50_ms": _p50(values), f"{label}_wire_kb": round(sizes[name] / 1000, 1)}
        if floor_samples.get(name):
            figures[name][f"{label}_sql_floor_p50_ms"] = _p50(floor_samples[name])
    return figures


def check_frame(server: Server, reply: Reply, expected: bytes) -> None:
    """The answer is one multipart/related part holding exactly the stored frame."""
    from shared.dicomweb import media

    if reply.status != 200:
        raise RuntimeError(f"{server.name}: frame answered {reply.status}: {reply.body[:300]!r}")
    _, parts = media.read_multipart_related(reply.body, reply.headers["content-type"])
    if len(parts) != 1 or bytes(parts[0].body) != expected:
        raise RuntimeError(f"{server.name}: the frame's bytes are not the stored pixel data")


def frame_load(servers: Sequence[Server], series: Series, *, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """The frame figures from a client process of its own (`python -m scripts.bench.dicomweb`), so that
    the client's threads never share a GIL or a core budget with the bench process's bookkeeping."""
    spec = {
        "servers": [
            {
                "name": s.name,
                "address": list(s.address),
                "headers": dict(s.headers),
                "frame": series.frame_path(s, series.middle),
                "sweep": [series.frame_path(s, index) for index in range(len(series.files))],
            }
            for s in servers
        ],
        "accept": FRAME_ACCEPT,
        "min_bytes": len(series.pixel_data),
        "rounds": rounds,
        "requests": 480,
    }
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench.dicomweb"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the frame load client failed: {out.stderr[-2000:]}")
    figures: dict[str, dict[str, Any]] = json.loads(out.stdout)
    return figures


def compare(
    servers: Sequence[Server], series: Series, *, floors: Mapping[str, Callable[[], str]] | None = None
) -> dict[str, dict[str, Any]]:
    """Every figure of every server (name -> figure -> value), each measurement in turns between them."""
    figures: dict[str, dict[str, Any]] = {s.name: {} for s in servers}

    def merge(found: Mapping[str, Mapping[str, Any]]) -> None:
        for name, values in found.items():
            figures[name].update(values)

    with contextlib.ExitStack() as stack:
        clients = {s.name: Client(s) for s in servers}
        for client in clients.values():
            stack.callback(client.close)
        merge(stow_figures(clients, series))

        def check_metadata(server: Server, reply: Reply) -> None:
            if reply.status != 200 or len(json.loads(reply.body)) != len(series.files):
                raise RuntimeError(f"{server.name}: metadata answered {reply.status}: {reply.body[:300]!r}")

        merge(
            get_figures(
                clients,
                lambda s: series.path(s, "/metadata"),
                check_metadata,
                label="series_metadata",
                runs=25,
                floors=floors,
            )
        )

        # A server with a floor (ours) also without gzip, beside its floor again: what compressing costs
        # it. (Orthanc's time is its file reads either way.)
        with_floor = {name: client for name, client in clients.items() if name in (floors or {})}
        if with_floor:
            merge(
                get_figures(
                    with_floor,
                    lambda s: series.path(s, "/metadata"),
                    check_metadata,
                    label="series_metadata_identity",
                    runs=25,
                    floors=floors,
                    headers={"Accept": "application/dicom+json"},
                )
            )

        def check_search(server: Server, reply: Reply) -> None:
            found = json.loads(reply.body) if reply.status == 200 else []
            # Every instance once; in any order (PS3.18 leaves it to the server: Orthanc's varies).
            if sorted(item["00080018"]["Value"][0] for item in found) != sorted(series.sop_uids):
                raise RuntimeError(f"{server.name}: QIDO answered {reply.status}: {reply.body[:300]!r}")

        merge(
            get_figures(clients, lambda s: series.path(s, "/instances"), check_search, label="qido_instances", runs=25)
        )
        for client in clients.values():
            check_frame(
                client.server,
                client.request(
                    "GET", series.frame_path(client.server, series.middle), headers={"Accept": FRAME_ACCEPT}
                ),
                series.pixel_data,
            )
    merge(frame_load(servers, series))
    return figures


def nothing_held_figures(server: Server, series: Series, floor: Callable[[], str]) -> dict[str, Any]:
    """Series metadata (beside its floor) and one frame from a gateway whose containers hold nothing
    (IMAGE_CACHE_MB=0): every request reads and sends what a first request does."""

    def check_metadata(server: Server, reply: Reply) -> None:
        if reply.status != 200 or len(json.loads(reply.body)) != len(series.files):
            raise RuntimeError(f"{server.name}: metadata answered {reply.status}: {reply.body[:300]!r}")

    client = Client(server)
    try:
        figures = get_figures(
            {"ours": client},
            lambda s: series.path(s, "/metadata"),
            check_metadata,
            label="series_metadata_nothing_held",
            runs=25,
            floors={"ours": floor},
        )["ours"]
        figures.update(
            get_figures(
                {"ours": client},
                lambda s: series.frame_path(s, series.middle),
                lambda s, reply: check_frame(s, reply, series.pixel_data),
                label="frame_nothing_held",
                runs=50,
                headers={"Accept": FRAME_ACCEPT},
            )["ours"]
        )
    finally:
        client.close()
    return figures


def dicomweb_figures(
    base_url: str, root: str, headers: Mapping[str, str], series: Series | None = None
) -> dict[str, Any]:
    """Every figure of one DICOMweb server (STOW, series metadata, QIDO, frames), measured as compare() does."""
    return compare([Server("server", base_url, root, headers)], series or ct_series())["server"]


# OHIF in Chromium: counted runs per server, after one warm-up run each.
OHIF_RUNS = 5


def ohif_time_to_first_image(
    servers: Sequence[Server], study_uid: str, instances: int, *, tokens: Mapping[str, str], runs: int = OHIF_RUNS
) -> dict[str, dict[str, Any]]:
    """OHIF's time to its first image of the study (its one series of `instances` slices) through each
    server's root, in one headless Chromium: name -> {"ohif_first_image_ms": median, ...}.

    OHIF's server (scripts.web.ohif) stands in front of each root; a server named in `tokens` gets its
    token as ?token= (OHIF then sends it as a bearer token), the others none. One warm-up run per
    server, then `runs` counted ones, the servers in turns; each run in a fresh browser context (no
    HTTP cache, storage or service worker carried over), timed from the navigation's start to the first
    frame on which the viewport canvas is not blank, which must show an image (harness.shows_an_image).
    A run counts only once OHIF has fetched every slice's frame and every request it made to the root
    was answered 2xx; one that does not is reported in a line and left out. Where Chromium, Playwright
    or OHIF itself is missing (or does not start), one line says so and nothing is measured: {}."""
    from scripts.bench.common import REPORT
    from scripts.web import browser
    from scripts.web.ohif import dist

    problem = browser.missing()
    if problem is None:
        try:
            dist.prepare()
        except RuntimeError as failure:  # no npm, no registry
            problem = f"OHIF {dist.VERSION} could not be fetched: {failure}"
    if problem is not None:
        print(f"(OHIF's time to first image not measured: {problem})", file=REPORT)
        return {}
    from playwright.sync_api import Error as PlaywrightError

    from scripts.web.ohif import harness

    first_image: dict[str, list[float]] = {s.name: [] for s in servers}
    after_request: dict[str, list[float]] = {s.name: [] for s in servers}
    with contextlib.ExitStack() as stack:
        try:
            ohifs = {
                s.name: stack.enter_context(harness.running(s.base_url, s.root, access_log=False)) for s in servers
            }
            chromium = stack.enter_context(browser.launched_chromium())
        except (RuntimeError, PlaywrightError) as failure:  # OHIF's server or Chromium did not start
            print(f"(OHIF's time to first image not measured: {failure})", file=REPORT)
            return {}
        for number in range(1 + runs):
            for server in _in_turns(servers, number):
                try:
                    ms, from_request = _ohif_run(
                        chromium, ohifs[server.name].url, server, study_uid, instances, tokens.get(server.name)
                    )
                except (RuntimeError, TimeoutError, PlaywrightError) as failure:
                    print(f"(an OHIF run on {server.name} is not counted: {failure})", file=REPORT)
                    continue
                if number:
                    first_image[server.name].append(ms)
                    after_request[server.name].append(from_request)
    return {
        name: {
            "ohif_first_image_ms": round(statistics.median(samples)),
            "ohif_first_image_min_ms": round(min(samples)),
            "ohif_first_image_max_ms": round(max(samples)),
            "ohif_first_image_after_first_request_ms": round(statistics.median(after_request[name])),
            "ohif_runs": len(samples),
        }
        for name, samples in first_image.items()
        if samples
    }


def _ohif_run(
    chromium: Any, ohif_url: str, server: Server, study_uid: str, instances: int, token: str | None
) -> tuple[float, float]:
    """One run in a fresh context: (ms to the first image, ms from OHIF's first request to the root to it)."""
    from scripts.web.ohif import harness

    context = chromium.new_context(locale="en-US", viewport={"width": 1280, "height": 860})
    try:
        context.set_default_timeout(60_000)
        viewer = harness.Viewer(context.new_page(), ohif_url, server.root)
        drawn = viewer.open(study_uid, token, timeout_s=120)
        if not harness.shows_an_image(drawn):
            raise RuntimeError("the first frame drawn on the canvas is not an image")
        harness.until(viewer.page, lambda: len(viewer.fetched_instances()) >= instances, timeout_s=180)
        failures = viewer.dicomweb_failures()
        if failures:
            raise RuntimeError(f"{len(failures)} requests to the root failed, the first: {failures[:3]}")
        first_request = viewer.first_request_ms()
        if viewer.first_image_ms is None or first_request is None:
            raise RuntimeError("the page recorded no request to the root")
        return viewer.first_image_ms, viewer.first_image_ms - first_request
    finally:
        context.close()


# ---------------------------------------------------------------- the section in make bench

ROWS = [
    ("stow_instances_per_s", "STOW-RS, instances/s (<= 4 MB per request)"),
    ("stow_request_p50_ms", "STOW-RS, p50 per request, ms"),
    ("series_metadata_p50_ms", "series metadata, p50 ms (gzip)"),
    ("series_metadata_sql_floor_p50_ms", "  the same JSON by one SQL query, p50 ms"),
    ("series_metadata_wire_kb", "  series metadata on the wire, kB"),
    ("series_metadata_identity_p50_ms", "  the same without gzip, p50 ms"),
    ("series_metadata_identity_sql_floor_p50_ms", "  its SQL floor in the same turns, p50 ms"),
    ("series_metadata_nothing_held_p50_ms", "  gzip, nothing held in the container, p50 ms"),
    ("series_metadata_nothing_held_sql_floor_p50_ms", "  its SQL floor in the same turns, p50 ms"),
    ("qido_instances_p50_ms", "QIDO-RS instances of the series, p50 ms"),
    ("frame_p50_ms", "one frame, p50 ms (1 kept-alive connection)"),
    ("frame_nothing_held_p50_ms", "  nothing held in the container, p50 ms"),
    ("frames_per_s_16conn", "one frame, frames/s (16 connections)"),
    ("series_frames_per_s_16conn", "every frame of the series once, frames/s (16 conn.)"),
    ("ohif_first_image_ms", f"OHIF time to first image, ms (median of {OHIF_RUNS})"),
    ("ohif_first_image_min_ms", "  fastest run, ms"),
    ("ohif_first_image_max_ms", "  slowest run, ms"),
    ("ohif_first_image_after_first_request_ms", "  from OHIF's first request to the root, ms"),
]


def section(server_url: str, url: str, *, slices: int = SLICES) -> dict[str, object]:
    """The DICOMweb section on the bench database `url` (migrated) of the bench server: our local
    gateway (as `make run` starts it) and, where installed, Orthanc with its DICOMweb and PostgreSQL
    plugins on a fresh database of the same server. Prints the table; returns the flat figures."""
    from pathlib import Path

    from scripts.bench import orthanc
    from scripts.bench.common import REPORT, fresh_database, gateway_process
    from shared import auth, db
    from shared.core import config

    user_id = db.call(db.create_user, username="bench-dicomweb", password_hash=auth.hash_password("bench-dicomweb"))
    token = db.call(auth.issue_session, user_id=user_id, ttl_seconds=7200).token
    series = ct_series(slices)
    orthanc_versions: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(gateway_process(url))
        ours = Server("ours", f"http://127.0.0.1:{port}", OUR_ROOT, {"Authorization": f"Bearer {token}"})
        servers = [ours]
        if orthanc.dicomweb_bench_available():
            params = config.parse_database_url(fresh_database(server_url, "orthanc_dicomweb_bench"))
            host = params.host if params.unix_sock is None else str(Path(params.unix_sock).parent)
            orthanc_port = stack.enter_context(
                orthanc.running(
                    host=host or "localhost",
                    port=params.port,
                    database=params.database,
                    user=params.user,
                    dicomweb=True,
                    index_connections=ORTHANC_INDEX_CONNECTIONS,
                )
            )
            orthanc_versions = orthanc.versions(orthanc_port)
            servers.append(Server("orthanc", f"http://127.0.0.1:{orthanc_port}", orthanc.DICOMWEB_ROOT))
        else:
            print(
                "(Orthanc or its DICOMweb plugin is not installed: ours alone. "
                "`apt-get install orthanc orthanc-dicomweb orthanc-postgresql` to compare side by side)",
                file=REPORT,
            )
        raw = db.connect(config.parse_database_url(url), timeout=60)
        stack.callback(raw.close)

        def floor() -> str:
            return str(raw.run(FLOOR_SQL, owner_id=user_id, study=series.study_uid, series=series.series_uid)[0][0])

        results = compare(servers, series, floors={"ours": floor})
        # Ours again with nothing held in its containers (IMAGE_CACHE_MB=0): what a first request costs.
        cold_port = stack.enter_context(gateway_process(url, IMAGE_CACHE_MB="0"))
        cold = Server("ours", f"http://127.0.0.1:{cold_port}", OUR_ROOT, ours.headers)
        results["ours"].update(nothing_held_figures(cold, series, floor))
        # OHIF against the warm gateway and Orthanc, as compare() measured them; ours with the session token.
        ohif = ohif_time_to_first_image(servers, series.study_uid, len(series.files), tokens={"ours": token})
        for name, values in ohif.items():
            results[name].update(values)
    print_side_by_side(results, orthanc_versions, slices=slices)
    return flat_figures(results, orthanc_versions)


# The series metadata JSON, straight from PostgreSQL: what no server can beat by much.
FLOOR_SQL = """
    SELECT '[' || string_agg(metadata, ',' ORDER BY COALESCE(instance_number, 2147483647), sop_instance_uid) || ']'
    FROM dicom_instances
    WHERE owner_id = :owner_id AND study_instance_uid = :study AND series_instance_uid = :series
"""
# Orthanc's PostgreSQL index pool (Debian's default is 1): as many connections as our gateway's images
# function can hold open at once (2 worker processes x 4 containers, as `make run` starts it). With
# one, Orthanc's 16-connection frame throughput halved here (289 vs 576 frames/s with four).
ORTHANC_INDEX_CONNECTIONS = 8


def orthanc_label(versions: Mapping[str, str]) -> str:
    return (
        f"Orthanc {versions.get('orthanc', '?')} + DICOMweb plugin {versions.get('dicom-web', '?')} "
        f"+ PostgreSQL plugins {versions.get('postgresql-index', '?')} (Debian packages; plugin 1.15's "
        "stored series metadata is newer than them)"
    )


def print_side_by_side(
    results: Mapping[str, Mapping[str, Any]], versions: Mapping[str, str], *, slices: int = SLICES
) -> None:
    from scripts.bench.common import REPORT

    ours, theirs = results["ours"], results.get("orthanc", {})
    print(f"\nDICOMweb, one {slices}-slice {SIZE}x{SIZE} CT series, one client, one run", file=REPORT)
    print(f"  ours:    local gateway + Lambda handlers, PostgreSQL ({OUR_ROOT})", file=REPORT)
    if versions:
        print(f"  Orthanc: {orthanc_label(versions)}", file=REPORT)
    width = max(len(text) for _, text in ROWS)
    print(f"{'':<{width}}  {'ours':>9}  {'Orthanc':>9}  {'ours/Orthanc':>12}", file=REPORT)
    for key, text in ROWS:
        mine, other = ours.get(key), theirs.get(key)
        if mine is None and other is None:
            note = "(not measured: see above)" if key.startswith("ohif_") else ""
            print(f"{text:<{width}}  {'-':>9}  {'-':>9}  {note}", file=REPORT)
            continue
        ratio = f"{mine / other:.3g}" if isinstance(mine, int | float) and isinstance(other, int | float) else ""
        print(f"{text:<{width}}  {mine if mine is not None else '-':>9}  {other if other is not None else '-':>9}  "
              f"{ratio:>12}", file=REPORT)  # fmt: skip
    print("", file=REPORT)


def flat_figures(results: Mapping[str, Mapping[str, Any]], versions: Mapping[str, str]) -> dict[str, object]:
    """One flat dict for bench-results.json and print_table: dicomweb_<server>_<figure>, and the ratios
    that have targets."""
    figures: dict[str, object] = {}
    for name, values in results.items():
        figures.update({f"dicomweb_{name}_{key}": value for key, value in values.items()})
    ours, theirs = results["ours"], results.get("orthanc")
    figures["dicomweb_metadata_vs_sql_floor"] = round(
        ours["series_metadata_p50_ms"] / ours["series_metadata_sql_floor_p50_ms"], 2
    )
    if "series_metadata_nothing_held_p50_ms" in ours:
        figures["dicomweb_metadata_nothing_held_vs_sql_floor"] = round(
            ours["series_metadata_nothing_held_p50_ms"] / ours["series_metadata_nothing_held_sql_floor_p50_ms"], 2
        )
    if theirs:
        figures["dicomweb_orthanc_versions"] = ", ".join(f"{k} {v}" for k, v in versions.items())
        figures["dicomweb_metadata_vs_orthanc"] = round(
            ours["series_metadata_p50_ms"] / theirs["series_metadata_p50_ms"], 4
        )
        figures["dicomweb_frame_p50_vs_orthanc"] = round(ours["frame_p50_ms"] / theirs["frame_p50_ms"], 2)
        if "frame_nothing_held_p50_ms" in ours:
            figures["dicomweb_frame_nothing_held_p50_vs_orthanc"] = round(
                ours["frame_nothing_held_p50_ms"] / theirs["frame_p50_ms"], 2
            )
        figures["dicomweb_frames_per_s_vs_orthanc"] = round(
            ours["frames_per_s_16conn"] / theirs["frames_per_s_16conn"], 2
        )
        if "ohif_first_image_ms" in ours and "ohif_first_image_ms" in theirs:  # reported, no target
            figures["dicomweb_ohif_first_image_vs_orthanc"] = round(
                ours["ohif_first_image_ms"] / theirs["ohif_first_image_ms"], 2
            )
    return figures


# ---------------------------------------------------------------- the frame load client (its own process)


def _get(connection: http.client.HTTPConnection, path: str, headers: Mapping[str, str], min_bytes: int) -> None:
    for attempt in (1, 2):
        try:
            connection.request("GET", path, headers=dict(headers))
            response = connection.getresponse()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()
            if attempt == 2:
                raise
            continue
        if response.status != 200 or len(body) < min_bytes:
            raise RuntimeError(f"GET {path}: {response.status}, {len(body)} bytes")
        return


def _connection(spec: Mapping[str, Any]) -> http.client.HTTPConnection:
    host, port = spec["address"]
    return http.client.HTTPConnection(host, int(port), timeout=120)


def _latency(
    specs: Sequence[Mapping[str, Any]], headers: Mapping[str, Mapping[str, str]], min_bytes: int
) -> dict[str, list[float]]:
    """One kept-alive connection per server; blocks of 20 requests in turns; 10 warm-up requests each."""
    connections = {s["name"]: _connection(s) for s in specs}
    samples: dict[str, list[float]] = {s["name"]: [] for s in specs}
    try:
        for block in range(11):
            for spec in specs[block % len(specs) :] + specs[: block % len(specs)]:
                for _ in range(10 if block == 0 else 20):
                    start = time.perf_counter()
                    _get(connections[spec["name"]], spec["frame"], headers[spec["name"]], min_bytes)
                    if block:
                        samples[spec["name"]].append((time.perf_counter() - start) * 1000)
    finally:
        for connection in connections.values():
            connection.close()
    return samples


def _throughput(spec: Mapping[str, Any], paths: Sequence[str], headers: Mapping[str, str], min_bytes: int) -> float:
    """Requests/s for `paths`, taken in order by 16 threads, each on its own kept-alive connection."""
    elapsed = threads.drain(
        paths,
        [functools.partial(_connection, spec)] * 16,
        lambda connection, path: _get(connection, path, headers, min_bytes),
        http.client.HTTPConnection.close,
        name=str(spec["name"]),
    )
    return len(paths) / elapsed


def run_load(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The frame figures of each server in `spec` (see frame_load)."""
    specs = list(spec["servers"])
    headers = {s["name"]: {**s["headers"], "Accept": spec["accept"]} for s in specs}
    min_bytes = int(spec["min_bytes"])
    latency = _latency(specs, headers, min_bytes)
    one: dict[str, list[float]] = {s["name"]: [] for s in specs}
    sweep: dict[str, list[float]] = {s["name"]: [] for s in specs}
    for number in range(int(spec["rounds"]) + 1):
        for s in specs[number % len(specs) :] + specs[: number % len(specs)]:
            rps = _throughput(s, [s["frame"]] * int(spec["requests"]), headers[s["name"]], min_bytes)
            sweeping = _throughput(s, s["sweep"], headers[s["name"]], min_bytes)
            if number:  # round 0 warms up every connection path
                one[s["name"]].append(rps)
                sweep[s["name"]].append(sweeping)
    return {
        s["name"]: {
            "frame_p50_ms": _p50(latency[s["name"]]),
            "frame_p95_ms": round(sorted(latency[s["name"]])[int(0.95 * (len(latency[s["name"]]) - 1))], 2),
            "frames_per_s_16conn": round(statistics.median(one[s["name"]]), 1),
            "series_frames_per_s_16conn": round(statistics.median(sweep[s["name"]]), 1),
        }
        for s in specs
    }


if __name__ == "__main__":
    print(json.dumps(run_load(json.load(sys.stdin))))
