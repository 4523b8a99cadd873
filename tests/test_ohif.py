"""OHIF v3 (@ohif/app from npm, pruned and served by scripts/web/ohif) in Debian's Chromium, opening a
stored CT series through a DICOMweb root: the image is on screen, the arrow keys page through the
slices, a window preset changes the rendering, and every request to the root succeeded.

The browser test runs once per DICOMweb backend (the `backend` fixture). Orthanc with its DICOMweb
plugin stands in until our root (/api/v1/dicomweb) lands; Orthanc is not a dependency of this project,
so its variant runs where Debian's orthanc and orthanc-dicomweb are installed and is skipped (with
the reason, under -ra) elsewhere, CI included. Chromium is another matter: without it the browser
test is skipped on a developer's machine and fails on CI (tests/browser.py). The server tests at the
end need neither: they run everywhere.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import re
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from scripts.bench import orthanc
from scripts.dev import phantom
from scripts.dev.localgw.server import make_server
from scripts.web.ohif import dist, harness
from scripts.web.ohif.harness import OhifProcess, canvas_pixels, shows_an_image, until
from scripts.web.ohif.server import OhifApp, listen, proxied_prefixes, uvicorn_server
from shared import auth, db
from tests.browser import launched_chromium, unavailable
from tests.conftest import ROOT

SCREENSHOTS = ROOT / ".artifacts" / "screenshots"
REQUESTS_LOG = ROOT / ".artifacts" / "ohif-dicomweb-requests.json"
SLICES = 20
OUR_ROOT = "/api/v1/dicomweb"
PASSWORD_HASH = auth.hash_password("ohif harness password")
TRANSFER_SYNTAXES = (JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1, RLELossless, ExplicitVRLittleEndian)
SIZE = 256
# OHIF's slice indicator (bottom right of the viewport): "I:20 (1/20)"; its window (bottom left): "W: 400 L: 40".
SLICE_INDICATOR = re.compile(r"\((\d+)/(\d+)\)")
PRESETS = {"Soft tissue": ("400", "40"), "Lung": ("1500", "-600")}  # OHIF 3.13's CT presets, as labelled


# --- the DICOMweb backends ------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomWebBackend:
    """What the OHIF test needs from a DICOMweb server.

    upstream: the base URL OHIF's server forwards to (http://127.0.0.1:PORT); root: the DICOMweb root
    path on it (no trailing slash); token: a bearer token the root accepts, which OHIF gets as
    ?token= and must send on every request; store: makes Part 10 files visible through the root.
    """

    name: str
    upstream: str
    root: str
    token: str
    store: Callable[[Sequence[bytes]], None]


# "ours" never skips: the gateway and the database are the project's own (a missing Chromium fails
# under CI through unavailable()). OHIF gets a viewer token, as a clinician's browser would.
BACKENDS = ["ours", "orthanc"]


@contextlib.contextmanager
def orthanc_backend() -> Iterator[DicomWebBackend]:
    with orthanc.running_dicomweb() as port:

        def store(files: Sequence[bytes]) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                for data in files:
                    orthanc.store(connection, data)
            finally:
                connection.close()

        # Orthanc checks no token; OHIF must still send it, which the test checks on every request.
        yield DicomWebBackend("orthanc", f"http://127.0.0.1:{port}", orthanc.DICOMWEB_ROOT, "ohif-test-token", store)


@contextlib.contextmanager
def our_backend() -> Iterator[DicomWebBackend]:
    """Our DICOMweb root behind the local gateway (serverless.yml's routes, in a thread) on the test
    database; a user of its own, stored through STOW-RS with a session token; OHIF gets a viewer token."""
    server = make_server("127.0.0.1", 0, serverless_yml=ROOT / "serverless.yml", containers=2)
    server.access_log = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        user_id = db.call(db.create_user, username=f"ohif_{secrets.token_hex(4)}", password_hash=PASSWORD_HASH)
        session = db.call(auth.issue_session, user_id=user_id, ttl_seconds=3600).token
        minted = requests.post(
            f"{upstream}/api/v1/auth/viewer-tokens", headers={"Authorization": f"Bearer {session}"}, timeout=30
        )
        minted.raise_for_status()

        def store(files: Sequence[bytes]) -> None:
            web = DICOMwebClient(url=f"{upstream}{OUR_ROOT}", headers={"Authorization": f"Bearer {session}"})
            answer = web.store_instances(datasets=[pydicom.dcmread(io.BytesIO(data)) for data in files])
            assert len(answer.ReferencedSOPSequence) == len(files)

        yield DicomWebBackend("ours", upstream, OUR_ROOT, minted.json()["token"], store)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[DicomWebBackend]:
    if request.param == "ours":
        request.getfixturevalue("database_url")  # the test database, migrated, in DATABASE_URL
        with our_backend() as made:
            yield made
    elif request.param == "orthanc":
        if not orthanc.dicomweb_available():
            pytest.skip(
                "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb): "
                "the reference backend is optional, CI included; our own root is not"
            )
        with orthanc_backend() as made:
            yield made
    else:
        raise AssertionError(f"no fixture for the backend {request.param!r}")


@dataclass(frozen=True)
class StoredSeries:
    study_uid: str
    series_uid: str
    instance_uids: tuple[str, ...]


@pytest.fixture(scope="module")
def stored(backend: DicomWebBackend) -> StoredSeries:
    series = phantom.ct_series(SLICES, size=SIZE, seed=23)
    for ds in series:  # what a study list shows, and a patient: OHIF then also asks for the patient's priors
        ds.PatientID, ds.PatientName = "OHIF-HARNESS", "Harness^Phantom"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", "ACC-OHIF-1"
        ds.StudyDescription, ds.SeriesDescription, ds.SeriesNumber = "OHIF harness", "Phantom axial", 1
    # Compressed slices too, each kind a different decoder in OHIF's image loader (JPEG-LS and JPEG 2000
    # are emscripten builds that need 'unsafe-eval' in the CSP), the rest native as most uploads are.
    backend.store(
        [phantom.dicom_bytes(ds, TRANSFER_SYNTAXES[i % len(TRANSFER_SYNTAXES)]) for i, ds in enumerate(series)]
    )
    return StoredSeries(
        str(series[0].StudyInstanceUID),
        str(series[0].SeriesInstanceUID),
        tuple(str(ds.SOPInstanceUID) for ds in series),
    )


# --- OHIF's server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_ohif() -> Path:
    try:
        return dist.prepare()
    except RuntimeError as problem:  # no npm, or no registry: like a missing browser
        unavailable(f"OHIF {dist.VERSION} could not be fetched: {problem}")


@pytest.fixture(scope="module")
def ohif(backend: DicomWebBackend, prepared_ohif: Path) -> Iterator[OhifProcess]:  # a skipped backend fetches nothing
    with harness.running(backend.upstream, backend.root) as server:
        yield server


# --- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as launched:
        yield launched


def overlay(page: Any, corner: str) -> str:
    return " ".join(str(page.locator(f'[data-cy="viewport-overlay-{corner}"]').inner_text()).split())


def slice_position(page: Any) -> tuple[int, int]:
    found = SLICE_INDICATOR.search(overlay(page, "bottom-right"))
    assert found, overlay(page, "bottom-right")
    return int(found.group(1)), int(found.group(2))


def templated(path: str, stored: StoredSeries, root: str) -> str:
    """A request path with the series' UIDs named: /studies/{study}/series/{series}/..."""
    path = path.removeprefix(root)
    for uid, name in [(stored.study_uid, "{study}"), (stored.series_uid, "{series}")]:
        path = path.replace(uid, name)
    for uid in stored.instance_uids:
        path = path.replace(uid, "{instance}")
    return path


@pytest.mark.slow
def test_ohif_opens_the_stored_series_pages_through_it_and_windows_it(
    backend: DicomWebBackend, stored: StoredSeries, ohif: OhifProcess, browser: Any
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 860})
    context.set_default_timeout(30_000)
    viewer = harness.Viewer(context.new_page(), ohif.url, backend.root)
    page = viewer.page
    try:
        # Given the stored series, when OHIF opens it with the token in the URL
        first_drawn = viewer.open(stored.study_uid, backend.token)
        print(f"\nOHIF {dist.VERSION} on {backend.name}: first image {viewer.first_image_ms:.0f} ms after navigation")
        # (the figure the bench reports counts only if the frame it timed is an image, not a blank canvas)
        assert shows_an_image(first_drawn)

        # OHIF's one-time tour and its "investigational use" notice cover the viewport: dismiss them.
        page.get_by_role("button", name="Skip all").click()
        page.get_by_role("button", name="Confirm and hide").click()
        expect(page.get_by_role("button", name="Confirm and hide")).to_have_count(0)

        # (a) the image is on screen, the token has left the address bar
        until(page, lambda: shows_an_image(canvas_pixels(page)))
        assert "token=" not in page.url, page.url
        first_slice = slice_position(page)
        assert first_slice[1] == SLICES, overlay(page, "bottom-right")
        first = canvas_pixels(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"ohif-{backend.name}-01-opened.png")

        # (b) Down shows the next slice, Up the first again
        page.locator(".cornerstone-canvas").hover()
        page.keyboard.press("ArrowDown")
        until(page, lambda: slice_position(page) == (first_slice[0] + 1, SLICES))
        until(page, lambda: not np.array_equal(canvas_pixels(page), first))
        assert shows_an_image(canvas_pixels(page))
        page.keyboard.press("ArrowUp")
        until(page, lambda: slice_position(page) == first_slice)
        until(page, lambda: np.array_equal(canvas_pixels(page), first))

        # (c) each window preset re-renders the slice: soft tissue greys the body, lung whitens it
        seen = [first]
        for preset, (width, level) in PRESETS.items():
            page.locator('[data-cy="windowLevelMenu-btn"]').click()
            page.get_by_text("Modality Window Presets", exact=True).click()
            page.get_by_text(preset, exact=True).click()
            shown = f"W: {width} L: {level}"
            until(page, lambda: overlay(page, "bottom-left") == shown)  # noqa: B023 (used at once, in this pass)
            until(page, lambda: all(not np.array_equal(canvas_pixels(page), before) for before in seen))
            seen.append(canvas_pixels(page))
            page.screenshot(
                path=SCREENSHOTS / f"ohif-{backend.name}-0{len(seen)}-{preset.lower().replace(' ', '-')}.png"
            )
        soft_tissue, lung = seen[1], seen[2]
        height, width = lung.shape
        body = (slice(height // 3, 2 * height // 3), slice(width // 3, 2 * width // 3))  # mostly soft tissue
        assert lung[body].mean() > soft_tissue[body].mean() + 40

        # (d) every request to the DICOMweb root succeeded and carried the token; every slice was fetched
        until(page, lambda: len(viewer.fetched_instances()) >= SLICES)
        assert viewer.dicomweb_failures() == []
        assert {e.authorization for e in viewer.exchanges} == {f"Bearer {backend.token}"}
        assert viewer.fetched_instances() == set(stored.instance_uids)
        assert viewer.own_failures == []
        assert viewer.csp_violations() == []
        assert viewer.errors == []
    finally:
        context.close()
        write_requests_log(viewer.exchanges, stored, backend, viewer.first_image_ms)


def write_requests_log(
    exchanges: list[harness.Exchange], stored: StoredSeries, backend: DicomWebBackend, first_pixels_ms: float | None
) -> None:
    """.artifacts/ohif-dicomweb-requests.json and the test's output: what OHIF asked the root, by kind."""
    kinds: dict[tuple[str, str, str], int] = {}
    for exchange in exchanges:
        query = re.sub(r"=[0-9.]{20,}", "={uid}", exchange.query)
        key = (
            exchange.method,
            templated(exchange.path, stored, backend.root) + (f"?{query}" if query else ""),
            exchange.accept,
        )
        kinds[key] = kinds.get(key, 0) + 1
    listed = [{"method": m, "path": p, "accept": a, "count": n} for (m, p, a), n in kinds.items()]
    REQUESTS_LOG.parent.mkdir(parents=True, exist_ok=True)
    report = {"backend": backend.name, "root": backend.root, "firstImageMs": first_pixels_ms, "requests": listed}
    REQUESTS_LOG.write_text(json.dumps(report, indent=2))
    for entry in listed:
        print(f"{entry['count']:>3} x {entry['method']} {entry['path']}  Accept: {entry['accept']}")


# --- the server, without a browser: a fake dist and an upstream that echoes ------------------------


@pytest.fixture
def fake_dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(
        b'<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
        b'<script defer src="/app.bundle.0123456789abcdef.js"></script></head><body></body></html>'
    )
    (root / "app.bundle.0123456789abcdef.js").write_bytes(b"console.log(1)")
    (root / "0123456789abcdef.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00")
    (root / "app.bundle.css").write_bytes(b"body{}")
    (root / "assets" / "favicon.ico").write_bytes(b"\x00\x00\x01\x00")
    (root / dist.STAMP).write_text("{}")
    return root


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class EchoUpstream(ThreadingHTTPServer):
    """Records each request; answers 207 with every byte value and a few headers to pass back."""

    seen: list[Seen]
    answer = bytes(range(256)) * 64 + b"\r\n--boundary--\r\n"


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoUpstream

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
        self.send_response(207)
        self.send_header("Content-Type", 'multipart/related; type="application/octet-stream"; boundary=boundary')
        self.send_header("Content-Length", str(len(self.server.answer)))
        self.send_header("X-Upstream", "yes")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.server.answer)
        if "hang-up" in self.path:  # close without saying so, as an idle keep-alive timeout does
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echo_upstream() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream(("127.0.0.1", 0), EchoHandler)
    upstream.seen = []
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    yield upstream
    upstream.shutdown()
    upstream.server_close()


@contextlib.contextmanager
def serving(app: OhifApp) -> Iterator[int]:
    sock = listen("127.0.0.1", 0)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        app.upstream.close()


def fetch(port: int, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, target, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name.lower()), None)


