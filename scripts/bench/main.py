"""`make bench`: speed, size and memory figures for the issue's targets. Prints a table, writes JSON.

Runs on a fresh database `ctscan_bench` on the embedded server (or DATABASE_URL's server).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import JPEGLosslessSV1

from scripts.bench import coldstart, hostile, profile_upload, tlspg
from scripts.bench import dicomweb as bench_dicomweb
from scripts.bench import ingest as bench_ingest
from scripts.bench import orthanc as bench_orthanc
from scripts.bench import time_budget as bench_time_budget
from scripts.bench import transport as bench_transport
from scripts.bench.common import REPORT, ct_image, fresh_database, gateway_process, percentile, timed
from scripts.bench.compression import compression_figures
from scripts.dev import phantom
from scripts.dev.env import ROOT, prepare_database
from scripts.web import assets as web_assets
from shared import auth, db
from shared.core import config
from shared.db import protocol
from shared.http import image_cache as image_cache_module

RESULTS = ROOT / "bench-results.json"
TARGETS = {
    "upload_dicom_p50_ms": 12.0,
    "upload_dicom_vs_png_p50": 1.0,
    "warm_get_ratio": 1.2,
    "range_vs_full_ratio": 0.2,
    "images_import_ms": 250.0,
    # Init from the function's own zip under CPython 3.12: the handler's import plus its first request.
    "cold_images_init_ms": 200.0,
    "cold_scans_init_ms": 400.0,
    "cold_auth_init_ms": 400.0,
    "gateway_205kb_get_p50_ms": 1.8,
    "bytes_per_scan_ratio": 1.1,
    "web_first_load_kb": 150.0,
    **bench_dicomweb.TARGETS,
    # The upload function's peak memory on the hostile DICOM files: half its memorySize at most.
    **hostile.targets(hostile.upload_memory_mb()),
    **bench_time_budget.TARGETS,
    **bench_ingest.TARGETS,
    **bench_transport.TARGETS,
}
AT_LEAST = {"gateway_205kb_rps_16conn": 700.0, **bench_dicomweb.AT_LEAST, **bench_ingest.AT_LEAST}


def analysis_step_figures(dataset: object) -> dict[str, object]:
    """Where an uncompressed 512x512 CT upload's time goes outside the database: analysis and rendering."""
    from shared.imaging import analyze_upload

    data = phantom.dicom_bytes(dataset)  # type: ignore[arg-type]
    analyze_upload(data)
    samples = timed(lambda: analyze_upload(data), 50)
    return {"analyze_dicom_512_p50_ms": round(statistics.median(samples), 2)}


HTTP_LOAD_CODE = """
import json, statistics, sys, threading, time
from http.client import HTTPConnection
port, path, headers, label = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
conn = HTTPConnection("127.0.0.1", port, timeout=60)
samples = []
for _ in range(120):
    start = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    samples.append((time.perf_counter() - start) * 1000)
conn.close()
per_client, clients = 60, 16
failures = []
def client():
    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(per_client):
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            failures.append(response.status)
    connection.close()
threads = [threading.Thread(target=client) for _ in range(clients)]
start = time.perf_counter()
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
elapsed = time.perf_counter() - start
assert not failures, failures[:5]
print(json.dumps({label + "_get_p50_ms": round(statistics.median(samples[20:]), 2),
                  label + "_rps_16conn": round(clients * per_client / elapsed, 1)}))
"""


