"""`make run`: the images bucket on a local S3 (if set), database, migrations and the DICOMweb backfill, a dev
user and token, then the gateway on :3000."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

from scripts.dev.env import migrate, prepare_database
from shared import auth, db
from shared.core.config import get_settings


def ensure_dev_user(username: str) -> str:
    """Create the dev user if missing and return a fresh token for it."""
    user_id = db.call(db.get_user_id, username=username)
    if user_id is None:
        password = os.environ.get("DEV_PASSWORD") or secrets.token_urlsafe(12)
        user_id = db.call(db.create_user, username=username, password_hash=auth.hash_password(password))
        print(f"created user {username!r} with password {password!r}")
    return db.call(auth.issue_session, user_id=user_id, ttl_seconds=get_settings().session_ttl_seconds).token


def ensure_local_bucket() -> str | None:
    """With IMAGES_BUCKET set and a local S3 (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL: a moto server),
    create the bucket when it is missing. Real AWS is never touched: the stack creates its bucket.
    Returns the line to print (None without a bucket); raises RuntimeError, in one line, when the
    endpoint cannot be reached or refuses."""
    bucket = os.environ.get("IMAGES_BUCKET", "").strip()
    if not bucket:
        return None
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "").strip()
    if not endpoint:
        return f"images bucket: {bucket} on AWS (created by the stack, never here)"
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None  # as the functions'
        client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
        try:
            client.head_bucket(Bucket=bucket)
            return f"images bucket: {bucket} at {endpoint}"
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
        where = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        client.create_bucket(Bucket=bucket, **where)
    except (BotoCoreError, ClientError) as exc:
        raise RuntimeError(f"images bucket {bucket} at {endpoint}: {exc}") from None
    return f"images bucket: created {bucket} at {endpoint}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--containers", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOG_FORMAT", "text")  # readable lines here; LOG_FORMAT=json: as deployed

    try:
        bucket = ensure_local_bucket()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    if bucket:
        print(bucket)
    url = prepare_database()
    embedded = "host=/" in url
    print(f"database: {'embedded PostgreSQL in .data/pg' if embedded else 'DATABASE_URL'}")
    report = migrate(backfill=True)
    print(f"migrations: applied {report['applied']}, already applied {len(report['alreadyApplied'])}")  # type: ignore[arg-type]
    backfilled: Any = report["dicomweb_backfill"]  # DICOM scans stored before migration 010, for DICOMweb
    if backfilled["described"] or backfilled["conflictCount"] or backfilled["failedCount"]:
        print(
            f"dicomweb backfill: described {backfilled['described']}, conflicts {backfilled['conflicts']}, "
            f"failed {backfilled['failed']}"
        )
    token = ensure_dev_user("dev")
    print(f"dev token: {token}")
    print(f'try: curl -H "Authorization: Bearer {token}" http://{args.host}:{args.port}/api/v1/scans')
    sys.stdout.flush()

    from scripts.dev.localgw.__main__ import main as localgw_main

    return localgw_main(["--host", args.host, "--port", str(args.port), "--containers", str(args.containers)])


if __name__ == "__main__":
    raise SystemExit(main())