def test_ohif_app_config_points_qido_and_wado_at_the_root() -> None:
    config = dist.app_config("/api/v1/dicomweb")
    for setting in [
        'qidoRoot: "/api/v1/dicomweb"',
        'wadoRoot: "/api/v1/dicomweb"',
        "routerBasename: null",
        "extensions: []",
        "modes: []",
        "imageRendering: 'wadors'",
        "thumbnailRendering: 'wadors'",
        "enableStudyLazyLoad: true",
        "supportsFuzzyMatching: false",
        "supportsWildcard: true",
        "omitQuotationForMultipartRequest: true",
        "bulkDataURI: { enabled: true }",
    ]:
        assert setting in config, setting
    for bad in ["api/v1/dicomweb", "/api/v1/dicomweb/", "http://host/dicomweb"]:
        with pytest.raises(ValueError):
            dist.app_config(bad)


def test_ohif_proxied_prefixes_are_api_and_the_roots_first_segment() -> None:
    assert proxied_prefixes("/api/v1/dicomweb") == ("/api/",)
    assert proxied_prefixes("/dicom-web") == ("/api/", "/dicom-web/")
    assert proxied_prefixes("/dicom-web", ("wado", "/api/")) == ("/api/", "/dicom-web/", "/wado/")


def test_ohif_server_serves_the_viewer_with_spa_fallback_its_config_and_no_stray_files(
    fake_dist: Path, echo_upstream: EchoUpstream
) -> None:
    upstream = f"http://127.0.0.1:{echo_upstream.server_address[1]}"
    app = OhifApp(fake_dist, dicomweb_root="/dicom-web", upstream=upstream, prefixes=("/api/",), access_log=False)
    with serving(app) as port:
        index = (fake_dist / "index.html").read_bytes()
        for route in ["/", "/viewer?StudyInstanceUIDs=1.2.3&token=x", "/viewer/dicomweb", "/local", "/viewer/1.2.3"]:
            status, headers, body = fetch(port, "GET", route)
            assert (status, body) == (200, index), route
            assert header(headers, "Content-Type") == "text/html; charset=utf-8"
            assert header(headers, "Cache-Control") == "no-cache"
        policy = header(headers, "Content-Security-Policy") or ""
        inline = base64.b64encode(hashlib.sha256(b'window.PUBLIC_URL="/"').digest()).decode()
        assert f"'sha256-{inline}'" in policy and "'unsafe-inline'" not in policy.split("style-src")[0]
        assert header(headers, "Referrer-Policy") == "no-referrer"  # the first URL holds ?token=
        assert header(headers, "Cross-Origin-Embedder-Policy") == "require-corp"

        status, headers, body = fetch(port, "GET", "/app-config.js")
        assert status == 200 and body == dist.app_config("/dicom-web").encode()
        assert header(headers, "Content-Type") == "text/javascript; charset=utf-8"

        status, headers, body = fetch(port, "GET", "/app.bundle.0123456789abcdef.js")
        assert (status, body) == (200, b"console.log(1)")
        assert header(headers, "Cache-Control") == "public, max-age=31536000, immutable"
        etag = header(headers, "ETag") or ""
        assert fetch(port, "GET", "/app.bundle.0123456789abcdef.js", {"If-None-Match": etag})[0] == 304
        status, headers, _ = fetch(port, "GET", "/0123456789abcdef.wasm")
        assert (status, header(headers, "Content-Type")) == (200, "application/wasm")
        assert fetch(port, "HEAD", "/assets/favicon.ico")[2] == b""

        # A file that is not there (pruned) is a 404, not index.html under a script's name.
        for missing in ["/ort/ort.min.js", "/dicom-microscopy-viewer/x.wasm", "/" + dist.STAMP, "/../index.html"]:
            assert fetch(port, "GET", missing)[0] == 404, missing
        assert fetch(port, "POST", "/viewer")[0] == 405
    assert echo_upstream.seen == []


