"""`make bench-scale`: the scan routes at 10,000 and at 100,000 scans in one database, side by side.

Runs on a fresh database `ctscan_bench_scale` on the embedded server (or DATABASE_URL's server).
The scans are bulk-loaded with one INSERT ... SELECT generate_series each (small, distinct images),
then every figure is measured through the real handlers in process (tests/lambda_client.py), first at
10,000 scans, then after growing the same database to 100,000. Prints a table with the 100k/10k ratios.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from scripts.bench.common import ct_image, percentile, timed
from scripts.bench.main import bench_database
from shared import auth, db
from shared.core import config
from shared.scans import decode_cursor

REPORT = sys.stdout
SIZES = (10_000, 100_000)
TARGET_RATIO = 1.5
# Of every 10 scans, 6 belong to the measured owner and one to each of 4 others: 6,000 and 60,000 scans
# of the measured owner. Page 500 is listed with limit=10 (rows 4,991-5,000 of that owner), so it exists
# at both sizes; the first page is listed with the default limit (20), as the web app asks for it.
OWNERS = 5
MEASURED_SHARE = 6
PAGE_LIMIT = 10
PAGE_NUMBER = 500
READ_RUNS = 1000
WARM_UP = 50
UPLOAD_RUNS = 100

# The bytes are distinct per row (md5 of the row number and image kind) and sized like a small image's
# four renderings: original and preview ~1 KB each, annotated ~1 KB, thumbnail 256 B. file_hash is the
# SHA-256 of the original, as an upload stores it. created_at is one second apart, in insertion order.
# The results are those of a real upload (a small PNG analysed by the upload handler).
BULK_INSERT = """
    INSERT INTO scans (id, owner_id, filename, content_type, width, height, results,
                       original_image_data, preview_image_data, annotated_image_data, thumbnail_image_data,
                       file_hash, preview_hash, annotated_hash, thumbnail_hash, created_at)
    SELECT 'scan_bulk' || lpad(g::text, 12, '0'),
           CASE WHEN g % 10 < :measured_share THEN CAST(:owner AS bigint)
                ELSE (CAST(:others AS bigint[]))[1 + g % 10 - :measured_share] END,
           'bulk-' || g || '.png', 'image/png', 64, 64, CAST(:results AS jsonb),
           img.original, img.preview, img.annotated, img.thumbnail,
           encode(sha256(img.original), 'hex'), encode(sha256(img.preview), 'hex'),
           encode(sha256(img.annotated), 'hex'), encode(sha256(img.thumbnail), 'hex'),
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'
      FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g,
           LATERAL (SELECT convert_to(repeat(md5(g || 'o'), 32), 'SQL_ASCII') AS original,
                           convert_to(repeat(md5(g || 'p'), 32), 'SQL_ASCII') AS preview,
                           convert_to(repeat(md5(g || 'a'), 32), 'SQL_ASCII') AS annotated,
                           convert_to(repeat(md5(g || 't'), 8), 'SQL_ASCII') AS thumbnail) AS img
"""
SIZES_SQL = """
    SELECT pg_relation_size('scans'), pg_indexes_size('scans'),
           pg_relation_size(c.reltoastrelid), pg_indexes_size(c.reltoastrelid), (SELECT count(*) FROM scans)
      FROM pg_class c WHERE c.oid = 'scans'::regclass
