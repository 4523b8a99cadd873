"""Package front doors whose names load with their module on first use (PEP 562).

`shared.db` exports the queries of every table family and `shared.auth` every session and account
operation; a function that needs one name should not load the rest. The images function's cold
start loaded ~6 ms more of our modules once db.py and auth.py were split into packages with eager
front doors; with this it loads only the modules it uses.

In each front door the names are imported under `if TYPE_CHECKING:`, which is what readers, mypy
and the editor see; at run time `exports` maps each name to its module, and tests/test_architecture.py
holds the two to the same names and objects.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module `__getattr__` and `__dir__` for `package`: `exports` maps each submodule (relative
    name) to the names it exports. A name's first lookup imports its module and keeps the value in
    the package, so later lookups are plain attribute reads."""
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