def http_get_figures(port: int, path: str, headers: dict[str, str], label: str) -> dict[str, float]:
    """p50 of a GET on one kept-alive connection, then requests/s over 16 kept-alive connections.

    The clients run in a process of their own, so they never compete with an in-process server
    for the GIL: our gateway and Orthanc are measured by the very same client.
    """
    out = subprocess.run(
        [sys.executable, "-c", HTTP_LOAD_CODE, str(port), path, json.dumps(headers), label],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def read_path_figures(api: object, url: str, token: str, server_url: str) -> dict[str, object]:
    """A ~205 KB DICOM original read through the local gateway, and the same file from Orthanc.

    Read again and again, as a viewer does: from the container's image cache after the first read
    (the database still authorises every read), and with the cache off (IMAGE_CACHE_MB=0); with the
    gateway's default worker processes and with one.
    """
    data = phantom.dicom_bytes(phantom.ct_slice_dataset(320, seed=4242))
    body, ctype = multipart_body(data)
    scan_id = api.request(  # type: ignore[attr-defined]
        "POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype}
    ).json()["scanId"]
    path = f"/api/v1/scans/image/{scan_id}/original"
    bearer = {"Authorization": f"Bearer {token}"}
    figures: dict[str, object] = {"read_original_bytes": len(data)}
    with gateway_process(url) as port:
        figures.update(http_get_figures(port, path, bearer, "gateway_205kb"))
    with gateway_process(url, IMAGE_CACHE_MB="0") as port:
        figures.update(http_get_figures(port, path, bearer, "gateway_205kb_uncached"))
    with gateway_process(url, workers=1) as port:
        figures.update(http_get_figures(port, path, bearer, "gateway_205kb_1worker"))
    if bench_orthanc.available():
        url = fresh_database(server_url, "orthanc_read_bench")
        params = config.parse_database_url(url)
        host = params.host if params.unix_sock is None else str(Path(params.unix_sock).parent)
        figures.update(
            bench_orthanc.read_figures(
                data,
                host=host or "localhost",
                port=params.port,
                database=params.database,
                user=params.user,
                measure=lambda orthanc_port, orthanc_path: http_get_figures(
                    orthanc_port, orthanc_path, {}, "orthanc_205kb"
                ),
            )
        )
    return figures


def multipart_body(data: bytes) -> tuple[bytes, str]:
    """A one-file multipart body for the upload route."""
    from tests.lambda_client import multipart

    return multipart({"file": ("read.dcm", data, "application/dicom")})


def import_ms(module: str, runs: int = 5) -> float:
    """The module's import in a fresh interpreter of the dev venv, from bytecode, as a package has it
    (make package precompiles). With PYTHONDONTWRITEBYTECODE set (some machines set it for everyone)
    Python would compile every module from source at every import, 2-3x the time: the runs here may
    write bytecode, and one run before them writes it."""
    code = f"import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    samples = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env
            ).stdout
        )
        for _ in range(runs + 1)
    ]
    return statistics.median(samples[1:])


PEAK_MEMORY_CODE = """
import json, resource, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, '.')
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() / 2**20
def peak_rss_mb():
    # VmHWM: this process's own peak. ru_maxrss would report at least the bench process's resident
    # size when it forked this one (Linux keeps the larger across fork and exec).
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
from scripts.dev.localgw.events import build_event, LambdaContext
from scripts.dev.localgw.routes import load_routes
from tests.lambda_client import multipart
import functions.upload.handler as upload
data = Path(sys.argv[1]).read_bytes()
route = next(r for r in load_routes(Path('serverless.yml')) if r.function_name == 'upload')
body, ctype = multipart({'file': ('big.png', data, 'image/png')})
event = build_event(method='POST', raw_path='/api/v1/scans/analyze', raw_query='', source_ip='127.0.0.1',
    headers=[('host', 'bench'), ('content-type', ctype), ('authorization', 'Bearer ' + sys.argv[2])],
    body=body, route=route, path_params={})
del body
before = rss_mb()
tracemalloc.start()
result = upload.handler(event, LambdaContext(route, 'bench'))
traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.stop()
print(json.dumps({'status': result['statusCode'], 'rss_before_mb': before,
                  'peak_rss_mb': peak_rss_mb(),
                  'traced_peak_mb': traced_peak}))
"""


