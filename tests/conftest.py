"""A real PostgreSQL for every test: DATABASE_URL's server, else an embedded one (pgserver).

Each run creates a fresh database on that server, applies the migrations we ship through the
migrate function, and drops the database at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pg8000.native
import pytest

from shared import auth, db
from shared.auth import query_hash, signing
from shared.core import config, observability
from tests.lambda_client import LambdaClient

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_PGDATA = ROOT / ".data" / "test-pg"


def admin_connection(url: str) -> pg8000.native.Connection:
    """A plain connection to a server URL, for test setup."""
    return db.connect(config.parse_database_url(url), timeout=30)


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url(postgres_url: str, through_pgbouncer: Callable[..., str]) -> str:
    """A URL of a running PostgreSQL server we may create databases on. With TEST_POOLER=pgbouncer,
    that server through pgbouncer in transaction mode: the whole suite as behind a transaction
    pooler (RDS Proxy multiplexes the same way), where nothing may lean on a session."""
    pooler = os.environ.get("TEST_POOLER", "").strip()
    if pooler not in ("", "pgbouncer"):
        raise pytest.UsageError(f"TEST_POOLER: pgbouncer or unset, not {pooler!r}")
    return through_pgbouncer(postgres_url) if pooler else postgres_url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL of the PostgreSQL server itself: DATABASE_URL's, else an embedded one."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        yield url
        return
    from scripts.dev.devdb import ensure_server, stop_server

    yield ensure_server(EMBEDDED_PGDATA, database="postgres")
    stop_server(EMBEDDED_PGDATA)


@pytest.fixture(scope="session")
def fresh_database(server_url: str) -> Iterator[Callable[..., str]]:
    """Factory for empty databases on the test server, dropped at the end of the session."""
    created: list[str] = []

    def make(prefix: str = "ctscan_test") -> str:
        name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
        con = admin_connection(server_url)
        try:
            con.run(f"CREATE DATABASE {pg8000.native.identifier(name)}")
        finally:
            con.close()
        created.append(name)
        return with_database(server_url, name)

    yield make
    db.close_connection()
    con = admin_connection(server_url)
    try:
        for name in created:
            con.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
    finally:
        con.close()


@pytest.fixture(scope="session")
def through_pgbouncer(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    """Factory: a database URL of the test server -> the same database through pgbouncer in
    transaction mode (tests/pgbouncer.py), with `pool_size` server connections per database."""
    from tests.pgbouncer import running_pgbouncer

    with contextlib.ExitStack() as stack:
        started: dict[int, str] = {}

        def through(url: str, *, pool_size: int = 20) -> str:
            if pool_size not in started:
                workdir = tmp_path_factory.mktemp(f"pgbouncer-{pool_size}")
                started[pool_size] = stack.enter_context(running_pgbouncer(postgres_url, workdir, pool_size=pool_size))
            return with_database(started[pool_size], urlsplit(url).path.lstrip("/"))

        yield through


@pytest.fixture(scope="session")
def database_url(fresh_database: Callable[..., str]) -> str:
    """The test database, migrated by the migrate function exactly as ops would run it."""
    url: str = fresh_database()
    os.environ["DATABASE_URL"] = url
    config.get_settings.cache_clear()
    from functions.migrate.handler import handler

    report = handler({}, None)
    assert report["status"] == "ok", report
    return url


@pytest.fixture(scope="session")
def unpooled_database_url(database_url: str, postgres_url: str) -> str:
    """The test database on the server itself, past any pooler (TEST_POOLER): for a test that acts
    on the server behind the functions' backs, and must not share a pooled server connection with them."""
    return with_database(postgres_url, urlsplit(database_url).path.lstrip("/"))


