"""What the benchmarks share: timing helpers, the synthetic CT-like PNG and JPEG images they upload, a
fresh database on the bench server, and the local gateway in processes of its own."""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from PIL import Image

from scripts.dev.env import ROOT
from shared import db
from shared.core import config

# The table goes here. The handlers measured in process write their request log lines and metrics
# to stdout as they do in Lambda (that cost is in the figures); bench.main sends those to /dev/null.
REPORT = sys.stdout


def ct_image(size: int, seed: int, *, bits: int = 16, fmt: str = "PNG", noise: float = 0.01) -> bytes:
    """A CT-like slice: body ellipse, two dense regions, seeded noise (so every image is distinct)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    body = ((xx - c) / (size * 0.4)) ** 2 + ((yy - c) / (size * 0.33)) ** 2 <= 1.0
    image = np.where(body, 0.3, 0.02) + rng.normal(0, noise, (size, size))
    s = size // 512 or 1
    image[180 * s : 210 * s, 150 * s : 190 * s] = 0.9
    image[260 * s : 310 * s, 300 * s : 324 * s] = 0.85
    image = np.clip(image, 0, 1)
    out = io.BytesIO()
    if bits == 16:
        Image.fromarray((image * 65535).astype(np.uint16)).save(out, format=fmt)
    else:
        options = {"quality": 90} if fmt == "JPEG" else {}
        Image.fromarray((image * 255).astype(np.uint8)).save(out, format=fmt, **options)
    return out.getvalue()


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def fresh_database(server_url: str, name: str) -> str:
    """A new, empty database `name` on the bench server (dropped first if it exists); its URL."""
    admin = db.connect(config.parse_database_url(server_url), timeout=30)
    try:
        admin.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.run(f"CREATE DATABASE {name}")
    finally:
        admin.close()
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def gateway_process(
    database_url: str, *, workers: int | None = None, on_line: Callable[[str], None] | None = None, **env: str
) -> Iterator[int]:
    """The local gateway (python -m scripts.dev.localgw) in processes of its own, as `make run` starts it;
    yields its port. on_line: called (in a thread of its own) with each line the functions print to
    stdout (their JSON log lines and metrics), which are otherwise read and dropped."""
    args = [sys.executable, "-m", "scripts.dev.localgw", "--port", "0", "--no-access-log"]
    if workers is not None:
        args += ["--workers", str(workers)]
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        # LOG_FORMAT=json: the functions log and flush metrics as deployed, and the figures pay for it.
        env={**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json", **env},
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.split("http://", 1)[1].split(",")[0].split()[0].rsplit(":", 1)[1])
        # Read and drop the functions' log lines and metrics (one or two per request), as CloudWatch
        # takes them off a Lambda: a full pipe would stall the gateway mid-measurement.
        drain: Callable[[], object] = (
            functools.partial(collections.deque, process.stdout, maxlen=0)
            if on_line is None
            else functools.partial(_each_line, process.stdout, on_line)
        )
        threading.Thread(target=drain, name="gateway-stdout", daemon=True).start()
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _each_line(stream: Iterable[str], on_line: Callable[[str], None]) -> None:
    for line in stream:
        on_line(line)