def range_figures(api: object, token: str) -> dict[str, object]:
    """A 64 KiB Range GET of a ~4 MB original against the full GET, in process through the images handler."""
    from scripts.dev.localgw.events import LambdaContext, build_event
    from tests.lambda_client import multipart

    huge = ct_image(1600, 11, noise=0.05)
    body, ctype = multipart({"file": ("range.png", huge, "image/png")})
    scan_id = api.request(  # type: ignore[attr-defined]
        "POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype}
    ).json()["scanId"]
    path = f"/api/v1/scans/image/{scan_id}/original"
    route, params = api.gateway.match("GET", path)  # type: ignore[attr-defined]
    from functions.images.handler import handler as images_handler

    def event(extra: list[tuple[str, str]]) -> dict[str, object]:
        headers = [("host", "bench"), ("authorization", f"Bearer {token}"), *extra]
        return build_event(
            method="GET", raw_path=path, raw_query="", body=b"", source_ip="127.0.0.1",
            route=route, path_params=params, headers=headers,
        )  # fmt: skip

    context = LambdaContext(route, "bench")
    full, ranged = event([]), event([("range", "bytes=1048576-1114111")])
    assert images_handler(full, context)["statusCode"] == 200
    assert images_handler(ranged, context)["statusCode"] == 206
    full_ms = statistics.median(timed(lambda: images_handler(full, context), 60))
    range_ms = statistics.median(timed(lambda: images_handler(ranged, context), 300))
    return {
        "range_original_bytes": len(huge),
        "get_full_4mb_p50_ms": round(full_ms, 3),
        "get_range_64kib_p50_ms": round(range_ms, 3),
        "range_vs_full_ratio": round(range_ms / full_ms, 3),
    }


def web_asset_figures() -> dict[str, object]:
    """The web app's first load (web/index.html and every file it fetches), file by file, uncompressed;
    the total also gzipped, as a CDN sends it. The local gateway sends them uncompressed."""
    figures: dict[str, object] = {}
    total = compressed = 0
    for name in web_assets.first_load_files():
        data = (web_assets.WEB_ROOT / name).read_bytes()
        figures[f"web_bytes:{name}"] = len(data)
        total += len(data)
        compressed += len(gzip.compress(data, compresslevel=9))
    figures["web_first_load_files"] = len(figures)
    figures["web_first_load_kb"] = round(total / 1000, 1)
    figures["web_first_load_gzip_kb"] = round(compressed / 1000, 1)
    return figures


_SERVERS = contextlib.ExitStack()
atexit.register(_SERVERS.close)
# What the database-bound rows ran over, said once at the top of the table (bench_server).
TRANSPORT: dict[str, str] = {}


def bench_server() -> str:
    """The server make bench's database-bound rows use, as deployed where it can be: with no
    DATABASE_URL, a private PostgreSQL cluster (fsync on) reached over TCP with TLS, verify-full
    against a certificate authority the bench makes (scripts/bench/tlspg.py), when server binaries
    with TLS are on the machine; else DATABASE_URL's server, or the embedded one over its unix socket.
    Its URL; TRANSPORT says which it is."""
    if TRANSPORT:
        return os.environ["BENCH_SERVER_URL"]
    explicit = bool(os.environ.get("DATABASE_URL", "").strip())
    reason = "DATABASE_URL is set"
    if not explicit:
        try:
            tlspg.tls_binaries()
        except tlspg.NoTlsServer as missing:
            reason = str(missing)
        else:
            server = _SERVERS.enter_context(tlspg.private_server(tls=True, plain=True, durable=True))
            url = os.environ["DATABASE_URL"] = server.tls_url()
            TRANSPORT["db_transport"] = (
                f"TCP + TLS 1.3, sslmode=verify-full against the bench's own CA, to a private PostgreSQL "
                f"cluster (fsync on) at {server.host}:{server.port}"
            )
            os.environ["BENCH_SERVER_URL"] = url
            return url
    url = prepare_database()
    params = config.parse_database_url(url)
    where = params.unix_sock or f"{params.host}:{params.port}"
    kind = "unix socket" if params.unix_sock else f"TCP, sslmode={params.sslmode}"
    TRANSPORT["db_transport"] = f"{kind} to {where} ({reason})"
    os.environ["BENCH_SERVER_URL"] = url
    return url


