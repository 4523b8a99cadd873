"""The package front doors stay light: importing one loads none of the heavy libraries a lean
function must not pay for (import-linter, run by `make lint`, checks the layering itself)."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Modules by their full name. botocore's package itself is not here: Powertools imports it (0.5 ms);
# its client machinery, which boto3 loads, is.
HEAVY = ("fastapi", "pydantic", "numpy", "PIL", "pydicom", "cc3d", "imagecodecs", "boto3", "botocore.client")
FRONT_DOORS = (
    "shared",
    "shared.core",
    "shared.db",
    "shared.auth",
    "shared.storage",
    "shared.scans",
    "shared.dicomweb",
    "shared.http",
    "shared.dicom",
)


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
    modules = (
        "shared.http.entry",
        "shared.http.errors",
        "shared.http.image_responses",
        "shared.http.image_cache",
        "shared.http.plain",
    )
    assert loaded_after_import("; import ".join(modules)) == []


@pytest.mark.parametrize("module", ["functions.images.handler", "functions.scans.handler", "functions.auth.handler"])
def test_the_plain_starlette_functions_load_no_heavy_library(module: str) -> None:
    # FastAPI and Pydantic were more than half of the scans and auth functions' cold starts (the
    # library's first listing, the first login); the images function never had them.
    assert loaded_after_import(module) == []


def test_the_fastapi_app_module_does_load_fastapi() -> None:
    # The check above can fail: the module that is meant to load FastAPI is seen doing it.
    assert "fastapi" in loaded_after_import("shared.http.app")


LAZY_FRONT_DOORS = ("shared.db", "shared.auth", "shared.storage", "shared.scans", "shared.dicom")


def type_checking_imports(package: str) -> dict[str, str]:
    """name -> module of each `from module import name` under the front door's `if TYPE_CHECKING:`."""
    source = (ROOT / package.replace(".", "/") / "__init__.py").read_text()
    block = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    )
    return {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


@pytest.mark.parametrize("package", LAZY_FRONT_DOORS)
def test_a_lazy_front_door_serves_what_it_declares(package: str) -> None:
    # What mypy and readers see (the TYPE_CHECKING imports) is what the package hands out at run time.
    declared = type_checking_imports(package)
    front_door = importlib.import_module(package)
    assert sorted(declared) == sorted(front_door.__all__)
    for name, module in declared.items():
        assert getattr(front_door, name) is getattr(importlib.import_module(module), name), name
    assert set(declared) <= set(dir(front_door))
    assert not hasattr(front_door, "no_such_name")


def test_a_front_door_name_loads_only_its_own_module() -> None:
    # The images function reads db.call and auth.parse_bearer; neither loads the users and sessions SQL.
    code = (
        "import json, sys; from shared import auth, db; db.call; auth.parse_bearer; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('shared.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert {"shared.db.connection", "shared.auth.tokens"} <= loaded
    assert not loaded & {"shared.db.users", "shared.db.scans", "shared.auth.sessions", "shared.auth.passwords"}


def test_the_images_function_loads_its_dicomweb_reads_only_when_one_is_asked_for() -> None:
    # An image read's cold start pays for none of shared.dicomweb (functions/images/dicomweb.py routes
    # lazily): the images function imports as it did before it spoke DICOMweb.
    code = (
        "import json, sys; import functions.images.handler; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('shared.', 'functions.')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert "functions.images.dicomweb" in loaded
    assert not {m for m in loaded if m.startswith("shared.dicomweb.") or m == "functions.images.dicomweb_reads"}
    assert "shared.db.instances" not in loaded


MODELS_BUILT = (
    "import json, sys; import {module}; import fastapi.openapi.models as openapi; from shared.http import schemas; "
    "print(json.dumps([openapi.OpenAPI.__pydantic_complete__, schemas.ScanPage.__pydantic_complete__, "
    "schemas.UploadCreate.__pydantic_complete__]))"
)


@pytest.mark.parametrize("module", ["functions.upload.handler"])
def test_a_fastapi_function_builds_at_import_only_the_models_it_validates_requests_with(module: str) -> None:
    # FastAPI's OpenAPI document models and our response schemas (documentation: openapi_url=None when
    # deployed) build on first use (shared/http/deferred_models.py), not in every cold start; a request
    # body's model (UploadCreate) is built as its class is defined.
    code = MODELS_BUILT.format(module=module)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [False, False, True]


def test_the_scans_function_loads_the_dicomweb_deletes_only_when_one_is_asked_for() -> None:
    # A scan listing's cold start pays for none of the DICOMweb DELETE's modules (its SQL, WADO-RS lookups).
    code = (
        "import json, sys; import functions.scans.handler; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('shared.', 'functions.')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert {"functions.scans.handler", "shared.db.audit"} <= loaded
    assert not loaded & {"shared.dicomweb.deletion", "shared.dicomweb.wado", "shared.db.instances"}


PYDANTIC_V1 = (
    "import json, sys; import {module}; from fastapi.encoders import jsonable_encoder; "
    "jsonable_encoder({{'a': [1, 'b']}}); v1_at_import = 'pydantic.v1' in sys.modules; "
    "from pydantic import v1; from fastapi._compat import shared; import fastapi.encoders as encoders\n"
    "class Old(v1.BaseModel):\n    x: int\n"
    "print(json.dumps([v1_at_import, shared.is_pydantic_v1_model_class(Old), "
    "encoders.is_pydantic_v1_model_instance(Old(x=1)), shared.annotation_is_pydantic_v1(int)]))"
)


@pytest.mark.parametrize("module", ["functions.upload.handler"])
def test_a_fastapi_function_never_imports_pydantic_v1_to_ask_whether_something_is_one_of_its_models(
    module: str,
) -> None:
    # FastAPI imports pydantic.v1 (~100 ms of a cold start) to check route annotations and encoded
    # objects against it; shared/http/deferred_models.py answers False while nothing has imported it,
    # and FastAPI's own check answers once something has (a v1 model is still told apart).
    code = PYDANTIC_V1.format(module=module)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [False, True, True, False]
