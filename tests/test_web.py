"""The web app in a real browser: Playwright driving Debian's Chromium against `make run`'s entry point
(scripts/dev/run.py: the local gateway and its functions) on a fresh database. Each step is checked on
the screen and in the API's state, and photographed into .artifacts/screenshots/.

Without Chromium these tests are skipped with how to get it, except on CI (CI set), where they fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from scripts.dev import phantom
from shared import auth, db
from tests import images
from tests.browser import launched_chromium
from tests.conftest import ROOT, admin_connection
from tests.lambda_client import multipart

pytestmark = pytest.mark.slow

SCREENSHOTS = ROOT / ".artifacts" / "screenshots"
PASSWORD = "a long test passphrase"
# The gateway's access log line: "GET /api/v1/scans/image/<id>/<type> <status> <ms>ms" (no query string)
IMAGE_READ = re.compile(r"\bGET /api/v1/scans/image/(scan_[\w-]+)/(original|preview|annotated|thumbnail) (\d{3}) ")
ANALYZE_LIMIT = 4_500_000  # bytes: a larger file goes through the images bucket (web/js/api.js)
IMAGES_REGION = "eu-central-1"
FIRST_LOAD_LIMIT = 150_000  # bytes transferred: the page, its scripts and styles, config.json, the icon


# The gateway's first line names the port it bound (PORT=0: the system's choice, made atomically at
# bind time; a port probed free beforehand may be taken by the time the gateway binds it).
BANNER = re.compile(r"^Local gateway on http://127\.0\.0\.1:(\d+)")


# --- the service ----------------------------------------------------------------------------------


@dataclass
class Service:
    """scripts/dev/run.py in a subprocess on a database of its own; its output (the gateway's access
    log among it) is kept line by line."""

    port: int
    process: subprocess.Popen[str]
    database_url: str
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def request(
        self, method: str, path: str, *, token: str | None = None, body: bytes = b"", content_type: str = ""
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def log_in(self, username: str) -> str:
        body = json.dumps({"username": username, "password": PASSWORD}).encode()
        status, answer = self.request("POST", "/api/v1/auth/sessions", body=body, content_type="application/json")
        assert status == 201, answer
        return str(answer["token"])

    def upload(self, token: str, filename: str, data: bytes) -> tuple[int, Any]:
        body, ctype = multipart({"file": (filename, data, "application/octet-stream")})
        return self.request("POST", "/api/v1/scans/analyze", token=token, body=body, content_type=ctype)

    def scans(self, token: str) -> list[dict[str, Any]]:
        status, page = self.request("GET", "/api/v1/scans?limit=100", token=token)
        assert status == 200, page
        return list(page["items"])

    def create_user(self, username: str) -> None:
        con = admin_connection(self.database_url)
        try:
            db.create_user(con, username=username, password_hash=auth.hash_password(PASSWORD))
        finally:
            con.close()

    def request_headers(self, path: str) -> dict[str, str]:
        """The headers of a GET of path (lower-case names)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return {name.lower(): value for name, value in response.getheaders()}
        finally:
            conn.close()

    def follow(self, url: str, *, expect_redirect_to: str) -> bytes:
        """The body of a GET of url (one of ours), which answers with a 302 to expect_redirect_to."""
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("127.0.0.1", self.port), url
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", f"{parts.path}?{parts.query}")
            response = conn.getresponse()
            response.read()
            location = response.getheader("Location") or ""
        finally:
            conn.close()
        assert response.status == 302 and location.startswith(expect_redirect_to + "/"), (response.status, location)
        target = urlsplit(location)
        conn = http.client.HTTPConnection(target.netloc, timeout=60)
        try:
            conn.request("GET", f"{target.path}?{target.query}")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, body[:300]
        return body

    def image_reads_since(self, mark: int) -> list[tuple[str, str, int]]:
        """(scan id, image type, status) of each image request the gateway logged after line `mark`."""
        return [
            (read.group(1), read.group(2), int(read.group(3)))
            for line in self.lines[mark:]
            for read in IMAGE_READ.finditer(line)
        ]