def bench_database(name: str) -> tuple[str, str]:
    """A fresh database `name` on the bench server, migrated by the migrate function and made this
    process's DATABASE_URL: (the server's URL, the database's). From here on the handlers' log lines
    and metrics (written to stdout, as in Lambda) go to /dev/null; the tables go to REPORT."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the whole run
    server_url = bench_server()
    url = fresh_database(server_url, name)
    os.environ["DATABASE_URL"] = url
    config.get_settings.cache_clear()
    asyncio.set_event_loop(asyncio.new_event_loop())
    from functions.migrate.handler import handler as migrate

    migrate({}, None)
    return server_url, url


def bytea_parameter_figures(runs: int = 40) -> dict[str, object]:
    """Same-run A/B of the upload's bytea parameters: hex text (pg8000's way, before) against binary
    format (shared.db.Connection, now), uploads of distinct uncompressed 512x512 CT slices interleaved."""
    from tests.lambda_client import LambdaClient, multipart

    user_id = db.call(db.create_user, username="bench-ab", password_hash=auth.hash_password("bench-ab"))
    token = db.call(auth.issue_session, user_id=user_id, ttl_seconds=3600).token
    api = LambdaClient()
    binary_types = protocol._BYTES_TYPES
    modes = {"hex": (), "binary": binary_types}
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        for i in range(runs + 2):
            for j, (mode, types) in enumerate(modes.items()):
                protocol._BYTES_TYPES = types  # () sends every bytes parameter as pg8000 does: hex text
                ds = phantom.ct_slice_dataset(512, seed=5000 + 2 * i + j, instance_number=i + 1)
                body, ctype = multipart({"file": ("ab.dcm", phantom.dicom_bytes(ds), "application/dicom")})
                start = time.perf_counter()
                result = api.request(
                    "POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype}
                )
                elapsed = (time.perf_counter() - start) * 1000
                assert result.status == 201, result.body
                if i >= 2:
                    samples[mode].append(elapsed)
    finally:
        protocol._BYTES_TYPES = binary_types
    figures: dict[str, object] = {}
    for mode, values in samples.items():
        figures[f"upload_dicom_bytea_{mode}_p50_ms"] = round(percentile(values, 50), 2)
    return figures


def main() -> int:
    if sys.argv[1:] == ["--web"]:  # the web app's sizes alone, in a second
        print_table(web_asset_figures())
        return 0
    if sys.argv[1:] == ["--bytea-params"]:  # the upload's bytea parameters, hex text vs binary, alone
        bench_database("ctscan_bench_bytea")
        print_table(bytea_parameter_figures())
        db.close_connection()
        return 0
    if sys.argv[1:] == ["--dicomweb"]:  # the DICOMweb section alone (ours and Orthanc's), in a fresh database
        server_url, url = bench_database("ctscan_bench_dicomweb")
        print_table(bench_dicomweb.section(server_url, url))
        db.close_connection()
        return 0
    if sys.argv[1:2] == ["--ingest"]:  # ingest against Orthanc alone: --ingest [our database's name] (~2 min)
        database = sys.argv[2] if sys.argv[2:] else bench_ingest.DATABASE
        print_table(bench_ingest.section(bench_server(), database=database))
        return 0
    if sys.argv[1:] == ["--hostile"]:  # the upload function's peak memory on hostile DICOM files, alone
        print_table(hostile.figures())
        return 0
    if sys.argv[1:] == ["--time-budget"]:  # a frozen database's 503s alone, in a fresh database (~30 s)
        _, url = bench_database("ctscan_bench_time_budget")
        user_id = db.call(db.create_user, username="bench-budget", password_hash=auth.hash_password("bench"))
        token = db.call(auth.issue_session, user_id=user_id, ttl_seconds=3600).token
        print_table(bench_time_budget.time_budget_figures(url, token))
        db.close_connection()
        return 0
    if sys.argv[1:] == ["--profile-upload"]:  # where an upload's milliseconds go (py-spy), alone (~1 min)
        print_table(profile_upload.figures(profile_upload.migrated_database(bench_server())))
        return 0
    if sys.argv[1:] == ["--cold-start"]:  # each function's init from its own zip alone (make package first)
        figures = coldstart.figures(bench_server(), database="ctscan_bench_cold")
        print_table(figures or {"cold_start": "skipped"})
        return 0
    if sys.argv[1:] == ["--transport"]:  # the transports (unix, TCP, TLS, TLS + 1 ms) alone, on a private cluster
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the handlers' log lines, as in bench_database
        asyncio.set_event_loop(asyncio.new_event_loop())
        print_table(bench_transport.section())
        return 0
    if sys.argv[1:] == ["--compression"]:  # the compression section alone, in a fresh database
        _, url = bench_database("ctscan_bench_compression")
        print_table(compression_figures(url))
        db.close_connection()
        return 0
    server_url, url = bench_database("ctscan_bench")
    from scripts.dev.localgw.events import LambdaContext, build_event
    from tests.lambda_client import LambdaClient, multipart

    user_id = db.call(db.create_user, username="bench", password_hash=auth.hash_password("bench"))
    token = db.call(auth.issue_session, user_id=user_id, ttl_seconds=3600).token
    api = LambdaClient()
    figures: dict[str, object] = {**TRANSPORT, **web_asset_figures()}

    # Sequential uploads, each a distinct image (identical bytes would be deduplicated). The CT slice
    # is one phantom (scripts/dev/phantom.py), 512x512, 12 bits stored: as uncompressed DICOM, as JPEG
    # Lossless DICOM and as a 16-bit PNG of the same stored values, each timed in this same run.
    runs = 30
    slices = [phantom.ct_slice_dataset(512, seed=1000 + i, instance_number=i + 1) for i in range(runs + 2)]
    dicom_files = [phantom.dicom_bytes(ds) for ds in slices]
    # The JPEG Lossless copies get SOP Instance UIDs of their own: an owner holds one file per SOP
    # Instance UID since DICOMweb (DUPLICATE_SOP_POLICY=reject refuses other bytes under a held UID).
    jpeg_slices = [copy.deepcopy(ds) for ds in slices]
    for ds in jpeg_slices:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = phantom.uid("jpeg-lossless", ds.SOPInstanceUID)
    makers: dict[str, Callable[[int], bytes]] = {
        "dicom": lambda i: dicom_files[i],
        "dicom_jpeg_lossless": lambda i: phantom.dicom_bytes(jpeg_slices[i], JPEGLosslessSV1),
        "ct_png16": lambda i: phantom.stored_png16(slices[i]),
        "png16": lambda i: ct_image(512, 1000 + i),
        "jpeg": lambda i: ct_image(512, 1000 + i, bits=8, fmt="JPEG"),
    }
    # Interleaved, one of each kind in turn, so that drift (checkpoints, autovacuum, a busy core)
    # weighs on every kind alike and the ratios compare like with like.
    bodies = {
        label: [multipart({"file": (f"{label}.img", make(i), "application/octet-stream")}) for i in range(runs + 2)]
        for label, make in makers.items()
    }
    samples: dict[str, list[float]] = {label: [] for label in makers}
    for i in range(runs + 2):
        for label in makers:
            body, ctype = bodies[label][i]
            start = time.perf_counter()
            result = api.request(
                "POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype}
            )
            elapsed = (time.perf_counter() - start) * 1000
            assert result.status == 201, result.body
            if i >= 2:  # the first two of each are warm-up
                samples[label].append(elapsed)
    for label, values in samples.items():
        figures[f"upload_{label}_p50_ms"] = round(percentile(values, 50), 2)
        figures[f"upload_{label}_p95_ms"] = round(percentile(values, 95), 2)
    figures["upload_dicom_vs_png_p50"] = round(
        figures["upload_dicom_p50_ms"] / figures["upload_ct_png16_p50_ms"],  # type: ignore[operator]
        2,
    )
    figures.update(analysis_step_figures(slices[0]))
    # Ingest against Orthanc (issue 19): both sizes, one connection and 5 clients, on databases of their own.
    figures.update(bench_ingest.section(server_url))
    # Where the upload's milliseconds go (py-spy), and its p50 without its imaging (the floor).
    figures.update(profile_upload.figures(profile_upload.migrated_database(server_url)))

    # Warm GET of a ~512 KB original versus a SELECT of the same bytea alone (binary and hex text).
    big = ct_image(544, 7, noise=0.012)
    body, ctype = multipart({"file": ("half-mb.png", big, "image/png")})
    scan_id = api.request(
        "POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype}
    ).json()["scanId"]
    path = f"/api/v1/scans/image/{scan_id}/original"
    assert api.request("GET", path, token=token).body == big
    found = api.gateway.match("GET", path)
    assert found is not None
    route, params = found
    event = build_event(
        method="GET",
        raw_path=path,
        raw_query="",
        body=b"",
        source_ip="127.0.0.1",
        route=route,
        path_params=params,
        headers=[("host", "bench"), ("authorization", f"Bearer {token}")],
    )
    from functions.images.handler import handler as images_handler

    context = LambdaContext(route, "bench")
    # The handler with its image cache off (every read fetches the bytes), then on (repeated reads
    # fetch only the hash), next to a raw pg8000 SELECT of the same bytes.
    os.environ["IMAGE_CACHE_MB"] = "0"
    config.get_settings.cache_clear()
    image_cache_module.reset()
    assert images_handler(event, context)["statusCode"] == 200
    get_samples = timed(lambda: images_handler(event, context), 300)
    del os.environ["IMAGE_CACHE_MB"]
    config.get_settings.cache_clear()
    image_cache_module.reset()
    assert images_handler(event, context)["statusCode"] == 200
    cached_samples = timed(lambda: images_handler(event, context), 300)
    # Two baselines for the same bytes on one connection (db.connect: one round trip per statement).
    # hex: run(), the bytea as hex text (twice its size) decoded in Python, as pg8000 reads it.
    # binary: run_with_raw_bytes(), the bytea in binary format, as the handler reads it: the fair
    # one, since the handler does that plus the token, the audit row and the response. Interleaved,
    # so drift weighs on both alike.
    select_sql = "SELECT original_image_data FROM scans WHERE id = :id"
    raw = db.connect(config.parse_database_url(url), timeout=30)

    def select_binary() -> list[list[bytes]]:
        return raw.run_with_raw_bytes(select_sql, {"id": scan_id}, column_count=1, raw_column=0)

    assert bytes(raw.run(select_sql, id=scan_id)[0][0]) == big and select_binary()[0][0] == big
    hex_samples: list[float] = []
    binary_samples: list[float] = []
    for _ in range(300):
        hex_samples += timed(lambda: raw.run(select_sql, id=scan_id), 1)
        binary_samples += timed(select_binary, 1)
    raw.close()
    figures["original_bytes"] = len(big)
    figures["warm_get_p50_ms"] = round(statistics.median(get_samples), 3)
    figures["warm_get_cached_p50_ms"] = round(statistics.median(cached_samples), 3)
    figures["raw_select_binary_p50_ms"] = round(statistics.median(binary_samples), 3)
    figures["raw_select_hex_p50_ms"] = round(statistics.median(hex_samples), 3)
    figures["warm_get_ratio"] = round(figures["warm_get_p50_ms"] / figures["raw_select_binary_p50_ms"], 2)  # type: ignore[operator]
    figures["warm_get_vs_hex_ratio"] = round(figures["warm_get_p50_ms"] / figures["raw_select_hex_p50_ms"], 2)  # type: ignore[operator]
    # A Range read against a whole read from PostgreSQL: with the cache off (a 4 MB original would
    # otherwise come from memory), as on every first read.
    os.environ["IMAGE_CACHE_MB"] = "0"
    config.get_settings.cache_clear()
    image_cache_module.reset()
    figures.update(range_figures(api, token))
    del os.environ["IMAGE_CACHE_MB"]
    config.get_settings.cache_clear()
    image_cache_module.reset()

    # Through the local gateway over HTTP, run as `make run` runs it (its own processes): latency on
    # one kept-alive connection, throughput over 16.
    bearer = {"Authorization": f"Bearer {token}"}
    thumbnail = f"/api/v1/scans/image/{scan_id}/thumbnail"
    with gateway_process(url) as port:
        figures.update(http_get_figures(port, thumbnail, bearer, "gateway_thumbnail"))
        original = http_get_figures(port, path, bearer, "gateway_504kb")
    figures.update(original)
    figures["gateway_504kb_mb_per_s"] = round(original["gateway_504kb_rps_16conn"] * len(big) / 1e6, 1)
    figures.update(read_path_figures(api, url, token, server_url))

    # Cold-start import time of each handler module (fresh interpreter, median of 5).
    for name in ("images", "scans", "auth", "upload", "migrate"):
        figures[f"import_{name}_ms"] = round(import_ms(f"functions.{name}.handler"), 1)
    figures["images_import_ms"] = figures["import_images_ms"]
    # Each function's init from its own zip (import and first request), in a database of its own.
    figures.update(coldstart.figures(server_url))

    # PostgreSQL bytes per scan next to the image bytes stored.
    con = db.connect(config.parse_database_url(url), timeout=30)
    con.run("VACUUM ANALYZE scans")
    total, count, image_bytes = con.run(
        "SELECT pg_total_relation_size('scans'), count(*), "
        "sum(octet_length(original_image_data) + octet_length(preview_image_data) "
        "+ octet_length(annotated_image_data) + octet_length(thumbnail_image_data)) FROM scans"
    )[0]
    con.close()
    figures["scans_stored"] = count
    figures["pg_bytes_per_scan"] = round(total / count)
    figures["image_bytes_per_scan"] = round(int(image_bytes) / count)
    figures["bytes_per_scan_ratio"] = round(total / int(image_bytes), 3)

    # Peak memory of a fresh upload process handling a ~4.5 MB file.
    size = 1800
    huge = ct_image(size, 3, noise=0.05)
    while len(huge) > 4_500_000:  # the largest noisy 16-bit slice that fits the limit
        size -= 16
        huge = ct_image(size, 3, noise=0.05)
    tmp = ROOT / ".data" / "bench-4_5mb.png"
    tmp.write_bytes(huge)
    out = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_CODE, str(tmp), token],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": url},
    )
    tmp.unlink()
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    memory = json.loads(out.stdout.strip().splitlines()[-1])
    assert memory["status"] == 201, memory
    figures["big_upload_bytes"] = len(huge)
    figures["big_upload_pixels"] = f"{size}x{size}"
    figures["big_upload_rss_before_mb"] = round(memory["rss_before_mb"], 1)
    figures["big_upload_peak_rss_mb"] = round(memory["peak_rss_mb"], 1)
    figures["big_upload_traced_peak_mb"] = round(memory["traced_peak_mb"], 1)

    # The worst DICOM file of each hostile kind (deflate bomb, huge frame, many fragments) beside a
    # plain CT slice: the upload function's peak memory on each, in a process of its own.
    figures.update(hostile.figures())

    # DICOMweb against Orthanc's plugin: a 300-slice series stored, its metadata, searches and frames
    # read, over HTTP from both servers (after the bytes per scan above: its series adds 300 scans).
    figures.update(bench_dicomweb.section(server_url, url))

    # A frozen database's 503s: how much of the function's time the budget gives it (issue 18).
    figures.update(bench_time_budget.time_budget_figures(url, token))

    # The database-bound requests over each transport, as deployed (TCP, TLS) and with 1 ms of network
    # latency, with their round trips (issue 19): on a private cluster of its own.
    figures.update(bench_transport.section())

    # Compression (issue 10), last: it measures on tables of its own, which it drops.
    figures.update(compression_figures(url))

    print_table(figures)
    RESULTS.write_text(json.dumps({"figures": figures, "targets": TARGETS, "at_least": AT_LEAST}, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}", file=REPORT)
    db.close_connection()
    return 0


def print_table(figures: dict[str, object]) -> None:
    if TRANSPORT and "db_transport" not in figures:
        print(f"database-bound rows: {TRANSPORT['db_transport']}", file=REPORT)
    width = max(len(k) for k in figures)
    print(f"{'figure':<{width}}  value        target", file=REPORT)
    print("-" * (width + 28), file=REPORT)
    for key, value in figures.items():
        target, floor = TARGETS.get(key), AT_LEAST.get(key)
        verdict = ""
        if target is not None:
            verdict = f"<= {target}  {'ok' if float(value) <= target else 'MISSED'}"  # type: ignore[arg-type]
        elif floor is not None:
            verdict = f">= {floor}  {'ok' if float(value) >= floor else 'MISSED'}"  # type: ignore[arg-type]
        print(f"{key:<{width}}  {value!s:<11}  {verdict}", file=REPORT)


if __name__ == "__main__":
    raise SystemExit(main())