@pytest.fixture(scope="session", autouse=True)
def _session_keys(tmp_path_factory: pytest.TempPathFactory) -> None:
    # URL signing keys of this test session, generated on first use; never the developer's .data/ ones.
    os.environ["IMAGE_URL_KEYS_FILE"] = str(tmp_path_factory.mktemp("signing") / "image-url-keys.json")
    # Likewise the audit trail's query key: every QIDO search hashes its values with it.
    os.environ["AUDIT_KEY_FILE"] = str(tmp_path_factory.mktemp("audit-key") / "audit-query-key.json")
    config.get_settings.cache_clear()
    signing.clear_cache()
    query_hash.clear_cache()


class CurrentStdout:
    """Writes to whatever sys.stdout is at the time."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture(scope="session", autouse=True)
def _function_logs_to_current_stdout() -> None:
    # The functions' log handler (Powertools) keeps the sys.stdout it was made with; pytest swaps
    # sys.stdout per test (capsys, capfd, its own capture): write where print() and the EMF metrics do.
    handler = observability.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(CurrentStdout())


@pytest.fixture(scope="session", autouse=True)
def _event_loop_for_main_thread() -> None:
    # The Lambda runtime's main thread has an event loop for Mangum; give pytest's the same.
    asyncio.set_event_loop(asyncio.new_event_loop())


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Change settings for one test: set env vars on the returned monkeypatch; caches are reset."""
    config.get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    config.get_settings.cache_clear()
    db.close_connection()


@pytest.fixture
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test credentials and a region, set before moto or boto3 make any client."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }.items():
        monkeypatch.setenv(name, value)


# The moto bucket of the `s3` fixture (tests of the S3 tier, the cleanup job).
BUCKET = "ctscan-test-images"
REGION = "eu-central-1"


@pytest.fixture
def s3(settings_env: pytest.MonkeyPatch, fake_aws_credentials: None) -> Iterator[Any]:
    """A moto bucket the functions use as their images bucket; every image goes there (threshold 1 byte)."""
    # Imported here: most tests never touch S3, and moto takes a while to import.
    import boto3
    from moto import mock_aws

    from shared import storage
    from shared.http.image_cache import image_cache

    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        settings_env.setenv("IMAGES_BUCKET", BUCKET)
        settings_env.setenv("STORAGE_TIER_S3_MIN_BYTES", "1")
        storage.clear_cache()
        image_cache().clear()
        yield client
        storage.clear_cache()
        image_cache().clear()


@pytest.fixture
def pg(database_url: str) -> Iterator[pg8000.native.Connection]:
    """A connection to the clean, migrated test database (tables truncated before each test)."""
    con = admin_connection(database_url)
    con.run(
        "TRUNCATE scans, sessions, users, audit_events, login_failures, storage_orphans, uploads, request_outcomes"
        " RESTART IDENTITY CASCADE"
    )
    try:
        yield con
    finally:
        con.close()


@dataclass(frozen=True)
class User:
    """A user with a live session token."""

    id: int
    username: str
    password: str
    token: str


# One hash for all test users: scrypt is slow on purpose and the tests make many users.
_PASSWORD = "correct horse battery staple"
_PASSWORD_HASH = auth.hash_password(_PASSWORD)


@pytest.fixture
def make_user(pg: pg8000.native.Connection) -> Callable[..., User]:
    """Factory: a user with a session token, stored as the service stores them."""

    def make(username: str | None = None) -> User:
        name = username or f"user_{secrets.token_hex(4)}"
        user_id = db.create_user(pg, username=name, password_hash=_PASSWORD_HASH)
        session = auth.issue_session(pg, user_id=user_id, ttl_seconds=3600)
        return User(user_id, name, _PASSWORD, session.token)

    return make


@pytest.fixture
def alice(make_user: Callable[..., User]) -> User:
    user: User = make_user("alice")
    return user


@pytest.fixture
def bob(make_user: Callable[..., User]) -> User:
    user: User = make_user("bob")
    return user


@pytest.fixture
def api(pg: pg8000.native.Connection) -> LambdaClient:
    """Calls the real handlers with AWS-exact events, against the clean test database."""
    return LambdaClient()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 as an HTTP server on a free port of this machine, one per test module (their
    subprocesses reach it too): for the images bucket, presigned uploads and S3 stalls."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
