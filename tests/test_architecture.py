"""The package front doors stay light: importing one loads none of the heavy libraries a lean
function must not pay for (import-linter, run by `make lint`, checks the layering itself)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Modules by their full name. botocore's package itself is not here: Powertools imports it (0.5 ms);
# its client machinery, which boto3 loads, is.
HEAVY = ("fastapi", "pydantic", "numpy", "PIL", "pydicom", "cc3d", "imagecodecs", "boto3", "botocore.client")
FRONT_DOORS = ("shared", "shared.core", "shared.db", "shared.auth", "shared.storage", "shared.scans", "shared.http")


def loaded_after_import(module: str) -> list[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(set(sys.modules) & set({list(HEAVY)!r}))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize("module", FRONT_DOORS)
def test_a_front_door_loads_no_heavy_library(module: str) -> None:
    assert loaded_after_import(module) == []


def test_the_lean_http_modules_load_no_fastapi() -> None:
    # The images function imports these beside the handler; FastAPI's import is most of a cold start.
    modules = ("shared.http.entry", "shared.http.errors", "shared.http.image_responses", "shared.http.image_cache")
    assert loaded_after_import("; import ".join(modules)) == []


def test_the_fastapi_app_module_does_load_fastapi() -> None:
    # The check above can fail: the module that is meant to load FastAPI is seen doing it.
    assert "fastapi" in loaded_after_import("shared.http.app")
