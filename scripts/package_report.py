"""Report what `make package` built: the unzipped size of the Lambda package, against the 250 MB limit."""

from __future__ import annotations

import sys
import zipfile
from collections import Counter
from pathlib import Path

LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024


def unzipped_size(archive: Path) -> int:
    """Sum of the uncompressed sizes of every file in a zip."""
    with zipfile.ZipFile(archive) as zipped:
        return sum(info.file_size for info in zipped.infolist())


def main() -> int:
    archive = Path(sys.argv[1] if len(sys.argv) > 1 else ".serverless/ctscan-store.zip")
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
    total = sum(info.file_size for info in infos)
    by_top = Counter[str]()
    for info in infos:
        by_top[info.filename.split("/", 1)[0]] += info.file_size
    print(
        f"{archive}: {archive.stat().st_size / 1e6:.1f} MB zipped, {total / 1e6:.1f} MB unzipped "
        f"({total / LAMBDA_UNZIPPED_LIMIT:.0%} of Lambda's 250 MB), {len(infos)} files"
    )
    for name, size in by_top.most_common(6):
        print(f"  {name:<24} {size / 1e6:6.1f} MB")
    if total >= LAMBDA_UNZIPPED_LIMIT:
        print("over Lambda's unzipped limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
