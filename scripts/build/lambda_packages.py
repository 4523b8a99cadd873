"""Build one Lambda zip per function: its handler, the shared/ modules it imports, migrations/, its own
libraries, CPython 3.12 bytecode.

    python3 -m scripts.build.lambda_packages --out .serverless NAME:HANDLER:REQUIREMENTS ...   (from the project root)

infra/plugins/python-packages.js runs this during `osls package` and `osls deploy`, with one spec per
function from serverless.yml (e.g. `upload:functions/upload/handler.handler:requirements-upload.txt`),
and points each function at `<out>/<NAME>.zip`.

- Our code: the handler's directory, and of shared/ only the modules the handler imports, directly
  or through other modules (every import statement, those inside functions too), with the
  __init__.py of each package on the way: the images function does not carry shared/imaging/ or
  the jobs. A module that no import statement names would be missing from the zip; the package
  tests check that every import of ours in a zip finds its module there.
- Libraries: `pip install --target` of the function's requirements file, Linux x86_64 wheels for
  CPython 3.12 only (no Docker, no build from source). Functions that share a requirements file share
  one install. Console scripts (bin/) are dropped; *.dist-info is kept (scramp reads its version from
  it); nothing is stripped (strip corrupts numpy's bundled OpenBLAS).
- Bytecode: without .pyc files every cold start compiles every imported module (~0.85 s against
  ~0.25 s for the images handler). Zip entries carry a fixed 1980 timestamp, so timestamp-checked
  .pyc would look stale in Lambda: our code gets checked-hash .pyc (validated against the source, so
  an edit is never masked) and the pinned, never-edited libraries get unchecked-hash .pyc.
- Zips are deterministic: sorted entries, fixed timestamps and permissions, so an unchanged function
  builds to the same bytes (and CloudFormation sees no code change).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What every function carries besides its own handler directory (and functions/__init__.py) and the
# modules of SHARED_PACKAGE it imports.
COMMON_CODE = ("migrations",)
SHARED_PACKAGE = "shared"
PIP_TARGET_ARGS = (
    # The python3.12 runtime is Amazon Linux 2023 (glibc 2.34): manylinux_2_28 wheels run too
    # (cc3d 4.x ships only those).
    "--platform=manylinux2014_x86_64",
    "--platform=manylinux_2_28_x86_64",
    "--only-binary=:all:",
    "--python-version=3.12",
    "--implementation=cp",
)
# Parts of libraries no function uses, left out of every zip. pydantic.v1 (the Pydantic 1 API):
# FastAPI imports it only to reject v1 models (fastapi/_compat/shared.py: ImportError -> "not v1"),
# which costs every cold start ~20 ms (7 % of the images handler's import).
OMIT = ("pydantic/v1",)
# Libraries of which we use one small part, pruned to it. imagecodecs bundles ~80 codecs (82 MB with
# their native libraries) and we call only its libjpeg-turbo decoder (jpeg8_decode, for JPEG Lossless
# and 12-bit JPEG Extended DICOM, shared/imaging/dicom_jpeg.py): keeping the package's pure-Python
# loader, its core and shared extensions, _jpeg8 and libjpeg brings it to ~7 MB. The upload function's
# built-package test decodes JPEG Lossless from the zip, so a missing piece fails `make test`.
KEEP_ONLY: dict[str, tuple[str, ...]] = {
    "imagecodecs": (
        "__init__.py",
        "imagecodecs.py",
        "py.typed",
        "licenses",
        "_shared.abi3.so",
        "_shared_cython.abi3.so",
        "_imcd.abi3.so",
        "_jpeg8.abi3.so",
    ),
    "imagecodecs.libs": ("libjpeg-*",),
    # Powertools: we use its Logger and Metrics (shared/core/observability.py), which need what its
    # __init__ imports (tracing too, without the X-Ray SDK) and the JMESPath helpers. Its event
    # handler and other utilities, 5.1 of its 5.7 MB with bytecode, no function imports; the built
    # packages' smoke test logs a request and flushes its metrics from each zip.
    "aws_lambda_powertools": (
        "__init__.py",
        "py.typed",
        "package_logger.py",
        "exceptions",
        "logging",
        "metrics",
        "shared",
        "tracing",
        "utilities",
        "warnings",
    ),
    "aws_lambda_powertools/utilities": ("__init__.py", "jmespath_utils"),
}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
LAMBDA_TASK_ROOT = "/var/task"  # where Lambda unpacks the zip
IS_CPYTHON_312 = "import sys; sys.exit(sys.implementation.name != 'cpython' or sys.version_info[:2] != (3, 12))"


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler_dir: Path  # relative to ROOT, e.g. functions/upload
    requirements: Path  # relative to ROOT

    @classmethod
    def parse(cls, spec: str) -> FunctionSpec:
        """NAME:HANDLER:REQUIREMENTS, HANDLER as in serverless.yml (functions/upload/handler.handler)."""
        name, handler, requirements = spec.split(":")
        handler_dir = Path(handler.rsplit(".", 1)[0]).parent
        if not (ROOT / handler_dir).is_dir() or not (ROOT / requirements).is_file():
            raise SystemExit(f"build_lambda_packages: {spec!r}: no {handler_dir}/ or no {requirements}")
        return cls(name, handler_dir, Path(requirements))


def lambda_python() -> str | None:
    """CPython 3.12 for the bytecode: $LAMBDA_PYTHON, else what scripts/build/find-lambda-python.sh finds."""
    python = os.environ.get("LAMBDA_PYTHON")
    if not python:
        finder = ROOT / "scripts" / "build" / "find-lambda-python.sh"
        python = subprocess.run([str(finder)], capture_output=True, text=True, check=False).stdout.strip()
    if not python:
        return None
    if subprocess.run([python, "-c", IS_CPYTHON_312], check=False).returncode != 0:
        raise SystemExit(f"build_lambda_packages: LAMBDA_PYTHON={python} is not CPython 3.12")
    return python


def compile_tree(python: str, directory: Path, mode: str) -> None:
    """Bytecode for every module under directory, naming its source as Lambda will see it (/var/task/...)."""
    as_in_lambda = ["-s", str(directory), "-p", LAMBDA_TASK_ROOT]
    command = [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", mode, *as_in_lambda, str(directory)]
    subprocess.run(command, check=True)


def install_requirements(requirements: Path, target: Path) -> None:
    """The requirements file's libraries as Lambda will import them, in a directory of their own."""
    quiet = ["--quiet", "--no-warn-conflicts", "--root-user-action=ignore"]
    pip = [sys.executable, "-m", "pip", "install", *quiet, "--no-compile", "--target", str(target), *PIP_TARGET_ARGS]
    subprocess.run([*pip, "-r", str(ROOT / requirements)], check=True)
    # bin/: console scripts, which carry the build machine's interpreter path and never run in Lambda.
    for unused in ("bin", *OMIT):
        shutil.rmtree(target / unused, ignore_errors=True)
    for package, keep in KEEP_ONLY.items():
        prune(target / package, keep)