@pytest.fixture(scope="module")
def service(fresh_database: Callable[..., str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(fresh_database("ctscan_web"), tmp_path_factory.mktemp("web-keys")) as svc:
        yield svc


@contextlib.contextmanager
def running_service(url: str, keys: Path, extra_env: dict[str, str] | None = None) -> Iterator[Service]:
    """scripts/dev/run.py on the database at url, with this environment added (an images bucket)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PORT": "0",
        "DEV_PASSWORD": PASSWORD,
        "IMAGE_URL_KEYS_FILE": str(keys / "keys.json"),
        # A day: the signed URLs of one test stay the same, so its second visit can hit the cache.
        "IMAGE_URL_TTL_SECONDS": "86400",
        **(extra_env or {}),
    }
    # Line-buffered output (the gateway sets it up): with PYTHONUNBUFFERED a print() is two writes,
    # and the two worker processes' lines would interleave in the pipe.
    env.pop("PYTHONUNBUFFERED", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.dev.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    svc = Service(0, process, url)
    started = threading.Event()

    def drain() -> None:  # read everything, or a full pipe would stall the gateway
        assert process.stdout is not None
        for line in process.stdout:
            svc.lines.append(line.rstrip("\n"))
            bound = BANNER.match(line)
            if bound:
                svc.port = int(bound.group(1))
                started.set()
        started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert started.wait(90) and process.poll() is None, "service did not start:\n" + "\n".join(svc.lines)
        yield svc
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


# --- the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as launched:
        yield launched


@dataclass
class Tab:
    """A page of a fresh browser context, its uncaught errors, and a camera."""

    page: Any
    name: str
    errors: list[str]
    shots: int = 0

    def shot(self, step: str) -> Path:
        """A full-page screenshot, .artifacts/screenshots/<test>-NN-<step>.png (a run replaces the last's)."""
        if self.shots == 0:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for old in SCREENSHOTS.glob(f"{self.name}-*.png"):
                old.unlink()
        self.shots += 1
        path = SCREENSHOTS / f"{self.name}-{self.shots:02d}-{step}.png"
        self.page.screenshot(path=path, full_page=True)
        return path


@pytest.fixture
def tab(browser: Any, request: pytest.FixtureRequest) -> Iterator[Tab]:
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A refused upload or a 401 is logged by Chromium as a failed resource: expected; anything else is not.
    page.on(
        "console",
        lambda message: (
            message.type == "error"
            and not message.text.startswith("Failed to load resource")
            and errors.append(message.text)
        ),
    )
    # Screenshots are named by the test's first words: test_web_clinic_flow_… -> clinic-flow-01-login.png
    yield Tab(page, "-".join(request.node.name.removeprefix("test_web_").split("_")[:2]), errors)
    context.close()
    assert errors == [], errors


def log_in(tab: Tab, service: Service, username: str) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(service.url)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    expect(page.get_by_role("heading", name="Scans", exact=True)).to_be_focused()


def session_token(tab: Tab) -> str:
    stored = tab.page.evaluate("sessionStorage.getItem('ctscan.session')")
    assert stored, "no session in sessionStorage"
    assert tab.page.evaluate("localStorage.length") == 0
    return str(json.loads(stored)["token"])


def until(page: Any, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a condition on what Playwright's events collect (they arrive while Playwright waits)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        page.wait_for_timeout(20)


# --- test files -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("web-files")
    made = {
        "chest_ct.dcm": phantom.dicom_bytes(phantom.ct_slice_dataset(256, seed=3)),
        "knee.png": images.png8(
            size=256, seed=5, regions=(images.Region(70, 90, 20, 15), images.Region(150, 130, 12, 25))
        ),
        "notes.txt": b"Referral notes, not an image.\n",
    }
    paths = {}
    for name, data in made.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    series = folder / "series"
    series.mkdir()
    for number, dataset in enumerate(phantom.ct_series(3, size=128), start=1):
        (series / f"slice_{number:03d}.dcm").write_bytes(phantom.dicom_bytes(dataset))
    paths["series"] = series
    return paths


@pytest.fixture(scope="module")
def large_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT slice of 1600 x 1600 uncompressed 16-bit pixels: past what /analyze takes (4.5 MB)."""
    path = tmp_path_factory.mktemp("web-large") / "large_ct.dcm"
    path.write_bytes(phantom.dicom_bytes(phantom.ct_slice_dataset(1600, seed=11)))
    assert path.stat().st_size > ANALYZE_LIMIT
    return path


def dropped(page: Any, path: Path) -> Any:
    """A DataTransfer holding one file, as a drop from the desktop brings it."""
    return page.evaluate_handle(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name));
            return transfer;
        }""",
        [path.name, list(path.read_bytes())],
    )


def upload_row(page: Any, filename: str) -> Any:
    return page.get_by_role("list", name="Uploads").get_by_role("listitem").filter(has_text=filename)


def canvas_spread(page: Any) -> int:
    """The difference between the brightest and darkest grey on the viewer's canvas (0: blank)."""
    return int(
        page.evaluate(
            """() => {
                const canvas = document.querySelector('.viewport canvas');
                if (!canvas || !canvas.width) return 0;
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                let low = 255, high = 0;
                for (let i = 0; i < data.length; i += 4) {
                    low = Math.min(low, data[i]);
                    high = Math.max(high, data[i]);
                }
                return high - low;
            }"""
        )
    )


# --- the tests ------------------------------------------------------------------------------------


def test_web_clinic_flow_from_login_to_logout(tab: Tab, service: Service, files: dict[str, Path]) -> None:
    from playwright.sync_api import expect

    page = tab.page
    # Log in: a wrong password shows the API's message in an alert, the right one the library
    page.goto(service.url)
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_label("Username")).to_be_focused()
    page.get_by_label("Username").fill("dev")
    page.get_by_label("Password").fill("not the password")
    tab.shot("login")
    page.get_by_role("button", name="Log in").click()
    status, refused = service.request(
        "POST",
        "/api/v1/auth/sessions",
        body=json.dumps({"username": "dev", "password": "not the password"}).encode(),
        content_type="application/json",
    )
    assert status == 401
    expect(page.get_by_role("alert")).to_have_text(refused["error"]["message"])
    tab.shot("login-refused")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    expect(page.get_by_text("No scans yet")).to_be_visible()
    token = session_token(tab)

    # Upload a CT slice, a PNG and a file that is not an image: two stored, one rejected with the API's message
    page.get_by_label("Upload scans").set_input_files([files["chest_ct.dcm"], files["knee.png"], files["notes.txt"]])
    status, rejected = service.upload(token, "notes.txt", files["notes.txt"].read_bytes())
    assert status == 422
    expect(upload_row(page, "notes.txt").get_by_role("alert")).to_have_text(f"Rejected: {rejected['error']['message']}")
    overall = page.get_by_label("All uploads finished: 3 of 3 files", exact=False)
    # Done: the list folds down to the rejected file, named in the summary too, so the library shows
    expect(overall).to_have_accessible_name(re.compile(r"1 rejected: notes\.txt$"))
    expect(page.get_by_role("list", name="Uploads").get_by_role("listitem")).to_have_count(1)
    page.get_by_role("button", name="Show all 3 uploads").click()
    rows = page.get_by_role("list", name="Uploads").get_by_role("listitem")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("notes.txt")  # rejected first
    expect(upload_row(page, "chest_ct.dcm")).to_contain_text("Stored")
    expect(upload_row(page, "knee.png")).to_contain_text("Stored")
    total = sum(files[n].stat().st_size for n in ("chest_ct.dcm", "knee.png", "notes.txt"))
    expect(overall).to_have_js_property("max", total)
    expect(overall).to_have_js_property("value", total)
    expect(upload_row(page, "knee.png").get_by_role("progressbar")).to_have_accessible_name("Upload of knee.png")
    stored = {scan["filename"]: scan for scan in service.scans(token)}
    assert sorted(stored) == ["chest_ct.dcm", "knee.png"]
    # The thumbnails: the DICOM slice in its patient's study, the PNG among the Images; links named by
    # the file, holding an image whose alt is the file name
    tiles = page.locator(".grid a")
    expect(tiles).to_have_count(2)
    for name in ("chest_ct.dcm", "knee.png"):
        tile = page.get_by_role("link", name=name)
        expect(tile.get_by_role("img")).to_have_attribute("alt", name)
        expect(tile.get_by_role("img")).to_have_attribute("src", stored[name]["thumbnailUrl"])
    studies = page.get_by_role("region", name="Patients and studies")
    expect(studies.get_by_role("link", name="chest_ct.dcm")).to_be_visible()
    expect(studies.get_by_role("link", name="chest_ct.dcm")).to_have_accessible_name(re.compile(r"dense regions?,"))
    expect(
        page.get_by_role("region", name=re.compile("^Images")).get_by_role("link", name="knee.png")
    ).to_have_accessible_name(re.compile(r"^knee\.png, PNG, 2 bright regions,"))
    tab.shot("uploaded")

    # The same PNG again: shown as a duplicate, nothing new stored
    page.get_by_label("Upload scans").set_input_files(files["knee.png"])
    expect(page.get_by_label("All uploads finished: 1 of 1 file", exact=False)).to_be_visible()
    page.get_by_role("button", name="Show all 1 upload").click()
    expect(upload_row(page, "knee.png")).to_contain_text("Duplicate: already stored")
    assert len(service.scans(token)) == 2
    expect(tiles).to_have_count(2)
    tab.shot("duplicate")

    # A series folder: three slices, one tile that opens as a stack
    page.get_by_label("Upload a folder").set_input_files(files["series"])
    series_tile = page.get_by_role("link", name="Series of 3 slices")
    expect(series_tile).to_be_visible()
    expect(series_tile).to_have_accessible_name(re.compile("slice_001.dcm to slice_003.dcm"))
    expect(series_tile.get_by_role("img")).to_have_attribute("alt", "slice_002.dcm")
    assert len(service.scans(token)) == 5
    tab.shot("series-uploaded")

    # Open the CT slice: drawn from its pixels, and its dense regions as the API has them
    page.get_by_role("link", name="chest_ct.dcm").click()
    scan = service.request("GET", f"/api/v1/scans/{stored['chest_ct.dcm']['scanId']}", token=token)[1]
    expect(page.get_by_role("heading", name="chest_ct.dcm", level=1)).to_be_focused()
    image = page.get_by_role("img", name="chest_ct.dcm: W 400.0 / L 40.0", exact=True)
    expect(image).to_be_visible()
    until(page, lambda: canvas_spread(page) > 100)  # painted: the phantom's air, tissue and bone
    findings = scan["results"]["findings"]
    assert len(findings) >= 2, "the phantom has dense discs"
    table = page.get_by_role("table", name=re.compile(r"^Dense regions \(≥ 300\.0 HU\)"))
    expect(table.locator("thead th")).to_have_text(["#", "Region", "Area (mm²)", "Mean HU", "Max HU"])
    expect(table.locator("tbody tr")).to_have_count(len(findings))
    for row, finding in zip(table.locator("tbody tr").all(), findings, strict=True):
        expect(row.locator("td")).to_have_text(
            [
                str(finding["id"]),
                finding["label"],
                f"{finding['areaMm2']:,.1f}",
                f"{finding['meanHu']:,.1f}",
                f"{finding['maxHu']:,.1f}",
            ]
        )
    expect(page.locator(".overlay .box")).to_have_count(len(findings))
    details = page.get_by_role("region", name="Details")
    expect(details).to_contain_text(f"{files['chest_ct.dcm'].stat().st_size / 1000:,.1f} KB")
    expect(details).to_contain_text("256 \N{MULTIPLICATION SIGN} 256 px")
    expect(details).to_contain_text("CT (DICOM)")
    # A finding's table row and its box highlight together
    table.locator("tbody tr").nth(1).hover()
    expect(page.locator(".overlay .box.active")).to_have_count(1)
    expect(page.locator(".overlay .box.active text")).to_have_text(str(findings[1]["id"]))
    tab.shot("viewer")

    # The regions over the image can be hidden, and shown again
    toggle = page.get_by_role("button", name="Show annotations")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(page.locator(".overlay .box")).to_have_count(0)
    toggle.click()
    expect(page.locator(".overlay .box")).to_have_count(len(findings))
    table.locator("tbody tr").first.hover()
    expect(page.locator(".overlay .box.active")).to_have_count(1)
    tab.shot("annotated")

    # On a phone-sized screen nothing runs off to the side
    page.set_viewport_size({"width": 360, "height": 760})
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    expect(table).to_be_visible()
    tab.shot("narrow-viewer")
    page.get_by_role("link", name="All scans").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    tab.shot("narrow-library")
    page.go_back()  # the back button returns to the scan
    expect(page.get_by_role("heading", name="chest_ct.dcm", level=1)).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 860})

    # Download the original: the very bytes uploaded
    with page.expect_download() as download:
        page.get_by_role("link", name="Download original").click()
    assert download.value.suggested_filename == "chest_ct.dcm"
    downloaded = Path(download.value.path()).read_bytes()
    assert (
        hashlib.sha256(downloaded).hexdigest()
        == scan["fileHash"]
        == hashlib.sha256(files["chest_ct.dcm"].read_bytes()).hexdigest()
    )

    # The series as a stack: arrow keys and the wheel step through it in the API's reading order
    page.get_by_role("link", name="All scans").click()
    expect(page.get_by_role("link", name="chest_ct.dcm")).to_be_focused()
    series_tile.click()
    dicom = next(s for s in service.scans(token) if s["filename"] == "slice_001.dcm")["dicom"]
    in_order = service.request(
        "GET", f"/api/v1/scans?seriesInstanceUid={dicom['seriesInstanceUid']}&limit=100", token=token
    )[1]["items"]
    assert [s["filename"] for s in in_order] == ["slice_001.dcm", "slice_002.dcm", "slice_003.dcm"]
    expect(page.get_by_role("heading", name="CT series of 3 slices")).to_be_focused()
    caption = page.locator(".viewer figcaption")

    def showing(number: int) -> None:
        slice_ = in_order[number - 1]
        expect(caption).to_contain_text(f"Slice {number} of 3 · {slice_['filename']}")
        name = f"{slice_['filename']}: Slice {number} of 3: W 400.0 / L 40.0"
        expect(page.get_by_role("img", name=name, exact=True)).to_be_visible()

    showing(1)
    page.keyboard.press("ArrowDown")
    showing(2)
    page.locator(".viewport").hover()
    page.mouse.wheel(0, 120)
    showing(3)
    page.keyboard.press("ArrowUp")
    showing(2)
    until(page, lambda: canvas_spread(page) > 100)
    tab.shot("series")
    page.keyboard.press("Home")
    showing(1)

    # Delete the PNG: a dialog asks; Cancel keeps it, Delete removes it from the screen and the API
    page.get_by_role("link", name="All scans").click()
    page.get_by_role("link", name="knee.png").click()
    page.get_by_role("button", name="Delete scan").click()
    dialog = page.get_by_role("dialog", name="Delete this scan?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    tab.shot("delete-dialog")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    page.get_by_role("button", name="Delete scan").click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Deleted knee.png.")
    expect(page.get_by_role("heading", name="Scans", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="knee.png")).to_have_count(0)
    assert service.request("GET", f"/api/v1/scans/{stored['knee.png']['scanId']}", token=token)[0] == 404
    assert sorted(s["filename"] for s in service.scans(token)) == [
        "chest_ct.dcm",
        "slice_001.dcm",
        "slice_002.dcm",
        "slice_003.dcm",
    ]
    tab.shot("deleted")

    # Log out from a scan's view: the session ends in the browser and at the API
    page.get_by_role("link", name="chest_ct.dcm").click()
    expect(page.get_by_role("img", name=re.compile(r"^chest_ct\.dcm"))).to_be_visible()
    with page.expect_response(lambda r: r.request.method == "DELETE" and "/auth/sessions/current" in r.url) as ended:
        page.get_by_role("button", name="Log out").click()
    assert ended.value.status == 204
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("You have logged out.")
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("img, canvas")).to_have_count(0)
    assert service.request("GET", "/api/v1/scans", token=token)[0] == 401
    tab.shot("logged-out")

    # The back button after logout: the login form again, and not one image
    page.go_back()
    expect(page).to_have_url(re.compile(r"#/"))
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.locator("img")).to_have_count(0)
    page.go_back()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.locator("img")).to_have_count(0)
    tab.shot("back-after-logout")


