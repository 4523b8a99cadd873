"""The development commands a reader runs by hand: `make sample`, and what `make run` installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _sample(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "scripts.dev.sample", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sample_help_prints_usage_and_writes_nothing(tmp_path: Path, flag: str) -> None:
    # When a reader asks scripts/dev/sample.py for help
    result = _sample(tmp_path, flag)

    # Then it prints its usage and creates no folder (not one named --help)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout
    assert "folder" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_sample_refuses_an_unknown_option_and_writes_nothing(tmp_path: Path) -> None:
    result = _sample(tmp_path, "--slices=3")
    assert result.returncode == 2
    assert "unrecognized arguments: --slices=3" in result.stderr
    assert list(tmp_path.iterdir()) == []


# What `make run` and the everyday commands beside it start: the local service (scripts/dev, which loads
# every function's handler in its containers) and the ops commands (make user, token, audit, migrate...).
RUN_ENTRY_POINTS = ["scripts/dev", "scripts/ops", "functions"]
PROJECT_PACKAGES = {"shared", "functions", "scripts", "tests"}


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _third_party_imports(entry_points: list[str]) -> dict[str, str]:
    """Every third-party top-level module the entry points import, lazily or not, through our own modules:
    {module: the first of our files that imports it}."""
    import ast

    todo = [path for entry in entry_points for path in sorted((ROOT / entry).rglob("*.py"))]
    seen: set[Path] = set()
    found: dict[str, str] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in PROJECT_PACKAGES:
                    module_file = _module_file(name)
                    if module_file is not None:
                        todo.append(module_file)
                elif top and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _requirement_names(file: Path) -> set[str]:
    """The distributions a requirements file pins, following its -r lines."""
    names: set[str] = set()
    for line in file.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= _requirement_names(file.parent / line[3:].strip())
        elif line:
            names.add(_canonical(line.split("==")[0].split("[")[0]))
    return names


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_with(names: set[str]) -> set[str]:
    """The distributions and everything they require (their extras aside), as installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    closure, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_canonical(requirement.name))
    return closure


def test_make_run_installs_every_library_the_service_imports_and_no_dev_tool() -> None:
    from importlib import metadata

    # Given what `make run` installs: requirements-run.txt, which takes nothing from requirements-dev.txt
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\nrun: $(RUN_STAMP)\n" in makefile
    assert "-r requirements-run.txt" in makefile.split("$(RUN_STAMP):", 1)[1].split("\n\n", 1)[0]
    run_requirements = _requirement_names(ROOT / "requirements-run.txt")
    assert not run_requirements & {"pytest", "playwright", "moto", "schemathesis", "mypy", "cfn-lint", "ruff"}
    installed = _installed_with(run_requirements)

    # When the service's import graph is read (scripts/dev, scripts/ops, every function, through shared/)
    imports = _third_party_imports(RUN_ENTRY_POINTS)
    assert {"uvicorn", "pgserver", "pg8000", "numpy", "yaml"} <= imports.keys()  # the walk reaches them

    # Then each imported module comes with a distribution requirements-run.txt installs
    provided = metadata.packages_distributions()
    missing = {
        module: importer
        for module, importer in imports.items()
        if not {_canonical(dist) for dist in provided.get(module, [])} & installed
    }
    assert missing == {}, f"imported but not in requirements-run.txt: {missing}"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("sign", [1, -1])
def test_a_stale_postmaster_pid_is_removed_even_when_a_standalone_backend_wrote_it(tmp_path: Path, sign: int) -> None:
    # A standalone backend (initdb's bootstrap, single-user mode) writes its pid negated; an initdb that
    # crashed leaves that file, and `make run` must clear it as it clears a dead server's (it raised
    # psutil's ValueError on the negative pid instead).
    from scripts.dev.devdb import clear_stale_pid

    lock = tmp_path / "postmaster.pid"
    lock.write_text(f"{sign * _dead_pid()}\n{tmp_path}\n")
    clear_stale_pid(tmp_path, wait_seconds=1)
    assert not lock.exists()


def test_a_live_process_in_postmaster_pid_is_not_taken_for_stale(tmp_path: Path) -> None:
    # Negated or not, the pid of a live process that does not answer is waited for, then reported.
    from scripts.dev.devdb import clear_stale_pid

    lock = tmp_path / "postmaster.pid"
    lock.write_text(f"{-os.getpid()}\n{tmp_path}\n")
    with pytest.raises(RuntimeError, match="alive but not accepting connections"):
        clear_stale_pid(tmp_path, wait_seconds=0.3)
    assert lock.exists()