def prune(directory: Path, keep: tuple[str, ...]) -> None:
    """Remove everything in directory whose name matches none of the keep patterns."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if not any(entry.match(pattern) for pattern in keep):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def copy_code(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a dotted module name under root (a package's __init__.py), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root)
    return None


def imported_modules(source: Path, prefix: str, root: Path = ROOT) -> set[str]:
    """The modules under `prefix` that a source file imports, anywhere in it (in functions too).

    `from pkg import name` imports pkg, and pkg.name too when that is a module of its own.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse((root / source).read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if (name == prefix or name.startswith(prefix + ".")) and module_file(name, root)}


def shared_closure(sources: list[Path], root: Path = ROOT) -> set[Path]:
    """Every file of shared/ that importing `sources` loads: what they import, what that imports, and
    the __init__.py of every package on the way (Python runs those first)."""
    seen: set[str] = set()
    pending = [module for source in sources for module in imported_modules(source, SHARED_PACKAGE, root)]
    while pending:
        module = pending.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name in seen:
                continue
            seen.add(name)
            file = module_file(name, root)
            if file is not None:
                pending.extend(imported_modules(file, SHARED_PACKAGE, root))
    return {file for name in seen if (file := module_file(name, root)) is not None}


def stage_code(spec: FunctionSpec, target: Path) -> None:
    """Our code for one function: its handler directory (and parent packages' __init__.py), the
    modules of shared/ it imports, migrations/."""
    copy_code(ROOT / spec.handler_dir, target / spec.handler_dir)
    for package in spec.handler_dir.parents:
        if (ROOT / package / "__init__.py").is_file() and package != Path("."):
            shutil.copy2(ROOT / package / "__init__.py", target / package / "__init__.py")
    handler_sources = sorted(path.relative_to(ROOT) for path in (ROOT / spec.handler_dir).rglob("*.py"))
    for file in sorted(shared_closure(handler_sources)):
        (target / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / file, target / file)
    for part in COMMON_CODE:
        copy_code(ROOT / part, target / part)


def files_under(root: Path) -> dict[str, Path]:
    """Every file under root by its zip name (posix path relative to root)."""
    return {path.relative_to(root).as_posix(): path for path in root.rglob("*") if path.is_file()}


def write_zip(archive: Path, trees: list[dict[str, Path]]) -> None:
    entries: dict[str, Path] = {}
    for tree in trees:
        clashes = entries.keys() & tree.keys()
        if clashes:
            raise SystemExit(f"build_lambda_packages: {archive.name}: a library shadows our code: {sorted(clashes)}")
        entries.update(tree)
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3  # Unix, so Lambda applies the permissions below
            executable = entries[name].stat().st_mode & 0o111
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with entries[name].open("rb") as source, zipped.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1024 * 1024)
    partial.replace(archive)


def build(specs: list[FunctionSpec], out: Path) -> None:
    python = lambda_python()
    if python is None:
        print(
            "build_lambda_packages: WARNING: no CPython 3.12 (set LAMBDA_PYTHON): packaging without bytecode, "
            "so cold starts will compile from source",
            file=sys.stderr,
        )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lambda-build-") as scratch:
        work = Path(scratch)
        for spec in specs:
            stage_code(spec, work / "code" / spec.name)
        requirement_files = sorted({spec.requirements for spec in specs})
        libraries = {requirements: work / f"libraries-{index}" for index, requirements in enumerate(requirement_files)}
        for requirements, target in libraries.items():
            print(f"build_lambda_packages: installing {requirements}", flush=True)
            install_requirements(requirements, target)
        if python is not None:
            for spec in specs:
                compile_tree(python, work / "code" / spec.name, "checked-hash")
            for target in libraries.values():
                compile_tree(python, target, "unchecked-hash")

        def zip_function(spec: FunctionSpec) -> None:
            archive = out / f"{spec.name}.zip"
            write_zip(archive, [files_under(work / "code" / spec.name), files_under(libraries[spec.requirements])])
            print(f"build_lambda_packages: {archive} with {spec.requirements}", flush=True)

        # zlib releases the GIL: the small zips are written while the large one compresses.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(zip_function, specs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".serverless")
    parser.add_argument("functions", nargs="+", metavar="NAME:HANDLER:REQUIREMENTS")
    args = parser.parse_args()
    specs = [FunctionSpec.parse(spec) for spec in args.functions]
    build(specs, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
