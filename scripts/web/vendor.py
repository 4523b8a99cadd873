#!/usr/bin/env python3
"""`make web-vendor`: copy the web app's libraries from node_modules (`npm ci`, pinned by
package-lock.json) into web/vendor/<package>-<version>/, with their licences.

The files are the packages' own ES module builds. One change is made, and `--check` makes it again
to compare: preact's hooks module imports the bare specifier "preact", which a browser resolves
only through an import map, and an inline import map is an inline script that our Content Security
Policy (script-src 'self') refuses; so that one specifier becomes "./preact.mjs", the file beside it.

jpeg-lossless-decoder-js (MIT) decodes the JPEG Lossless frames of images too large to fetch decoded;
the viewer imports it with import() when it first needs it, so it is not part of the first load. Its
release/lossless.js is the package's "module" build (package.json "type": "module"): an ES module
that exports Decoder and imports nothing, vendored as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
VENDOR = ROOT / "web" / "vendor"

# package -> {file in the package: file in web/vendor/<package>-<version>/}
FILES = {
    "preact": {"dist/preact.mjs": "preact.mjs", "hooks/dist/hooks.mjs": "hooks.mjs", "LICENSE": "LICENSE"},
    "htm": {"dist/htm.mjs": "htm.mjs", "LICENSE": "LICENSE"},
    "jpeg-lossless-decoder-js": {"release/lossless.js": "lossless.js", "LICENSE": "LICENSE"},
}
# (package, file) -> the one bare import it has, and what it becomes
REWRITES = {("preact", "hooks/dist/hooks.mjs"): ('from"preact"', 'from"./preact.mjs"')}


def locked_versions(lockfile: Path = ROOT / "package-lock.json") -> dict[str, str]:
    """The version package-lock.json pins for each vendored package."""
    packages = json.loads(lockfile.read_text(encoding="utf-8"))["packages"]
    return {name: str(packages[f"node_modules/{name}"]["version"]) for name in FILES}


def vendored_bytes(package: str, source: str, data: bytes) -> bytes:
    """A package file as it is vendored (see REWRITES)."""
    rewrite = REWRITES.get((package, source))
    if rewrite is None:
        return data
    old, new = (part.encode() for part in rewrite)
    if data.count(old) != 1:
        raise SystemExit(f"{package}/{source}: expected exactly one {rewrite[0]}; update REWRITES")
    return data.replace(old, new)


def expected(node_modules: Path = NODE_MODULES) -> dict[Path, bytes]:
    """Every file web/vendor/ should hold, read from node_modules."""
    versions = locked_versions()
    files: dict[Path, bytes] = {}
    for package, mapping in FILES.items():
        installed = json.loads((node_modules / package / "package.json").read_text(encoding="utf-8"))["version"]
        if installed != versions[package]:
            raise SystemExit(f"node_modules has {package} {installed}, the lockfile {versions[package]}: run npm ci")
        for source, target in mapping.items():
            data = (node_modules / package / source).read_bytes()
            files[VENDOR / f"{package}-{versions[package]}" / target] = vendored_bytes(package, source, data)
    return files


def differences(files: dict[Path, bytes]) -> list[str]:
    """What differs between web/vendor/ and the files it should hold."""
    problems = [f"{path.relative_to(ROOT)} differs" for path, data in files.items() if not _same(path, data)]
    present = {p for p in VENDOR.rglob("*") if p.is_file()} if VENDOR.exists() else set()
    problems += [f"{path.relative_to(ROOT)} is not from the lockfile's packages" for path in present - set(files)]
    return sorted(problems)


def _same(path: Path, data: bytes) -> bool:
    return path.is_file() and path.read_bytes() == data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when web/vendor/ differs")
    args = parser.parse_args(argv)
    files = expected()
    problems = differences(files)
    if args.check:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    if VENDOR.exists():
        shutil.rmtree(VENDOR)
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"{path.relative_to(ROOT)}  {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