def test_ohif_server_forwards_api_and_dicomweb_requests_byte_for_byte(
    fake_dist: Path, echo_upstream: EchoUpstream
) -> None:
    upstream = f"http://127.0.0.1:{echo_upstream.server_address[1]}"
    app = OhifApp(
        fake_dist,
        dicomweb_root="/dicom-web",
        upstream=upstream,
        prefixes=proxied_prefixes("/dicom-web"),
        access_log=False,
    )
    body = bytes(range(255, -1, -1)) * 100
    with serving(app) as port:
        # When STOW-like POST goes through, with a query, the token and a multipart Accept
        target = "/api/v1/dicomweb/studies?limit=101&includefield=00081030%2C00080060"
        sent = {
            "Authorization": "Bearer t0k3n",
            "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*",
            "Content-Type": "multipart/related; type=application/dicom; boundary=x",
            "Connection": "keep-alive",
        }
        status, headers, answer = fetch(port, "POST", target, sent, body)
        # Then the upstream got exactly that, and the browser gets exactly the upstream's answer
        seen = echo_upstream.seen[-1]
        assert (seen.method, seen.target, seen.body) == ("POST", target, body)
        got = {n.lower(): v for n, v in seen.headers}
        for name in ["Authorization", "Accept", "Content-Type"]:
            assert got[name.lower()] == sent[name], name
        assert got["host"] == f"127.0.0.1:{echo_upstream.server_address[1]}"  # the upstream's own name
        assert got["forwarded"] == f"for=127.0.0.1;host=127.0.0.1:{port};proto=http"
        assert got["content-length"] == str(len(body)) and "connection" not in got
        assert (status, answer) == (207, EchoUpstream.answer)
        assert header(headers, "X-Upstream") == "yes" and header(headers, "Keep-Alive") is None
        assert [v for n, v in headers if n.lower() == "set-cookie"] == ["a=1", "b=2"]
        assert (
            header(headers, "Content-Type") == 'multipart/related; type="application/octet-stream"; boundary=boundary'
        )

        # Orthanc's root (/dicom-web/) too; GET and HEAD, over the kept-alive upstream connection
        status, _, answer = fetch(port, "GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1")
        assert (status, answer) == (207, EchoUpstream.answer)
        assert echo_upstream.seen[-1].target == "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1"
        status, headers, answer = fetch(port, "HEAD", "/dicom-web/studies")
        assert (status, answer, header(headers, "Content-Length")) == (207, b"", str(len(EchoUpstream.answer)))

        # A kept-alive connection the upstream dropped in silence is not reused, even for a POST
        assert fetch(port, "GET", "/api/hang-up")[0] == 207
        time.sleep(0.2)
        status, _, answer = fetch(port, "POST", "/api/v1/dicomweb/studies", {"Content-Type": "x/y"}, b"once")
        assert (status, answer) == (207, EchoUpstream.answer)
        assert [seen.body for seen in echo_upstream.seen if seen.body == b"once"] == [b"once"]

    # An upstream that is gone is a 502 in the project's error shape.
    echo_upstream.shutdown()
    echo_upstream.server_close()
    with serving(app) as port:
        status, _, answer = fetch(port, "GET", "/api/v1/dicomweb/studies")
        assert status == 502 and json.loads(answer)["error"]["code"] == "bad_gateway"


