"""The migration runner and the migrate function: once each, concurrently safe, reported."""

from __future__ import annotations

import base64
import hashlib
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError

from shared import db
from shared.core import config
from shared.db.migrations import (
    CREATE_MIGRATION_LOCK,
    MIGRATIONS_DIR,
    MigrationError,
    load_migrations,
    run_migrations,
)

EXPECTED = [
    "001_create_scans",
    "002_add_image_storage",
    "003_scan_integrity",
    "004_dicom_and_preview",
    "005_audit_and_login_throttle",
    "006_drop_redundant_file_hash_index",
    "007_s3_storage_tier",
    "008_presigned_uploads",
    "009_lz4_original_image",
    "010_dicomweb",
    "011_request_outcomes",
]


def run_on(url: str, directory: Path = MIGRATIONS_DIR) -> dict[str, Any]:
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        return run_migrations(con, directory=directory)
    finally:
        con.close()


def test_migrations_apply_once_then_report_already_applied(fresh_database: Callable[..., str]) -> None:
    url = fresh_database()

    first = run_on(url)
    second = run_on(url)

    assert first["applied"] == EXPECTED and first["alreadyApplied"] == []
    assert second["applied"] == [] and second["alreadyApplied"] == EXPECTED
    # Migration 009: the original is lz4-compressed where the server was built with lz4.
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        has_lz4 = con.run("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")[0][
            0
        ]
    finally:
        con.close()
    for report in (first, second):
        assert report["status"] == "ok"
        assert [(c["column"], c["type"], c["storage"]) for c in report["columns"]] == [
            ("original_image_data", "bytea", "extended" if has_lz4 else "external"),
            ("preview_image_data", "bytea", "external"),
            ("annotated_image_data", "bytea", "external"),
            ("thumbnail_image_data", "bytea", "external"),
        ]


