"""Report what `make package` built: each function's zip, zipped and unzipped, against Lambda's 250 MB limit."""

from __future__ import annotations

import sys
import zipfile
from collections import Counter
from pathlib import Path

# Lambda's limit on a function's unzipped deployment package (code and layers): 250 MiB.
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
BUILD = Path(".serverless")


def unzipped_size(archive: Path) -> int:
    """Sum of the uncompressed sizes of every file in a zip."""
    with zipfile.ZipFile(archive) as zipped:
        return sum(info.file_size for info in zipped.infolist())


def report(archive: Path, largest: int = 4) -> bool:
    """Print one archive's sizes and its largest top-level entries; True when it fits Lambda's limit."""
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
    total = sum(info.file_size for info in infos)
    by_top = Counter[str]()
    for info in infos:
        by_top[info.filename.split("/", 1)[0]] += info.file_size
    print(
        f"{archive.name:<12} {archive.stat().st_size / 1e6:6.1f} MB zipped {total / 1e6:7.1f} MB unzipped "
        f"({total / LAMBDA_UNZIPPED_LIMIT:4.0%} of 250 MB) {len(infos):5} files; largest: "
        + ", ".join(f"{name} {size / 1e6:.1f}" for name, size in by_top.most_common(largest))
    )
    if total >= LAMBDA_UNZIPPED_LIMIT:
        print(f"{archive}: over Lambda's unzipped limit ({LAMBDA_UNZIPPED_LIMIT:,} bytes)", file=sys.stderr)
        return False
    return True


def main() -> int:
    archives = [Path(arg) for arg in sys.argv[1:]] or sorted(BUILD.glob("*.zip"))
    if not archives:
        print(f"no function packages in {BUILD}/: run `make package`", file=sys.stderr)
        return 1
    results = [report(archive) for archive in archives]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
