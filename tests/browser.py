"""Debian's Chromium under Playwright for the browser tests (tests/test_web.py, tests/test_ohif.py).

Without Chromium they are skipped with how to get it, except on CI (CI set), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

HOW_TO_GET_CHROMIUM = (
    "Chromium was not found: install Debian's package (sudo apt-get install -y chromium; .ci/run does this) "
    "or point CHROMIUM at a Chromium executable. Playwright cannot download its own browser here."
)


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine; on CI the browser tests must run, so fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests never skip there)", pytrace=False)
    pytest.skip(reason)


def chromium_executable() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def launched_chromium() -> Iterator[Any]:
    """A Playwright Browser on Debian's Chromium (or unavailable(): skip, or fail on CI)."""
    executable = chromium_executable()
    if executable is None:
        unavailable(HOW_TO_GET_CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed in .venv: make test installs requirements-dev.txt")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()
