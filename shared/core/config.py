"""Settings read once from the environment, validated, and passed around as values."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, overload
from urllib.parse import parse_qs, unquote, urlsplit

from shared.core.errors import ConfigurationError

T = TypeVar("T", int, float)

# Local runs keep their generated URL signing keys here (deployed functions read a secret instead).
DEFAULT_IMAGE_URL_KEYS_FILE = Path(__file__).resolve().parents[2] / ".data" / "image-url-keys.json"
# Local runs keep the key of the audit trail's query hashes here (deployed: a secret).
DEFAULT_AUDIT_KEY_FILE = Path(__file__).resolve().parents[2] / ".data" / "audit-query-key.json"
DUPLICATE_SOP_POLICIES = ("reject", "overwrite")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class DatabaseParams:
    """Where and how to connect to PostgreSQL."""

    user: str
    database: str
    host: str | None = None
    port: int = 5432
    password: str | None = None
    unix_sock: str | None = None
    sslmode: str = "prefer"
    # libpq's sslrootcert: a file of the certificate authorities to trust (None: the system's).
    sslrootcert: str | None = None
    # Production: the username and password live in this Secrets Manager secret, not here.
    secret_arn: str | None = None

    def describe(self) -> str:
        """Say where we connect, without the password, for error messages."""
        where = self.unix_sock or f"{self.host}:{self.port}"
        who = self.user or "(user from secret)"
        return f"{who}@{where}/{self.database}"


@dataclass(frozen=True)
class Settings:
    """Every setting the functions and scripts read, validated."""

    database: DatabaseParams
    db_timeout_seconds: float
    max_upload_bytes: int
    max_image_pixels: int
    dense_hu_threshold: float
    session_ttl_seconds: int
    api_base_url: str | None
    # Signed image URLs: valid for at least this long (and at most twice as long, see shared.auth.signing).
    image_url_ttl_seconds: int = 3600
    # Deployed: the Secrets Manager secret with the signing keys. Local: a generated key file.
    image_url_secret_arn: str | None = None
    image_url_keys_file: Path = DEFAULT_IMAGE_URL_KEYS_FILE
    # A warm images container keeps whole images it served, up to this many MB (0: none).
    image_cache_mb: int = 64
    # How long audit_events rows are kept (six years); the cleanup job removes older ones.
    audit_retention_days: int = 2190
    # The S3 tier (shared/storage/): the bucket (None: PostgreSQL only, no presigned uploads), and
    # the size from which an image goes there (None: only images Lambda could not answer whole).
    images_bucket: str | None = None
    storage_tier_s3_min_bytes: int | None = None
    # The largest file a presigned upload (POST /api/v1/scans/uploads) may send to the bucket.
    max_direct_upload_bytes: int = 500_000_000
    # Deployed: the secret whose value CloudFront sends as X-Origin-Verify (shared/auth/origin.py); None:
    # no origin check (local gateway, tests).
    origin_verify_secret_arn: str | None = None
    # The key of the keyed hashes a DICOMweb search leaves in the audit trail (shared.auth.query_hash):
    # deployed, a Secrets Manager secret; locally a generated key file.
    audit_key_secret_arn: str | None = None
    audit_key_file: Path = DEFAULT_AUDIT_KEY_FILE
    # A second file with a SOP Instance UID the owner already holds: refused (409, 0x0111), or it
    # replaces the stored instance (audited), for sites that send corrections.
    duplicate_sop_policy: str = "reject"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Build settings from environment variables; a bad value raises ConfigurationError naming it."""
        base_url = env.get("API_BASE_URL", "").strip().rstrip("/") or None
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("API_BASE_URL must start with http:// or https://")
        url_secret_arn = env.get("IMAGE_URL_SECRET_ARN", "").strip() or None
        if url_secret_arn is not None and not url_secret_arn.startswith("arn:"):
            raise ConfigurationError("IMAGE_URL_SECRET_ARN must be a Secrets Manager ARN (arn:aws:secretsmanager:...)")
        url_ttl = _number(env, "IMAGE_URL_TTL_SECONDS", 3600, int, minimum=60)
        if url_ttl > 7 * 86400:
            raise ConfigurationError(f"IMAGE_URL_TTL_SECONDS must be at most 604800 (7 days), got {url_ttl}")
        keys_file = env.get("IMAGE_URL_KEYS_FILE", "").strip()
        audit_key_file = env.get("AUDIT_KEY_FILE", "").strip()
        return cls(
            database=database_params_from_env(env),
            db_timeout_seconds=_number(env, "DB_TIMEOUT_SECONDS", 5.0, float, minimum=0.1),
            max_upload_bytes=_number(env, "MAX_UPLOAD_BYTES", 4_500_000, int, minimum=1),
            max_image_pixels=_number(env, "MAX_IMAGE_PIXELS", 40_000_000, int, minimum=1),
            dense_hu_threshold=_number(env, "DENSE_HU_THRESHOLD", 300.0, float, minimum=-1024.0),
            session_ttl_seconds=_number(env, "SESSION_TTL_SECONDS", 43_200, int, minimum=60),
            api_base_url=base_url,
            image_url_ttl_seconds=url_ttl,
            image_url_secret_arn=url_secret_arn,
            image_url_keys_file=Path(keys_file) if keys_file else DEFAULT_IMAGE_URL_KEYS_FILE,
            image_cache_mb=_number(env, "IMAGE_CACHE_MB", 64, int, minimum=0),
            audit_retention_days=_number(env, "AUDIT_RETENTION_DAYS", 2190, int, minimum=1),
            images_bucket=_bucket_name(env.get("IMAGES_BUCKET", "")),
            storage_tier_s3_min_bytes=_number(env, "STORAGE_TIER_S3_MIN_BYTES", None, int, minimum=1),
            max_direct_upload_bytes=_number(env, "MAX_DIRECT_UPLOAD_BYTES", 500_000_000, int, minimum=1),
            origin_verify_secret_arn=_secret_arn(env, "ORIGIN_VERIFY_SECRET_ARN"),
            audit_key_secret_arn=_secret_arn(env, "AUDIT_KEY_SECRET_ARN"),
            audit_key_file=Path(audit_key_file) if audit_key_file else DEFAULT_AUDIT_KEY_FILE,
            duplicate_sop_policy=_choice(env, "DUPLICATE_SOP_POLICY", DUPLICATE_SOP_POLICIES),
        )


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first when unset), case-insensitive."""
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _secret_arn(env: Mapping[str, str], name: str) -> str | None:
    """A Secrets Manager ARN, or None when unset."""
    arn = env.get(name, "").strip() or None
    if arn is not None and not arn.startswith("arn:"):
        raise ConfigurationError(f"{name} must be a Secrets Manager ARN (arn:aws:secretsmanager:...)")
    return arn


def _bucket_name(raw: str) -> str | None:
    """An S3 bucket name (3-63 lower-case letters, digits, dots, hyphens), or None when unset."""
    name = raw.strip()
    if not name:
        return None
    if not _BUCKET_NAME.fullmatch(name):
        raise ConfigurationError(f"IMAGES_BUCKET must be an S3 bucket name, got {name!r}")
    return name


@overload
def _number(env: Mapping[str, str], name: str, default: T, kind: type[T], *, minimum: T) -> T: ...
@overload
def _number(env: Mapping[str, str], name: str, default: None, kind: type[T], *, minimum: T) -> T | None: ...
def _number(env: Mapping[str, str], name: str, default: T | None, kind: type[T], *, minimum: T) -> T | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def database_params_from_env(env: Mapping[str, str]) -> DatabaseParams:
    """DATABASE_URL when set, else DB_HOST with DB_SECRET_ARN (production), else the libpq PG* variables."""
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return parse_database_url(url)
    host = env.get("DB_HOST", "").strip()
    if host:
        secret_arn = env.get("DB_SECRET_ARN", "").strip()
        if not secret_arn:
            raise ConfigurationError("DB_HOST is set but DB_SECRET_ARN is not: the credentials come from that secret")
        if not secret_arn.startswith("arn:"):
            raise ConfigurationError("DB_SECRET_ARN must be a Secrets Manager ARN (arn:aws:secretsmanager:...)")
        params = _params(
            user="",
            password=None,
            host=host,
            port_text=env.get("DB_PORT", ""),
            database=env.get("DB_NAME", "").strip() or "postgres",
            # Production default: TLS with the server certificate and host name verified.
            sslmode=env.get("DB_SSLMODE", "verify-full"),
            source="DB_HOST/DB_PORT/DB_NAME/DB_SSLMODE",
        )
        return dataclasses.replace(params, secret_arn=secret_arn)
    user = env.get("PGUSER", "postgres")
    host = env.get("PGHOST", "localhost")
    return _params(
        user=user,
        password=env.get("PGPASSWORD") or None,
        host=host,
        port_text=env.get("PGPORT", ""),
        database=env.get("PGDATABASE") or user,
        sslmode=env.get("PGSSLMODE", "prefer"),
        sslrootcert=env.get("PGSSLROOTCERT") or None,
        source="PG* variables",
    )


def parse_database_url(url: str) -> DatabaseParams:
    """Parse postgresql://user:password@host:port/db?host=/socket/dir&sslmode=require&sslrootcert=/ca.pem."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError("DATABASE_URL must start with postgresql://")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    try:
        port_text = str(parts.port) if parts.port else query.get("port", "")
    except ValueError:
        raise ConfigurationError("DATABASE_URL has an invalid port") from None
    user = unquote(parts.username or query.get("user", "postgres"))
    return _params(
        user=user,
        password=unquote(parts.password) if parts.password else query.get("password") or None,
        host=query.get("host") or parts.hostname or "localhost",
        port_text=port_text,
        database=unquote(parts.path.lstrip("/")) or query.get("dbname") or user,
        sslmode=query.get("sslmode", "prefer"),
        sslrootcert=query.get("sslrootcert") or None,
        source="DATABASE_URL",
    )


def _params(
    *,
    user: str,
    password: str | None,
    host: str,
    port_text: str,
    database: str,
    sslmode: str,
    source: str,
    sslrootcert: str | None = None,
) -> DatabaseParams:
    try:
        port = int(port_text) if port_text else 5432
    except ValueError:
        raise ConfigurationError(f"{source}: port must be a number") from None
    if sslmode not in SSL_MODES:
        raise ConfigurationError(f"{source}: sslmode must be one of {', '.join(SSL_MODES)}")
    if host.startswith("/"):
        # libpq convention: a host that is a path names the socket directory.
        return DatabaseParams(
            user=user,
            password=password,
            database=database,
            port=port,
            unix_sock=f"{host.rstrip('/')}/.s.PGSQL.{port}",
            sslmode="disable",
        )
    return DatabaseParams(
        user=user,
        password=password,
        database=database,
        host=host,
        port=port,
        sslmode=sslmode,
        sslrootcert=sslrootcert,
    )


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
