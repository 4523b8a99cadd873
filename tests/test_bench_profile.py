"""The upload profile's bookkeeping (scripts/bench/profile_upload.py): each py-spy sample lands in the
category of the work it caught, and the shares count only the upload function's own warm work."""

from __future__ import annotations

import pytest

from scripts.bench import profile_upload

ENTRY = "handler (shared/http/entry.py:95)"
OUTSIDE = "<module> (<string>:30)"


@pytest.mark.parametrize(
    ("innermost", "category"),
    [
        ("_store_new_scan (shared/scans/uploads.py:104);call_once (shared/db/outcomes.py:49);"
         "call (shared/db/connection.py:192)", "database: INSERT of the scan and its instance"),
        ("find_scan_by_hash (shared/db/scans.py:209);call (shared/db/connection.py:192)",
         "database: token, duplicate and SOP lookups"),
        ("analyze_upload (shared/imaging/__init__.py:60);decode_upload (shared/imaging/decode.py:12)",
         "DICOM decode (pixels)"),
        ("analyze_upload (shared/imaging/__init__.py:60);render_annotated (shared/imaging/render.py:135)",
         "renderings (preview, annotated, thumbnail)"),
        ("describe (shared/scans/instances.py:60);read_partial (pydicom/filereader.py:799)",
         "DICOMweb description (header to JSON)"),
        ("__call__ (mangum/adapter.py:70);body (shared/http/entry.py:38)", "event body base64 (entry point)"),
        ("__call__ (fastapi/routing.py:372)", "FastAPI, Starlette, Mangum"),
        ("invoke (shared/core/observability.py:133);_flush_metrics (shared/core/observability.py:200)",
         "logs and metrics"),
        ("run_once (asyncio/base_events.py:1845)", "other"),
    ],
)  # fmt: skip
def test_a_sample_lands_in_the_category_of_the_work_it_caught(innermost: str, category: str) -> None:
    stack = ["<module> (loop.py:1)", "invoke (shared/core/observability.py:133)", ENTRY, *innermost.split(";")]
    assert profile_upload.categorize(stack) == category


def test_shares_count_the_entry_points_warm_samples_only() -> None:
    raw = [
        f"{OUTSIDE};{ENTRY};analyze_upload (shared/imaging/__init__.py:60);"
        "decode_upload (shared/imaging/decode.py:12) 30\n",
        f"{OUTSIDE};{ENTRY};_store_new_scan (shared/scans/uploads.py:104) 10\n",
        # set-up outside the entry point, and a lazy import during a warm-up upload: not counted
        f"{OUTSIDE};fresh_database (scripts/bench/common.py:80) 500\n",
        f"{OUTSIDE};{ENTRY};_find_and_load (<frozen importlib._bootstrap>:1176) 70\n",
        "garbage line\n",
    ]
    found = profile_upload.shares(raw)
    assert found == pytest.approx(
        {"DICOM decode (pixels)": 0.75, "database: INSERT of the scan and its instance": 0.25}
    )