def test_ohif_server_adds_its_token_only_where_the_browser_sent_none(
    fake_dist: Path, echo_upstream: EchoUpstream
) -> None:
    upstream = f"http://127.0.0.1:{echo_upstream.server_address[1]}"
    app = OhifApp(fake_dist, dicomweb_root="/api/v1/dicomweb", upstream=upstream, prefixes=("/api/",), token="dev")
    app.access_log = False
    with serving(app) as port:
        fetch(port, "GET", "/api/v1/dicomweb/studies")
        fetch(port, "GET", "/api/v1/dicomweb/studies", {"Authorization": "Bearer own"})
    sent = [dict((n.lower(), v) for n, v in seen.headers)["authorization"] for seen in echo_upstream.seen]
    assert sent == ["Bearer dev", "Bearer own"]


def test_ohif_dist_unpacks_only_what_a_ct_viewer_loads(tmp_path: Path) -> None:
    tarball = tmp_path / dist.TARBALL
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in [
            ("package/LICENSE", b"MIT"),
            ("package/package.json", b"{}"),
            ("package/dist/index.html", b"<html>"),
            ("package/dist/app-config.js", b"window.config = {demo: true}"),
            ("package/dist/89.bundle.0123456789abcdef.js", b"js"),
            ("package/dist/ort/ort.wasm", b"big"),
            ("package/dist/dicom-microscopy-viewer/viewer.js", b"big"),
            ("package/dist/customizations/tools/ctPresets.jsonc", b"{}"),
            ("package/dist/sw.js", b"sw"),
            ("package/dist/sub/kept.css", b"css"),
        ]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        link = tarfile.TarInfo("package/dist/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    target = tmp_path / "out"
    target.mkdir()
    dist._unpack(tarball, target)
    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert kept == ["89.bundle.0123456789abcdef.js", "LICENSE", "index.html", "sub/kept.css"]


def test_ohif_dist_is_prepared_only_with_a_stamp_for_this_version_and_prune_list(tmp_path: Path) -> None:
    folder = tmp_path / dist.VERSION
    folder.mkdir()
    assert dist.prepared(tmp_path) is None
    (folder / dist.STAMP).write_text(json.dumps({**dist._stamp(), "pruned": ["ort/"]}))
    assert dist.prepared(tmp_path) is None  # a different prune list: prepare again
    (folder / dist.STAMP).write_text(json.dumps(dist._stamp()))
    assert dist.prepared(tmp_path) == folder
