"""Debian's Chromium under Playwright for the browser tests (tests/test_web.py, tests/test_ohif.py), as
scripts/web/browser.py finds and launches it (the bench drives it too).

Without Chromium they are skipped with how to get it, except on CI (CI set), where they fail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from scripts.web import browser


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine; on CI the browser tests must run, so fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests never skip there)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def launched_chromium() -> Iterator[Any]:
    """A Playwright Browser on Debian's Chromium (or unavailable(): skip, or fail on CI)."""
    problem = browser.missing()
    if problem is not None:
        unavailable(problem)
    with browser.launched_chromium() as launched:
        yield launched
