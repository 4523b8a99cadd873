"""Where an upload's milliseconds go: py-spy samples a process that uploads distinct DICOM CT slices
through the upload function's Lambda entry point (AWS-exact events, the database at DATABASE_URL or the
bench server), and each sample is put in one category of the upload's work.

`.venv/bin/python -m scripts.bench.main --profile-upload` prints, for 512x512 and 128x128 slices, the
upload's wall time per category (py-spy --idle: waits on PostgreSQL count where they happen), from
the share of samples times the mean upload time of the same uploads run without py-spy just before
(the mean with py-spy reading along is printed too: it should be close).

Beside it, the upload's p50 without its imaging: other slices, each decoded, analysed, rendered and
described before the clock starts and handed to the upload in turn, so that what is timed is the rest
(the event, Mangum, FastAPI, the token, the lookups, the INSERT, the response). No cut in decoding,
analysis or rendering can take the upload below it: it says how far such cuts can go.

py-spy (MIT, pinned in requirements-dev.txt) reads the process from outside with ptrace: it needs
root or kernel.yama.ptrace_scope 0, else the section says so and prints nothing.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from scripts.bench.common import REPORT, fresh_database
from scripts.dev.env import ROOT

# Each sample goes to the first category one of whose markers appears in its stack (outermost first
# does not matter: the markers are disjoint parts of the upload). Order matters where stacks nest:
# the INSERT is a database call inside store_upload, so it is tried before the other database calls.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("event body base64 (entry point)", ("body (shared/http/entry.py",)),
    ("multipart parsing", ("read_upload (shared/http/app.py",)),
    ("database: INSERT of the scan and its instance", ("_store_new_scan (shared/scans/uploads.py",)),
    ("database: token, duplicate and SOP lookups", ("call (shared/db/connection.py", "authenticate (shared/auth")),
    ("DICOM decode (pixels)", ("decode_upload (shared/imaging",)),
    ("analysis (body, regions)", ("analyze_hu (shared/imaging", "analyze_intensity (shared/imaging")),
    ("renderings (preview, annotated, thumbnail)", ("render_", "preview_image (shared/imaging", "_grey (shared")),
    ("DICOMweb description (header to JSON)", ("describe (shared/scans/instances.py",)),
    ("SHA-256 of the file and images", ("hexdigest", "sha256")),
    ("response (scan JSON, signed URLs)", ("upload_result (functions/upload",)),
    ("logs and metrics", ("_flush_metrics (shared/core/observability.py", "aws_lambda_powertools", "(logging/")),
    ("FastAPI, Starlette, Mangum", ("fastapi/", "starlette/", "mangum/")),
)
OTHER = "other"

CHILD = """
import asyncio, json, os, sys, time
sys.path.insert(0, '.')
sys.stdout = open(os.devnull, 'w')
from shared import auth, db
from shared.core import config
from scripts.dev import phantom
from scripts.dev.localgw.events import LambdaContext, build_event
from scripts.dev.localgw.routes import load_routes
from pathlib import Path
from tests.lambda_client import multipart
size, count, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
without_imaging = sys.argv[4:] == ['without-imaging']
asyncio.set_event_loop(asyncio.new_event_loop())
user_id = db.call(db.create_user, username=f'profile-{size}-{seed}', password_hash=auth.hash_password('profile'))
token = db.call(auth.issue_session, user_id=user_id, ttl_seconds=3600).token
route = next(r for r in load_routes(Path('serverless.yml')) if r.function_name == 'upload')
events, files = [], []
for i in range(count):
    ds = phantom.ct_slice_dataset(size, seed=seed + i, instance_number=i + 1)
    files.append(phantom.dicom_bytes(ds))
    body, ctype = multipart({'file': ('slice.dcm', files[-1], 'application/dicom')})
    events.append(build_event(method='POST', raw_path='/api/v1/scans/analyze', raw_query='', source_ip='127.0.0.1',
        headers=[('host', 'bench'), ('content-type', ctype), ('authorization', 'Bearer ' + token)],
        body=body, route=route, path_params={}))
import functions.upload.handler as upload
context = LambdaContext(route, 'profile')
if without_imaging:
    # The upload less its imaging: each file's decode, analysis, renderings and DICOMweb description are
    # done here first, and the upload takes them in turn (files are uploaded in this order).
    from shared import imaging
    from shared.scans import instances as dicom_instances
    done = iter([(len(raw), imaging.analyze_upload(raw), dicom_instances.describe(raw)) for raw in files])
    ready = []
    def analyzed(data, **options):
        length, scan, record = next(done)
        assert len(data) == length, 'the uploads left their order'
        ready.append(record)
        return scan
    imaging.analyze_upload = analyzed
    dicom_instances.describe = lambda data: ready.pop()
for event in events[:3]:
    assert upload.handler(event, context)['statusCode'] == 201
elapsed = []
for event in events[3:]:
    start = time.perf_counter()
    assert upload.handler(event, context)['statusCode'] == 201
    elapsed.append((time.perf_counter() - start) * 1000)
