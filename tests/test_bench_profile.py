"""The upload profile's bookkeeping (scripts/bench/profile_upload.py): each py-spy sample lands in the
category of the work it caught, and the shares count only the upload function's own warm work."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pg8000.native
import pytest

from scripts.bench import profile_upload
from scripts.dev import phantom
from scripts.dev.env import ROOT
from shared import imaging
from shared.dicom.describe import describe_instance

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


@pytest.mark.parametrize("without_imaging", [False, True])
def test_the_upload_without_imaging_stores_what_the_upload_with_it_stores(
    pg: pg8000.native.Connection, without_imaging: bool
) -> None:
    """The floor (the upload with its imaging done before the clock starts) must store each file's own
    analysis and images, as the upload does, or it measures something other than the upload less its
    imaging: every row's results and image hashes are those imaging gives the same file."""
    size, count, seed = 64, 5, 71_000 + 100 * without_imaging
    command = [sys.executable, "-c", profile_upload.CHILD, str(size), str(count), str(seed)]
    out = subprocess.run(
        [*command, "without-imaging"] if without_imaging else command,
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "LOG_FORMAT": "json"}, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    timing = json.loads(out.stderr.strip().splitlines()[-1])
    assert timing["uploads"] == count - 3 and timing["p50_ms"] > 0
    rows = pg.run(
        "SELECT s.results, s.preview_hash, s.annotated_hash, s.thumbnail_hash, i.sop_instance_uid"
        " FROM scans s JOIN users u ON u.id = s.owner_id JOIN dicom_instances i ON i.scan_id = s.id"
        " WHERE u.username = :name ORDER BY s.created_at",
        name=f"profile-{size}-{seed}",
    )
    assert len(rows) == count
    for i, (results, preview, annotated, thumbnail, sop_uid) in enumerate(rows):
        raw = phantom.dicom_bytes(phantom.ct_slice_dataset(size, seed=seed + i, instance_number=i + 1))
        expected = imaging.analyze_upload(raw)
        assert results == json.loads(json.dumps(expected.results))
        assert (preview, annotated, thumbnail) == tuple(
            hashlib.sha256(image).hexdigest()
            for image in (expected.preview_jpeg, expected.annotated_jpeg, expected.thumbnail_jpeg)
        )
        assert sop_uid == describe_instance(raw).sop_instance_uid
