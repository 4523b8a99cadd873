"""Where the local service finds its database: DATABASE_URL if set, else the embedded one in .data/."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / ".data" / "pg"


def prepare_database() -> str:
    """Make sure DATABASE_URL points at a running server (starting the embedded one if needed)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        from scripts.dev.devdb import ensure_server

        url = ensure_server(Path(os.environ.get("PGDATA_DIR", DATA_DIR)))
        os.environ["DATABASE_URL"] = url
    return url


def migrate(*, backfill: bool = False) -> dict[str, object]:
    """Apply migrations through the migrate function, as ops would invoke it; with `backfill`, its
    DICOMweb backfill too, to the end (no Lambda context, no time limit). The commands that only need
    a current schema (user, audit, cleanup, the moves) leave the backfill to `make migrate`."""
    from functions.migrate.handler import handler

    report: dict[str, object] = handler({"backfill": backfill}, None)
    return report
