"""OHIF driven from Python, as tests/test_ohif.py and the DICOMweb bench (scripts/bench/dicomweb.py) both
drive it: OHIF's server (`python -m scripts.web.ohif`) in a process of its own, and a Playwright page
of its viewer that times its first image, reads its canvas back and logs what it asked the DICOMweb
root. Where the first image is and what counts as one is defined here once, for both."""

from __future__ import annotations

import base64
import contextlib
import io
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
from PIL import Image

from scripts.web.ohif import dist

# The server's first line: "OHIF 3.13.2 on http://127.0.0.1:PORT/ (...)"
BANNER = re.compile(r"^OHIF \S+ on http://127\.0\.0\.1:(\d+)/")

Pixels = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass
class OhifProcess:
    """`python -m scripts.web.ohif` (what `make ohif` runs) in a subprocess; its log kept line by line."""

    port: int
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running(upstream: str, dicomweb_root: str, *, access_log: bool = True) -> Iterator[OhifProcess]:
    """OHIF's server on a free port in front of the DICOMweb root `dicomweb_root` of `upstream` (a base
    URL); RuntimeError, with its log, if it does not start. Fetches OHIF first if it must (dist.prepare)."""
    command = [sys.executable, "-m", "scripts.web.ohif", "--port", "0"]
    command += ["--upstream", upstream, "--dicomweb-root", dicomweb_root]
    if not access_log:
        command.append("--no-access-log")
    process = subprocess.Popen(command, cwd=dist.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = OhifProcess(0, process)
    started = threading.Event()

    def drain() -> None:  # read everything, or a full pipe would stall the server
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line.rstrip("\n"))
            bound = BANNER.match(line)
            if bound:
                server.port = int(bound.group(1))
                started.set()
        started.set()

    reader = threading.Thread(target=drain, name="ohif-stdout", daemon=True)
    reader.start()
    try:
        if not started.wait(60) or process.poll() is not None or server.port == 0:
            raise RuntimeError("OHIF's server did not start:\n" + "\n".join(server.lines[-40:]))
        yield server
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


# Before OHIF's own scripts: CSP violations, and the first frame on which the viewport's canvas (a 2D
# canvas cornerstone copies each rendered frame into) is not uniform along its middle row: the time
# since navigation (performance.now(), whose zero is the navigation's start) and that frame as a PNG,
# taken after the clock is read, so that Python can judge it with shows_an_image. One row a frame keeps
# the watcher's own cost out of what it measures.
WATCH_PAGE = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', e =>
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
(function watch() {
  const canvas = document.querySelector('.cornerstone-canvas');
  const context = canvas && canvas.width > 1 && canvas.getContext('2d');
  if (context) {
    const row = context.getImageData(0, canvas.height >> 1, canvas.width, 1).data;
    for (let i = 4; i < row.length; i += 4) {
      if (row[i] !== row[0]) {
        window.__firstPixelsMs = performance.now();
        window.__firstPixelsPng = canvas.toDataURL('image/png');
        return;
      }
    }
  }
  requestAnimationFrame(watch);
})();
"""
# When the page first asked the root for anything (its resource timing, on the same clock).
FIRST_REQUEST_MS = """
root => {
  const starts = performance.getEntriesByType('resource')
    .filter(e => { const path = new URL(e.name).pathname; return path === root || path.startsWith(root + '/'); })
    .map(e => e.startTime);
  return starts.length ? Math.min(...starts) : null;
}
"""


def _png_pixels(data_url: str) -> Pixels:
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def canvas_pixels(page: Any) -> Pixels:
    """The viewport canvas's own pixels (greyscale), without the overlays drawn over it in the DOM."""
    return _png_pixels(page.locator(".cornerstone-canvas").evaluate("canvas => canvas.toDataURL('image/png')"))


def shows_an_image(pixels: Pixels) -> bool:
    """Not blank: a CT slice's body, bones and air give a wide spread of grey levels."""
    return float(pixels.std()) > 20 and len(np.unique(pixels)) > 16


def until(page: Any, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Poll condition every 50 ms (letting the page's events through); TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting")
        page.wait_for_timeout(50)


def viewer_path(study_uid: str, token: str | None) -> str:
    """OHIF's viewer for one study; a bearer token goes in ?token= (OHIF has no header setting)."""
    query = {"StudyInstanceUIDs": study_uid, **({"token": token} if token else {})}
    return "/viewer?" + urlencode(query)


@dataclass(frozen=True)
class Exchange:
    """One request OHIF made to the DICOMweb root, as the browser saw it answered."""

    method: str
    path: str
    query: str
    accept: str
    authorization: str
    status: int


class Viewer:
    """A Playwright page of OHIF's viewer at `ohif_url` over the DICOMweb root `dicomweb_root`. Watches
    from before OHIF's first script: its errors, every answer from the root (exchanges), any request
    to the root left unanswered, and any failure of OHIF's own files or request to another origin."""

    def __init__(self, page: Any, ohif_url: str, dicomweb_root: str) -> None:
        self.page = page
        self.url = ohif_url
        self.root = dicomweb_root
        self.exchanges: list[Exchange] = []
        self.unanswered: list[str] = []
        self.own_failures: list[str] = []
        self.errors: list[str] = []
        self.first_image_ms: float | None = None
        page.add_init_script(WATCH_PAGE)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("response", self._record)
        page.on("requestfailed", self._failed)

    def _to_root(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    def _record(self, response: Any) -> None:
        parts = urlsplit(response.url)
        if parts.netloc != urlsplit(self.url).netloc:
            self.own_failures.append(f"another origin: {response.url}")
        elif self._to_root(parts.path):
            headers = response.request.headers
            self.exchanges.append(
                Exchange(
                    response.request.method,
                    parts.path,
                    parts.query,
                    headers.get("accept", ""),
                    headers.get("authorization", ""),
                    response.status,
                )
            )
        elif response.status >= 400:
            self.own_failures.append(f"{response.status} {parts.path}")  # a file pruned that OHIF needs

    def _failed(self, request: Any) -> None:
        path = urlsplit(request.url).path
        if self._to_root(path):
            self.unanswered.append(f"{request.failure} {request.method} {path}")

    def open(self, study_uid: str, token: str | None, *, timeout_s: float = 60) -> Pixels:
        """Navigate to the study's viewer and wait for its first image: sets first_image_ms (since the
        navigation began) and returns that very frame's pixels."""
        self.page.goto(self.url + viewer_path(study_uid, token))
        # (polled with evaluate, not wait_for_function: that evals its predicate, which the CSP refuses)
        until(self.page, lambda: bool(self.page.evaluate("window.__firstPixelsMs !== undefined")), timeout_s)
        self.first_image_ms = float(self.page.evaluate("window.__firstPixelsMs"))
        return _png_pixels(str(self.page.evaluate("window.__firstPixelsPng")))

    def first_request_ms(self) -> float | None:
        """When the page first asked the DICOMweb root for anything, since the navigation began."""
        found = self.page.evaluate(FIRST_REQUEST_MS, self.root)
        return None if found is None else float(found)

    def fetched_instances(self) -> set[str]:
        """The SOP instance UIDs whose first frame the root has answered (any status)."""
        return {e.path.split("/instances/")[1].split("/")[0] for e in self.exchanges if e.path.endswith("/frames/1")}

    def dicomweb_failures(self) -> list[str]:
        """Every request to the root not answered with a 2xx, or not answered at all."""
        failed = [f"{e.status} {e.method} {e.path}?{e.query}" for e in self.exchanges if not 200 <= e.status < 300]
        return failed + self.unanswered

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("window.__cspViolations"))
