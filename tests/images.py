"""CT-like test images with known dense regions, built in memory."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Region:
    """A bright rectangle: top-left x, y, width, height."""

    x: int
    y: int
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height


DEFAULT_REGIONS = (Region(150, 180, 40, 30), Region(300, 260, 24, 50))


def ct_array(size: int = 512, regions: tuple[Region, ...] = DEFAULT_REGIONS, seed: int = 7) -> np.ndarray:
    """Normalised [0, 1] image: dark background, an elliptical body at ~0.3, regions at ~0.9."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    body = ((xx - c) / (size * 0.4)) ** 2 + ((yy - c) / (size * 0.33)) ** 2 <= 1.0
    image = np.where(body, 0.3, 0.02) + rng.normal(0, 0.01, (size, size))
    for r in regions:
        image[r.y : r.y + r.height, r.x : r.x + r.width] = 0.9 + rng.normal(0, 0.005, (r.height, r.width))
    return np.clip(image, 0, 1)


def png16(size: int = 512, regions: tuple[Region, ...] = DEFAULT_REGIONS, seed: int = 7) -> bytes:
    """A 16-bit grayscale PNG."""
    array = (ct_array(size, regions, seed) * 65535).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def png8(size: int = 512, regions: tuple[Region, ...] = DEFAULT_REGIONS, seed: int = 7, mode: str = "L") -> bytes:
    """An 8-bit grayscale (or RGB) PNG."""
    array = (ct_array(size, regions, seed) * 255).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).convert(mode).save(out, format="PNG")
    return out.getvalue()


def jpeg(size: int = 512, regions: tuple[Region, ...] = DEFAULT_REGIONS, seed: int = 7, quality: int = 92) -> bytes:
    """A grayscale JPEG."""
    array = (ct_array(size, regions, seed) * 255).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def randomly_damaged(data: bytes, *, seed: int, copies: int, max_bytes: int) -> Iterator[bytes]:
    """Copies of data with 1 to max_bytes random bytes overwritten each; seeded, so the same every run."""
    rng = np.random.default_rng(seed)
    for _ in range(copies):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), int(rng.integers(1, max_bytes + 1))):
            damaged[position] = int(rng.integers(0, 256))
        yield bytes(damaged)