def test_web_session_ended_elsewhere_or_expired_returns_to_login_with_a_message(
    tab: Tab, service: Service, files: dict[str, Path]
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.clock.install()  # the page's timers, under the test's control (time runs on as usual)
    service.create_user("erin")
    log_in(tab, service, "erin")

    # (Drag and drop works too: a file dropped on the drop zone is uploaded)
    page.locator(".dropzone").dispatch_event("drop", {"dataTransfer": dropped(page, files["knee.png"])})
    expect(page.get_by_role("link", name="knee.png")).to_be_visible()

    # The session ends at the API (another tab logged out everywhere): the next call sends the page
    # to the login form
    status, _ = service.request("DELETE", "/api/v1/auth/sessions/current", token=session_token(tab))
    assert status == 204
    page.get_by_label("Upload scans").set_input_files(files["chest_ct.dcm"])
    expect(page.get_by_role("alert")).to_have_text("Your session has ended. Log in again to continue.")
    expect(page.get_by_label("Username")).to_be_visible()
    expect(page.locator("img")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0
    tab.shot("ended")

    # A stored session past its expiresAt is not used at all
    log_in(tab, service, "erin")
    page.evaluate(
        "const s = JSON.parse(sessionStorage.getItem('ctscan.session'));"
        "s.expiresAt = new Date(Date.now() - 1000).toISOString();"
        "sessionStorage.setItem('ctscan.session', JSON.stringify(s));"
    )
    page.reload()
    expect(page.get_by_role("alert")).to_have_text("Your session has ended. Log in again to continue.")
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)

    # The page left open past the token's expiresAt (12 h): back to the login form, no request needed
    log_in(tab, service, "erin")
    expect(page.get_by_role("link", name="knee.png")).to_be_visible()
    page.clock.fast_forward("12:00:01")
    expect(page.get_by_role("alert")).to_have_text("Your session has ended. Log in again to continue.")
    expect(page.locator("img")).to_have_count(0)
    tab.shot("expired")


def test_web_first_load_size_and_a_grid_of_100_thumbnails_a_page_by_cursor_and_the_cache(
    tab: Tab, service: Service
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    # Given a user with 101 scans: a first page of 100, and one more behind nextCursor
    service.create_user("frank")
    token = service.log_in("frank")
    for seed in range(101):
        png = images.png8(size=32, seed=seed, regions=(images.Region(10, 12, 6, 5),))
        status, answer = service.upload(token, f"scan_{seed:03d}.png", png)
        assert status == 201, answer

    # First load: the page, scripts and styles (and config.json and the icon) under 150 KB transferred
    finished: list[Any] = []
    page.on("requestfinished", lambda request: finished.append(request))
    page.goto(service.url)
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.wait_for_load_state("networkidle")
    first_load = {urlsplit(r.url).path: r.sizes() for r in finished}
    transferred = sum(s["responseBodySize"] + s["responseHeadersSize"] for s in first_load.values())
    assert any(path.endswith("/preact.mjs") for path in first_load)
    assert transferred < FIRST_LOAD_LIMIT, first_load
    print(f"first load: {len(first_load)} requests, {transferred / 1000:.1f} KB transferred (gzip, headers included)")

    # The grid: one list request for the first 100, the next page when the end scrolls into view,
    # then each thumbnail once, and no other request per thumbnail
    requested: list[str] = []
    page.on("request", lambda r: requested.append(f"{r.method} {r.url}"))
    before_login = len(service.lines)
    page.get_by_label("Username").fill("frank")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    tiles = page.locator(".grid img")

    def scroll_through() -> None:
        expect(tiles).to_have_count(100)
        tiles.last.scroll_into_view_if_needed()
        expect(tiles).to_have_count(101)
        expect(page.get_by_role("link", name="scan_000.png")).to_be_visible()  # the oldest, last
        tiles.last.scroll_into_view_if_needed()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )

    scroll_through()
    api_calls = [r for r in requested if "/api/v1/" in r]
    lists = [r for r in api_calls if re.match(r"GET \S+/api/v1/scans\?", r)]
    thumbnails = [r for r in api_calls if re.search(r"/thumbnail\?", r)]
    assert len(lists) == 2 and "limit=100" in lists[0] and "cursor=" not in lists[0] and "cursor=" in lists[1]
    assert len(thumbnails) == len(set(thumbnails)) == 101
    searches = [r for r in api_calls if re.match(r"GET \S+/api/v1/dicomweb/studies\?", r)]
    assert len(searches) == 1  # the patients and studies (none here)
    # + the login
    assert len(api_calls) == 1 + 2 + 1 + 101, [r for r in api_calls if r not in thumbnails + searches]
    # (the gateway logs a request just after answering it: wait for its line)
    until(page, lambda: len(service.image_reads_since(before_login)) >= 101)
    first_visit = service.image_reads_since(before_login)
    assert sorted(status for _, kind, status in first_visit if kind == "thumbnail") == [200] * 101
    page.evaluate("window.scrollTo(0, 0)")
    tab.shot("grid")

    # A second visit: every thumbnail comes from the browser's cache, or at most a 304. The browser
    # says which (DevTools protocol: requestServedFromCache, or the response's status).
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    again: dict[str, str] = {}
    from_cache: set[str] = set()
    answered: dict[str, int] = {}
    cdp.on(
        "Network.requestWillBeSent",
        lambda e: "/thumbnail?" in e["request"]["url"] and again.setdefault(e["requestId"], e["request"]["url"]),
    )
    cdp.on("Network.requestServedFromCache", lambda e: from_cache.add(e["requestId"]))
    cdp.on("Network.responseReceived", lambda e: answered.setdefault(e["requestId"], e["response"]["status"]))
    mark = len(service.lines)
    page.reload()
    scroll_through()
    until(page, lambda: len(again) == 101 and set(again) <= set(answered))
    assert set(again.values()) == {r.split(" ", 1)[1] for r in thumbnails}, "the same signed URLs"
    assert all(request in from_cache or answered[request] == 304 for request in again), (from_cache, answered)
    assert all(status == 304 for _, _, status in service.image_reads_since(mark))


# Every IntersectionObserver the page makes, with its callback and what it watches, so that a test can
# fire one as the browser would, and count how often the library subscribes.
OBSERVERS_SPY = """
(() => {
  const Native = window.IntersectionObserver;
  window.__observers = [];
  window.IntersectionObserver = class extends Native {
    constructor(callback, options) {
      super(callback, options);
      Object.assign(this, { spiedCallback: callback, spiedMargin: options?.rootMargin, spiedTargets: new Set() });
      window.__observers.push(this);
    }
    observe(target) { this.spiedTargets.add(target); super.observe(target); }
    unobserve(target) { this.spiedTargets.delete(target); super.unobserve(target); }
    disconnect() { this.spiedTargets.clear(); super.disconnect(); }
  };
})();
"""

# Fire every observer that watches the "Load more images" button `times` times in a row, as the
# browser does when it subscribes and as the button scrolls by; answers how many were fired.
FIRE_MORE = """(times) => {
  const watching = window.__observers.filter((o) => [...o.spiedTargets].some((t) => t.matches("button.more")));
  for (let i = 0; i < times; i++) {
    for (const o of watching) {
      o.spiedCallback([...o.spiedTargets].map((target) => ({ target, isIntersecting: true })), o);
    }
  }
  return watching.length;
}"""


def test_web_each_page_of_images_is_asked_for_once_however_often_the_observer_fires(tab: Tab, service: Service) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.add_init_script(OBSERVERS_SPY)
    # Given a user with 101 scans: a first page of 100 and one behind the cursor
    service.create_user("grace")
    token = service.log_in("grace")
    for seed in range(101):
        status, answer = service.upload(
            token, f"g_{seed:03d}.png", images.png8(size=32, seed=seed, regions=(images.Region(10, 12, 6, 5),))
        )
        assert status == 201, answer
    lists: list[str] = []
    page.on("request", lambda r: re.match(r"GET \S+/api/v1/scans\?", f"{r.method} {r.url}") and lists.append(r.url))
    page.goto(service.url)
    page.get_by_label("Username").fill("grace")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    tiles = page.locator(".grid img")
    expect(tiles).to_have_count(100)
    expect(page.get_by_role("button", name="Load more images")).to_be_attached()

    # When the button's observer fires three times in a row, before the next page can answer
    assert page.evaluate(FIRE_MORE, 3) == 1

    # Then the next page is asked for once, and comes
    expect(tiles).to_have_count(101)
    expect(page.get_by_role("button", name="Load more images")).to_have_count(0)
    # And when an observer fires again after the last page (a late callback), nothing more is asked
    page.evaluate(FIRE_MORE, 2)
    page.get_by_role("button", name="Log out").wait_for()
    cursors = [dict(parse_qsl(urlsplit(url).query)).get("cursor") for url in lists]
    assert len(cursors) == 2 and cursors[0] is None and cursors[1], lists
    # And the library subscribed one observer to the button for all its pages and renders
    more_observers = page.evaluate("() => window.__observers.filter((o) => o.spiedMargin === '600px').length")
    assert more_observers == 1


# --- files past 4.5 MB: through the images bucket (a moto S3 server here) -------------------------------


@dataclass(frozen=True)
class Bucket:
    """The images bucket on a moto S3 server: its endpoint, name and a client of it."""

    endpoint: str
    name: str
    client: Any


@pytest.fixture(scope="module")
def bucket() -> Iterator[Bucket]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        region_name=IMAGES_REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    name = "ctscan-web-images"
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": IMAGES_REGION})
    try:
        yield Bucket(endpoint, name, client)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bucket_service(
    fresh_database: Callable[..., str], tmp_path_factory: pytest.TempPathFactory, bucket: Bucket
) -> Iterator[Service]:
    """The service with the images bucket: IMAGES_BUCKET, the moto endpoint and test credentials."""
    env = {
        "IMAGES_BUCKET": bucket.name,
        "AWS_ENDPOINT_URL_S3": bucket.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": IMAGES_REGION,
    }
    keys = tmp_path_factory.mktemp("web-bucket-keys")
    with running_service(fresh_database("ctscan_web_bucket"), keys, env) as svc:
        # As the deployed bucket's CORS (infra/storage.yml): POST from the page's origin only.
        origin = svc.url.rstrip("/")
        rule = {"AllowedMethods": ["POST"], "AllowedOrigins": [origin], "MaxAgeSeconds": 3600}
        bucket.client.put_bucket_cors(Bucket=bucket.name, CORSConfiguration={"CORSRules": [rule]})
        yield svc


def test_web_file_past_4_5_mb_goes_through_the_images_bucket_with_progress(
    tab: Tab, bucket_service: Service, bucket: Bucket, large_scan: Path
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    service = bucket_service
    # The page's CSP names the bucket's origin (the presigned POST, the 302s of large images)
    csp = service.request_headers("/")["content-security-policy"]
    assert f"connect-src 'self' {bucket.endpoint};" in csp and f"blob: {bucket.endpoint};" in csp
    log_in(tab, service, "dev")
    token = session_token(tab)
    posts: list[str] = []

    def posted(request: Any) -> None:
        if request.method == "POST":
            posts.append(request.url.split("?", 1)[0])

    page.on("request", posted)

    # A 5 MB CT slice: the upload is started at the API, posted to the bucket, then completed
    size = large_scan.stat().st_size
    page.get_by_label("Upload scans").set_input_files(large_scan)
    expect(page.get_by_label("All uploads finished: 1 of 1 file", exact=False)).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Show all 1 upload").click()
    row = upload_row(page, "large_ct.dcm")
    expect(row).to_contain_text("Stored")
    api = service.url + "api/v1/scans/uploads"
    assert posts[0] == api
    assert posts[1] == f"{bucket.endpoint}/{bucket.name}"
    assert re.fullmatch(re.escape(api) + r"/upl_[\w-]+/complete", posts[2]), posts
    assert len(posts) == 3 and not any(url.endswith("/analyze") for url in posts)
    # The row's and the overall progress bars end full, at the file's size
    overall = page.get_by_label("All uploads finished: 1 of 1 file", exact=False)
    expect(overall).to_have_js_property("max", size)
    expect(overall).to_have_js_property("value", size)
    expect(row.get_by_role("progressbar")).to_have_js_property("value", size)
    (stored,) = service.scans(token)
    assert stored["filename"] == "large_ct.dcm" and stored["fileSize"] == size
    expect(page.get_by_role("link", name="large_ct.dcm").get_by_role("img")).to_have_js_property("complete", True)
    assert bucket.client.list_objects_v2(Bucket=bucket.name, Prefix="uploads/").get("KeyCount") == 0
    tab.shot("stored")

    # The same file again: a duplicate, nothing new stored
    page.get_by_label("Upload scans").set_input_files(large_scan)
    expect(page.get_by_label("All uploads finished: 1 of 1 file", exact=False)).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Show all 1 upload").click()
    expect(row).to_contain_text("Duplicate: already stored")
    assert len(service.scans(token)) == 1

    # Open it: its 1600 x 1600 pixels (5.1 MB decoded, more than a response carries) come as JPEG
    # Lossless from the original in the bucket, decoded in the browser, and are drawn
    page.get_by_role("link", name="large_ct.dcm").click()
    expect(page.get_by_role("heading", name="large_ct.dcm", level=1)).to_be_focused()
    until(page, lambda: canvas_spread(page) > 100, timeout_s=60)
    assert page.evaluate("document.querySelector('.viewport canvas').width") == 1600
    tab.shot("viewer")

    # The original reads back byte for byte: past a Lambda response, a 302 to the bucket
    scan = service.request("GET", f"/api/v1/scans/{stored['scanId']}", token=token)[1]
    original = service.follow(scan["results"]["imageUrl"], expect_redirect_to=bucket.endpoint)
    assert hashlib.sha256(original).hexdigest() == scan["fileHash"]
    assert original == large_scan.read_bytes()


def test_web_file_past_4_5_mb_without_an_images_bucket_is_rejected_with_a_clear_message(
    tab: Tab, service: Service, large_scan: Path
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    service.create_user("gina")
    token = service.log_in("gina")
    body = json.dumps({"filename": "large_ct.dcm", "size": large_scan.stat().st_size}).encode()
    status, answer = service.request(
        "POST", "/api/v1/scans/uploads", token=token, body=body, content_type="application/json"
    )
    assert status == 409 and answer["error"]["code"] == "direct_upload_unavailable", answer

    log_in(tab, service, "gina")
    page.get_by_label("Upload scans").set_input_files(large_scan)
    expect(upload_row(page, "large_ct.dcm").get_by_role("alert")).to_have_text(
        "Rejected: Files over 4.5 MB need the server's S3 bucket, which this server does not have."
    )
    expect(page.get_by_label("All uploads finished: 1 of 1 file", exact=False)).to_be_visible()
    assert service.scans(token) == []
    tab.shot("rejected")
