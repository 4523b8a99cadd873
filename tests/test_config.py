"""Settings: DATABASE_URL or PG* variables, validated with messages that name the setting."""

from __future__ import annotations

import pytest

from shared.core.config import Settings, parse_database_url
from shared.core.errors import ConfigurationError


def test_database_url_with_socket_directory() -> None:
    params = parse_database_url("postgresql://postgres@/ctscan?host=/tmp/pg&port=5433")
    assert params.unix_sock == "/tmp/pg/.s.PGSQL.5433"
    assert (params.user, params.database) == ("postgres", "ctscan")


def test_database_url_with_tcp_password_and_sslmode() -> None:
    params = parse_database_url("postgresql://app:p%40ss@db.internal:6543/scans?sslmode=verify-full")
    assert (params.host, params.port, params.user, params.password) == ("db.internal", 6543, "app", "p@ss")
    assert params.sslmode == "verify-full"
    assert "p@ss" not in params.describe()


def test_pg_variables_when_no_database_url() -> None:
    settings = Settings.from_env(
        {"PGHOST": "db", "PGPORT": "5433", "PGUSER": "svc", "PGPASSWORD": "pw", "PGDATABASE": "ct"}
    )
    assert (settings.database.host, settings.database.port, settings.database.database) == ("db", 5433, "ct")


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.max_upload_bytes == 4_500_000
    assert settings.session_ttl_seconds == 43_200
    assert settings.api_base_url is None
    assert settings.image_cache_mb == 64
    assert settings.audit_retention_days == 2190
    assert Settings.from_env({"AUDIT_RETENTION_DAYS": "3650", "IMAGE_CACHE_MB": "0"}).audit_retention_days == 3650


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_UPLOAD_BYTES": "lots"}, "MAX_UPLOAD_BYTES"),
        ({"SESSION_TTL_SECONDS": "5"}, "SESSION_TTL_SECONDS"),
        ({"DB_TIMEOUT_SECONDS": "0"}, "DB_TIMEOUT_SECONDS"),
        ({"AUDIT_RETENTION_DAYS": "0"}, "AUDIT_RETENTION_DAYS"),
        ({"IMAGE_CACHE_MB": "-1"}, "IMAGE_CACHE_MB"),
        ({"API_BASE_URL": "ftp://x"}, "API_BASE_URL"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://h/d?sslmode=sometimes"}, "sslmode"),
    ],
)
def test_bad_settings_fail_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)