def test_five_concurrent_runs_apply_everything_exactly_once(fresh_database: Callable[..., str]) -> None:
    url = fresh_database()
    barrier = threading.Barrier(5)
    reports: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            barrier.wait()
            reports.append(run_on(url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert len(reports) == 5
    applied = [name for report in reports for name in report["applied"]]
    assert sorted(applied) == EXPECTED
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        versions = [r[0] for r in con.run("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [name[:3] for name in EXPECTED]
    finally:
        con.close()


def test_migrate_function_runs_through_its_handler(
    fresh_database: Callable[..., str], settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("DATABASE_URL", fresh_database())
    from functions.migrate.handler import handler

    assert handler({}, None)["applied"] == EXPECTED
    assert handler({}, None)["alreadyApplied"] == EXPECTED


def test_an_edited_migration_is_refused(fresh_database: Callable[..., str], tmp_path: Path) -> None:
    url = fresh_database()
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    run_on(url, copy)
    (copy / "001_create_scans.sql").write_text((copy / "001_create_scans.sql").read_text() + "\n-- edited\n")

    with pytest.raises(MigrationError, match="edited after it was applied"):
        run_on(url, copy)


def test_a_failing_migration_rolls_back_with_its_bookkeeping(
    fresh_database: Callable[..., str], tmp_path: Path
) -> None:
    url = fresh_database()
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    (copy / "099_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n")

    with pytest.raises(DatabaseError):
        run_on(url, copy)

    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        assert con.run("SELECT to_regclass('half_done')")[0][0] is None
        assert con.run("SELECT count(*) FROM schema_migrations WHERE version = '099'")[0][0] == 0
    finally:
        con.close()
    # The good ones were each committed on their own.
    (copy / "099_broken.sql").unlink()
    assert run_on(url, copy)["alreadyApplied"] == EXPECTED


def test_scans_stored_before_004_show_their_original_as_preview(
    fresh_database: Callable[..., str], tmp_path: Path
) -> None:
    # Given a PNG scan stored by the code of migration 003, which had no preview
    url = fresh_database()
    before = tmp_path / "migrations"
    before.mkdir()
    for migration in load_migrations()[:3]:
        shutil.copy(MIGRATIONS_DIR / f"{migration.name}.sql", before)
    with pytest.raises(MigrationError, match="preview_image_data"):  # this code expects 004's column
        run_on(url, before)
    png = b"\x89PNG\r\n\x1a\n pretend pixels"
    jpeg = b"\xff\xd8\xff pretend jpeg"
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        user_id = db.create_user(con, username="old", password_hash="x")
        con.run(
            "INSERT INTO scans (id, owner_id, filename, content_type, width, height, results, original_image_data, "
            "annotated_image_data, thumbnail_image_data, file_hash, annotated_hash, thumbnail_hash) VALUES "
            "('scan_AAAAAAAAAAAAAAAAAAAAAA', :owner, 'old.png', 'image/png', 1, 1, '{}', :png, :jpeg, :jpeg, "
            "encode(sha256(:png), 'hex'), encode(sha256(:jpeg), 'hex'), encode(sha256(:jpeg), 'hex'))",
            owner=user_id,
            png=png,
            jpeg=jpeg,
        )

        # When 004 (and what follows it) is applied
        assert run_on(url)["applied"] == EXPECTED[3:]

        # Then its preview is its original, with the original's type and ETag, data or not
        for with_data in (True, False):
            image = db.read_image(
                con,
                token_hash=None,
                scan_id="scan_AAAAAAAAAAAAAAAAAAAAAA",
                image_type=db.ImageType.preview,
                read=db.ImageRead(with_data=with_data),
            )
            assert image is not None
            assert image.content_type == "image/png" and image.size == len(png)
            assert image.sha256 == hashlib.sha256(png).hexdigest()
            assert (base64.b64decode(image.base64) if image.base64 else None) == (png if with_data else None)
        scan = db.get_scan(con, scan_id="scan_AAAAAAAAAAAAAAAAAAAAAA", owner_id=user_id)
        assert scan.dicom is None
    finally:
        con.close()


def test_misnamed_migration_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "4_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_description"):
        load_migrations(tmp_path)


# The migration lock behind a transaction pooler (pgbouncer in transaction mode, tests/pgbouncer.py).
# Pool size 1: every client shares one server connection, so a session advisory lock taken by one
# runner is "held" by the next runner's statements too (the double grant the probe saw); 4: a runner's
# statements land on different server connections, so an unlock may miss the one holding the lock.
@pytest.mark.parametrize("pool_size", [1, 4])
def test_parallel_runners_through_a_transaction_pooler_apply_each_migration_once(
    fresh_database: Callable[..., str], through_pgbouncer: Callable[..., str], pool_size: int
) -> None:
    url = fresh_database()
    pooled = through_pgbouncer(url, pool_size=pool_size)
    barrier = threading.Barrier(4)
    reports: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            barrier.wait()
            reports.append(run_on(pooled))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)

    # Exactly one runner applies each migration; the others waited, then found them applied.
    assert not errors, errors
    assert len(reports) == 4
    assert sorted(name for report in reports for name in report["applied"]) == EXPECTED
    for report in reports:
        assert report["status"] == "ok"
        assert sorted(report["applied"] + report["alreadyApplied"]) == EXPECTED
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        assert [r[0] for r in con.run("SELECT version FROM schema_migrations ORDER BY version")] == [
            name[:3] for name in EXPECTED
        ]
        assert con.run("SELECT count(*) FROM migration_lock")[0][0] == 0  # given back
    finally:
        con.close()
    # And the next run, on whichever server connection, finds the lock free at once.
    assert run_on(pooled)["alreadyApplied"] == EXPECTED


def test_migrate_function_runs_through_a_transaction_pooler(
    fresh_database: Callable[..., str], through_pgbouncer: Callable[..., str], settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("DATABASE_URL", through_pgbouncer(fresh_database(), pool_size=1))
    from functions.migrate.handler import handler

    first = handler({}, None)
    second = handler({}, None)

    assert first["applied"] == EXPECTED and first["dicomweb_backfill"]["done"] is True
    assert second["applied"] == [] and second["alreadyApplied"] == EXPECTED


STALE_LOCK = """
    INSERT INTO migration_lock (id, holder, acquired_at, expires_at)
    VALUES (1, :holder, now() - interval '1 hour', now() + make_interval(secs => CAST(:expires_in AS integer)))
"""


def hold_lock(url: str, *, holder: str, expires_in: int) -> None:
    """Write the lock row as another runner would have left it (expires_in < 0: its lease ran out)."""
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        con.run(CREATE_MIGRATION_LOCK)
        con.run(STALE_LOCK, holder=holder, expires_in=expires_in)
    finally:
        con.close()


def test_a_crashed_runners_lock_is_taken_over_once_its_lease_ran_out(
    fresh_database: Callable[..., str], through_pgbouncer: Callable[..., str]
) -> None:
    # Given a runner that took the lock and died without giving it back, its lease now over
    url = fresh_database()
    hold_lock(url, holder="crashed-runner", expires_in=-1)

    # When the next run starts
    report = run_on(through_pgbouncer(url, pool_size=1))

    # Then it takes the lock over, applies everything and gives the lock back
    assert report["applied"] == EXPECTED
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        assert con.run("SELECT count(*) FROM migration_lock")[0][0] == 0
    finally:
        con.close()


def test_a_held_lock_makes_the_next_run_wait_then_fail_clearly(fresh_database: Callable[..., str]) -> None:
    # Given a live runner's lock, its lease good for an hour
    url = fresh_database()
    hold_lock(url, holder="other-runner", expires_in=3600)

    # When another run waits for it no longer than half a second
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        with pytest.raises(MigrationError, match=r"another migration run held the lock .*other-runner"):
            run_migrations(con, lock_wait_seconds=0.5)

        # Then it applied nothing and left the other's lock alone
        assert con.run("SELECT to_regclass('schema_migrations')")[0][0] is None
        assert con.run("SELECT holder FROM migration_lock")[0][0] == "other-runner"
    finally:
        con.close()


def test_a_run_whose_lease_was_taken_over_commits_no_further_migration(
    fresh_database: Callable[..., str], tmp_path: Path
) -> None:
    # Given a migration during which another runner takes the lock over (as after a lease ran out;
    # here the migration itself rewrites the row, which its own transaction then sees)
    url = fresh_database()
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    (copy / "099_taken_over.sql").write_text(
        "CREATE TABLE taken_over (id int);\nUPDATE migration_lock SET holder = 'the-next-runner';\n"
    )

    # When it runs, then that migration rolls back instead of committing beside the new holder's
    with pytest.raises(MigrationError, match="lease ran out"):
        run_on(url, copy)
    con = db.connect(config.parse_database_url(url), timeout=30)
    try:
        assert con.run("SELECT to_regclass('taken_over')")[0][0] is None
        assert con.run("SELECT count(*) FROM schema_migrations WHERE version = '099'")[0][0] == 0
    finally:
        con.close()
