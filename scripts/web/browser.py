"""Debian's Chromium under Playwright, for the browser tests (tests/browser.py) and the bench (OHIF's
time to first image in scripts/bench/dicomweb.py). Playwright cannot download its own browser here."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

HOW_TO_GET_CHROMIUM = (
    "Chromium was not found: install Debian's package (sudo apt-get install -y chromium; .ci/run does this) "
    "or point CHROMIUM at a Chromium executable. Playwright cannot download its own browser here."
)
NO_PLAYWRIGHT = "playwright is not installed in .venv: make test installs requirements-dev.txt"


class ChromiumUnavailable(RuntimeError):
    """No Chromium executable, or no Playwright to drive one."""


def chromium_executable() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing() -> str | None:
    """Why Chromium cannot be driven here (how to get what is missing), or None when it can."""
    if chromium_executable() is None:
        return HOW_TO_GET_CHROMIUM
    if importlib.util.find_spec("playwright") is None:
        return NO_PLAYWRIGHT
    return None


@contextlib.contextmanager
def launched_chromium() -> Iterator[Any]:
    """A Playwright Browser on Debian's Chromium (headless); ChromiumUnavailable where there is none."""
    problem = missing()
    executable = chromium_executable()
    if problem is not None or executable is None:
        raise ChromiumUnavailable(problem or HOW_TO_GET_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()