elapsed_sorted = sorted(elapsed)
print(json.dumps({'mean_ms': sum(elapsed) / len(elapsed), 'p50_ms': elapsed_sorted[len(elapsed) // 2],
                  'uploads': len(elapsed)}), file=sys.stderr)
"""


def categorize(stack: Sequence[str]) -> str:
    """The category of one sampled stack (py-spy's frames, `function (file:line)`)."""
    for name, markers in CATEGORIES:
        if any(marker in frame for frame in stack for marker in markers):
            return name
    return OTHER


def shares(raw_lines: Iterable[str], *, anchor: str = "handler (shared/http/entry.py") -> dict[str, float]:
    """Each category's share of the samples taken inside the upload function's entry point, from
    py-spy's raw output (`frame;frame;... count` per line). The set-up before the uploads is left
    out, and so are imports (the warm-up uploads' lazy ones): the mean time they scale to is warm."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw_lines:
        stack_text, _, count = line.rstrip("\n").rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        stack = stack_text.split(";")
        if not any(anchor in frame for frame in stack) or any("_find_and_load" in frame for frame in stack):
            continue
        counts[categorize(stack)] += int(count)
    total = sum(counts.values())
    return {name: counts[name] / total for name in counts} if total else {}


def _run_child(
    command: list[str], *, database_url: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, float] | None]:
    out = subprocess.run(
        command,
        # PROFILE_ROOT: another checkout's upload (say a worktree of the commit before a change), profiled
        # by this same code, for a before/after on one machine.
        cwd=os.environ.get("PROFILE_ROOT", str(ROOT)),
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json"},
        timeout=600,
    )
    timing = next((line for line in reversed(out.stderr.splitlines()) if line.startswith('{"mean_ms"')), None)
    return out, None if timing is None else json.loads(timing)


def profile(size: int, *, uploads: int, seed: int, database_url: str) -> dict[str, object]:
    """Upload `uploads` distinct slices of size x size, once as they are (the mean upload time) and
    once more, other slices, under py-spy (the shares); ms per upload by category."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("(py-spy is not installed: `make venv` installs it from requirements-dev.txt)", file=REPORT)
        return {}
    child = [sys.executable, "-c", CHILD, str(size), str(uploads + 3)]
    plain, timing = _run_child([*child, str(seed)], database_url=database_url)
    if timing is None:
        raise SystemExit(f"the upload profile's child failed: {plain.stderr[-2000:]}")
    mean_ms = timing["mean_ms"]
    # The same uploads, other slices, with their imaging done before the clock starts: what is left
    # (gateway event, Mangum, FastAPI, the token, the lookups, the INSERT, the response) is the floor
    # that no cut in decoding, analysis or rendering can go below.
    bare, bare_timing = _run_child([*child, str(seed + 20_000), "without-imaging"], database_url=database_url)
    if bare_timing is None:
        raise SystemExit(f"the upload profile's child failed without imaging: {bare.stderr[-2000:]}")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "samples.txt"
        # --nonblocking: py-spy reads the process without stopping it at every sample (stopping it
        # 250 times a second would slow the very uploads it measures). py-spy may end with "No child
        # process" after its child has exited and been reaped; what it wrote stands.
        sampler = [py_spy, "record", "--idle", "--nonblocking", "--rate", "250", "--format", "raw"]
        sampler += ["--output", str(raw)]
        sampled, sampled_timing = _run_child([*sampler, "--", *child, str(seed + 10_000)], database_url=database_url)
        if sampled_timing is None or not raw.exists():
            print(f"(py-spy could not profile the upload: {sampled.stderr.strip()[-300:]})", file=REPORT)
            return {}
        with raw.open(errors="replace") as lines:
            found = shares(lines)
    figures: dict[str, object] = {
        f"profile_upload_{size}_mean_ms": round(mean_ms, 2),
        f"profile_upload_{size}_p50_ms": round(timing["p50_ms"], 2),
        f"profile_upload_{size}_without_imaging_p50_ms": round(bare_timing["p50_ms"], 2),
        f"profile_upload_{size}_imaging_p50_ms": round(timing["p50_ms"] - bare_timing["p50_ms"], 2),
        f"profile_upload_{size}_mean_ms_sampled": round(sampled_timing["mean_ms"], 2),
    }
    for name, share in sorted(found.items(), key=lambda item: -item[1]):
        figures[f"profile_upload_{size}: {name}"] = f"{share * mean_ms:.2f} ms ({share:.0%})"
    return figures


def migrated_database(server_url: str, name: str = "ctscan_bench_profile") -> str:
    """A fresh database `name` on the bench server, migrated on a connection of its own (the bench
    process's own database stays its DATABASE_URL); its URL."""
    from shared import db
    from shared.core import config
    from shared.db.migrations import run_migrations

    url = fresh_database(server_url, name)
    con = db.connect(config.parse_database_url(url), timeout=60)
    try:
        run_migrations(con)
    finally:
        con.close()
    return url


def figures(database_url: str, *, uploads: int = 150) -> dict[str, object]:
    """The profile of 512x512 and 128x128 uploads, each in a process of its own."""
    found: dict[str, object] = {}
    for size, seed in ((512, 61_000), (128, 62_000)):
        found.update(profile(size, uploads=uploads, seed=seed, database_url=database_url))
    return found
