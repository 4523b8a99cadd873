"""Database credentials (and other secrets) from AWS Secrets Manager, cached per warm container.

boto3 is imported on first use only: local runs and the cold start of a container that already
has its credentials cached never pay for it. It comes with the Lambda Python runtime.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from shared.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseCredentials:
    """A username and password; repr hides the password so it never reaches a log."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"DatabaseCredentials(username={self.username!r}, password='***')"


_cache: dict[str, DatabaseCredentials] = {}
_lock = threading.Lock()
_client: Any = None


def _secrets_client() -> Any:
    global _client
    if _client is None:
        import boto3  # provided by the Lambda runtime; a dev dependency locally

        # botocore logs whole response bodies at DEBUG, the secret's password included:
        # never let a DEBUG log level elsewhere turn that on.
        for name in ("botocore", "boto3"):
            logging.getLogger(name).setLevel(logging.INFO)

        from botocore.config import Config

        # botocore's defaults (60 s to connect, 60 s to read, retries) would outlast every
        # function's timeout; a request would end in the platform's timeout instead of our 503.
        _client = boto3.client(
            "secretsmanager",
            config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 2, "mode": "standard"}),
        )
    return _client


def get_database_credentials(secret_arn: str, *, refresh: bool = False) -> DatabaseCredentials:
    """The username and password in an RDS-managed secret (JSON); refresh=True fetches it again."""
    with _lock:
        cached = _cache.get(secret_arn)
        if cached is not None and not refresh:
            return cached
        try:
            response = _secrets_client().get_secret_value(SecretId=secret_arn)
            document = json.loads(response["SecretString"])
            credentials = DatabaseCredentials(str(document["username"]), str(document["password"]))
        except Exception as exc:  # botocore errors, missing fields, bad JSON: never log the value
            log.error("could not read the database secret: %s", type(exc).__name__)
            raise DatabaseUnavailable("The database is unavailable; try again shortly.") from None
        _cache[secret_arn] = credentials
        return credentials


def read_secret_string(secret_arn: str) -> str:
    """A secret's current SecretString, uncached (callers cache what they parse from it); botocore errors pass."""
    return str(_secrets_client().get_secret_value(SecretId=secret_arn)["SecretString"])


def clear_cache() -> None:
    """Forget cached credentials and the client (tests; a new container)."""
    global _client
    with _lock:
        _cache.clear()
        _client = None
