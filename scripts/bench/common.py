"""What the benchmarks share: timing helpers and the synthetic CT-like PNG and JPEG images they upload."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

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