"""


def bulk_load(url: str, *, first: int, last: int, owner: int, others: list[int], results: str) -> float:
    """Rows first..last in one statement, then VACUUM ANALYZE; returns the seconds it took."""
    con = db.connect(config.parse_database_url(url), timeout=600)
    try:
        start = time.perf_counter()
        con.run(
            BULK_INSERT,
            first=first,
            last=last,
            owner=owner,
            others=others,
            measured_share=MEASURED_SHARE,
            results=results,
        )
        con.run("VACUUM ANALYZE scans")
        return time.perf_counter() - start
    finally:
        con.close()


def measure(api: Any, url: str, token: str, owner: int, total: int, seed: int) -> dict[str, float | int]:
    """p50 of each figure at the database's current size, through the real handlers (and one direct call)."""
    from tests.lambda_client import multipart

    rng = random.Random(seed)
    owned = total * MEASURED_SHARE // 10
    scan_ids = [f"scan_bulk{g:012d}" for g in rng.sample(range(1, total + 1), 4 * READ_RUNS) if g % 10 < MEASURED_SHARE]
    scan_ids = scan_ids[:READ_RUNS]
    figures: dict[str, float | int] = {}
    # Sizes first: right after the bulk load and its VACUUM ANALYZE, before the uploads below add rows.
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        table, indexes, toast, toast_indexes, count = con.run(SIZES_SQL)[0]
    finally:
        con.close()
    sizes = {
        "scans_in_database": int(count),
        "table_bytes_per_scan": table / count,
        "indexes_bytes_per_scan": indexes / count,
        "toast_bytes_per_scan": (toast + toast_indexes) / count,
    }

    def ok(result: Any, status: int = 200) -> Any:
        assert result.status == status, (result.status, result.body[:300])
        return result

    # Warm-up, untimed: the first requests of a process (and the first at a new size) are slower.
    for scan_id in scan_ids[:WARM_UP]:
        ok(api.request("GET", "/api/v1/scans", token=token))
        ok(api.request("GET", f"/api/v1/scans/{scan_id}", token=token))

    # First page, default limit (20).
    samples = timed(lambda: ok(api.request("GET", "/api/v1/scans", token=token)), READ_RUNS)
    figures["list_first_page_p50_ms"] = percentile(samples, 50)

    # Page 500 of limit 10: walk the cursor chain once, untimed, then time that one request.
    cursor = None
    for _ in range(PAGE_NUMBER - 1):
        query = f"limit={PAGE_LIMIT}" + (f"&cursor={cursor}" if cursor else "")
        cursor = ok(api.request("GET", "/api/v1/scans", token=token, query=query)).json()["nextCursor"]
        assert cursor is not None
    query = f"limit={PAGE_LIMIT}&cursor={cursor}"
    page = ok(api.request("GET", "/api/v1/scans", token=token, query=query)).json()
    assert len(page["items"]) == PAGE_LIMIT and owned > PAGE_NUMBER * PAGE_LIMIT, (len(page["items"]), owned)
    samples = timed(lambda: ok(api.request("GET", "/api/v1/scans", token=token, query=query)), READ_RUNS)
    figures["list_page_500_p50_ms"] = percentile(samples, 50)

    # GET by id: a different random scan of the owner each time.
    ids = iter(scan_ids * 4)
    ok(api.request("GET", f"/api/v1/scans/{scan_ids[0]}", token=token))
    samples = timed(lambda: ok(api.request("GET", f"/api/v1/scans/{next(ids)}", token=token)), READ_RUNS)
    figures["get_by_id_p50_ms"] = percentile(samples, 50)

    # Uploads of small distinct PNGs (64x64, 16-bit, ~8 KB): analysis, four renderings, one INSERT.
    bodies = [
        multipart({"file": (f"scale-{i}.png", ct_image(64, seed * 1000 + i), "image/png")})
        for i in range(UPLOAD_RUNS + 2)
    ]
    samples = []
    for i, (body, ctype) in enumerate(bodies):
        start = time.perf_counter()
        result = api.request("POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype})
        elapsed = (time.perf_counter() - start) * 1000
        ok(result, 201)
        if i >= 2:
            samples.append(elapsed)
    figures["upload_p50_ms"] = percentile(samples, 50)

    # Dedup: re-uploads of files this owner already stored, through the upload handler (200, duplicate:
    # the hash lookup answers before any analysis), and the lookup alone as the upload route makes it
    # (db.find_owner_and_scan_by_hash: the token's owner and a random bulk-loaded scan's hash, in one
    # statement, on a connection of its own).
    samples = []
    for body, ctype in bodies * (READ_RUNS // len(bodies) + 1):
        start = time.perf_counter()
        result = api.request("POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype})
        samples.append((time.perf_counter() - start) * 1000)
        ok(result, 200)
    figures["dedup_reupload_p50_ms"] = percentile(samples, 50)
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        hashes = [row[0] for row in con.run("SELECT file_hash FROM scans WHERE id = ANY(:ids)", ids=scan_ids)]
        found = iter(hashes * 2)
        token_hash = auth.hash_token(token)

        def lookup() -> None:
            found_owner, scan = db.find_owner_and_scan_by_hash(con, token_hash=token_hash, file_hash=next(found))
            assert found_owner is not None and found_owner.id == owner and scan is not None

        samples = timed(lookup, len(hashes))
        figures["dedup_lookup_db_p50_ms"] = percentile(samples, 50)
        # The queries of the three read figures alone, on the same connection: the part that can grow with
        # the table (the handlers' own work, JSON and signed URLs, does not), less exposed to a busy machine.
        assert cursor is not None
        before = decode_cursor(cursor)
        samples = timed(lambda: db.list_scans_for_owner(con, owner_id=owner, limit=21), READ_RUNS)
        figures["list_first_page_sql_p50_ms"] = percentile(samples, 50)
        samples = timed(
            lambda: db.list_scans_for_owner(con, owner_id=owner, limit=PAGE_LIMIT + 1, before=before), READ_RUNS
        )
        figures["list_page_500_sql_p50_ms"] = percentile(samples, 50)
        samples = timed(lambda: db.get_scan(con, scan_id=next(ids), owner_id=owner), READ_RUNS)
        figures["get_by_id_sql_p50_ms"] = percentile(samples, 50)
    finally:
        con.close()
    return {**figures, **sizes}


RATIO_FIGURES = (
    "list_first_page_p50_ms",
    "list_page_500_p50_ms",
    "get_by_id_p50_ms",
    "upload_p50_ms",
    "dedup_reupload_p50_ms",
    "dedup_lookup_db_p50_ms",
    "list_first_page_sql_p50_ms",
    "list_page_500_sql_p50_ms",
    "get_by_id_sql_p50_ms",
)


def main() -> int:
    started = time.perf_counter()
    _, url = bench_database("ctscan_bench_scale")
    from tests.lambda_client import LambdaClient, multipart

    owners = [
        db.call(db.create_user, username=f"scale{i}", password_hash=auth.hash_password("bench")) for i in range(OWNERS)
    ]
    owner, others = owners[0], owners[1:]
    token = db.call(auth.issue_session, user_id=owner, ttl_seconds=3600).token
    api = LambdaClient()
    # The bulk rows carry the results JSON of a real upload of a small PNG, by another owner.
    other_token = db.call(auth.issue_session, user_id=others[0], ttl_seconds=3600).token
    body, ctype = multipart({"file": ("real.png", ct_image(64, 1), "image/png")})
    real = api.request("POST", "/api/v1/scans/analyze", token=other_token, body=body, headers={"content-type": ctype})
    assert real.status == 201, real.body
    con = db.connect(config.parse_database_url(url), timeout=30)
    results = con.run("SELECT results::text FROM scans WHERE id = :id", id=real.json()["scanId"])[0][0]
    con.close()

    by_size: dict[int, dict[str, float | int]] = {}
    loaded = 0
    for size in SIZES:
        seconds = bulk_load(url, first=loaded + 1, last=size, owner=owner, others=others, results=results)
        print(f"loaded scans {loaded + 1:,}-{size:,} and VACUUM ANALYZE in {seconds:.1f} s", file=REPORT)
        loaded = size
        by_size[size] = measure(api, url, token, owner, size, seed=size)

    small, large = (by_size[size] for size in SIZES)
    print_table(small, large)
    print(f"\ntotal run {time.perf_counter() - started:.0f} s", file=REPORT)
    db.close_connection()
    return 0


def print_table(small: dict[str, float | int], large: dict[str, float | int]) -> None:
    width = max(len(key) for key in small)
    print(f"\n{'figure':<{width}}  {'10k':>10}  {'100k':>10}  {'100k/10k':>8}  target", file=REPORT)
    print("-" * (width + 50), file=REPORT)
    for key in small:
        a, b = small[key], large[key]
        spec = ",d" if isinstance(a, int) else ",.2f"
        line = f"{key:<{width}}  {a:>10{spec}}  {b:>10{spec}}"
        if key in RATIO_FIGURES:
            ratio = b / a
            line += f"  {ratio:>7.2f}x  <= {TARGET_RATIO}x {'ok' if ratio <= TARGET_RATIO else 'MISSED'}"
        print(line, file=REPORT)


if __name__ == "__main__":
    raise SystemExit(main())
