"""A warm container's memory of whole images it has served, keyed by scan, image type and SHA-256;
and of the DICOMweb frame answers it has sent, keyed by instance, frames and Accept (functions/images/dicomweb.py).

A viewer reads the same images again and again (scrolling a series back and forth, a grid that is
re-rendered), and a warm Lambda container keeps its memory between invocations. Every read still
asks the database, in its one statement, whether this caller may see this scan and what the
image's SHA-256 is now; only the bytes are left out when they are the ones held here. So a deleted
scan, another owner's scan, an expired token or a revoked session answer exactly as without the
cache, and the memory never serves bytes the database did not just vouch for.

The entries are the base64 text that goes to API Gateway as the response body. Bounded by
IMAGE_CACHE_MB (least recently used entries go first); 0 turns it off. Ranges bypass it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from shared.core.config import get_settings


@dataclass(frozen=True)
class CachedImage:
    """A body as base64 text, and the version it is of: an image's SHA-256, a DICOMweb answer's tag."""

    sha256: str
    base64: str
    # DICOMweb answers: the bytes before base64, and the headers the key does not determine
    # (a multipart type with its boundary, the Content-Encoding).
    size: int = 0
    headers: tuple[tuple[str, str], ...] = ()


# (scan id, image type); DICOMweb: ("frames", SOP instance UID, frame list, Accept) and
# ("metadata", study, series, instance, "gzip")
Key = tuple[str, ...]


class ImageCache:
    """A thread-safe LRU of base64 image bodies, at most `max_bytes` of text in all.

    An image larger than an eighth of the budget is not kept: one 4 MB original must not push out
    the hundred thumbnails a grid shows.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: Key) -> CachedImage | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Key, entry: CachedImage) -> None:
        size = len(entry.base64)
        if size > self.max_bytes // 8:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.base64)
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.base64)

    def discard(self, key: Key) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.base64)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


_cache: ImageCache | None = None
_cache_lock = threading.Lock()


def image_cache() -> ImageCache:
    """The container's cache, sized from the settings on first use."""
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = ImageCache(get_settings().image_cache_mb * 1024 * 1024)
    return _cache


def reset() -> None:
    """Forget the cache (tests that change IMAGE_CACHE_MB, and a fresh container)."""
    global _cache
    with _cache_lock:
        _cache = None
