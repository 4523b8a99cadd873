"""Ops and dev commands: create users, issue tokens, migrate. Never deployed.

python -m scripts.ops.manage user NAME [--password P]
    (or PASSWORD in the environment; a reset ends the user's sessions)
python -m scripts.ops.manage token NAME                  prints a fresh token as the last line
python -m scripts.ops.manage migrate                     migrations, then the DICOMweb backfill: the JSON report
python -m scripts.ops.manage audit [--name NAME] [--limit N]   the audit trail, newest first
python -m scripts.ops.manage audit-search --keyword PatientName --value 'Doe^Jane' [--limit N]
    who searched for this value through DICOMweb (by its keyed hash: the trail never holds it), newest first
python -m scripts.ops.manage cleanup                     the cleanup job (as the nightly function runs it): JSON report
python -m scripts.ops.manage move-to-s3 [--older-than 30d] [--min-bytes N] [--limit N]
python -m scripts.ops.manage move-to-postgres [--limit N]
    move existing images between the tiers (as the tiering function does): a progress bar on
    stderr, the JSON report on stdout. They need IMAGES_BUCKET and AWS credentials (locally, a moto
    server: AWS_ENDPOINT_URL_S3=http://127.0.0.1:PORT with any test credentials and AWS_REGION).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from scripts.dev.env import migrate, prepare_database
from shared import auth, db
from shared.core import observability
from shared.core.config import get_settings
from shared.core.errors import DomainError
from shared.db import audit
from shared.dicomweb import audit_search
from shared.jobs import cleanup, tiering


def create_user(username: str, password: str) -> None:
    created = db.call(auth.create_or_reset_user, username=username, password=password)
    print(f"created user {username}" if created else f"user {username} exists; password updated, sessions ended")


def issue_token(username: str) -> str:
    user_id = db.call(db.get_user_id, username=username)
    if user_id is None:
        raise SystemExit(f"no user {username!r}; create it with: make user NAME={username} PASSWORD=...")
    session = db.call(auth.issue_session, user_id=user_id, ttl_seconds=get_settings().session_ttl_seconds)
    return session.token


def print_audit(username: str | None, limit: int) -> None:
    def read(con: db.Connection) -> list[audit.Event]:
        with db.transaction(con):
            events = audit.recent(con, username=username, limit=limit)
            audit.record(con, action=audit.Action.admin_audit, status=200, via=audit.Via.admin)
        return events

    events = db.call(read)
    columns = ("at", "user", "action", "scan", "image", "via", "status", "source ip", "request id")
    rows = [
        (
            e.at.isoformat(timespec="seconds"),
            e.username or ("-" if e.user_id is None else f"#{e.user_id}"),
            e.action,
            e.scan_id or "-",
            e.image_type or "-",
            e.via or "-",
            str(e.status),
            e.source_ip or "-",
            e.request_id or "-",
        )
        for e in events
    ]
    print_table(columns, rows, empty="(no events)")


def print_searches(keyword: str, value: str, limit: int) -> None:
    lookup = audit_search.find_searches(keyword=keyword, value=value, limit=limit, origin=audit.NOWHERE)
    forms = ", ".join(f"{form.value} {sent!r}" for form, sent in lookup.forms.items())
    print(f"DICOMweb searches that sent {lookup.keyword} as {forms}, newest first:")
    columns = ("at", "user", "level", "results", "form", "query keys", "via", "source ip", "request id")
    rows = [
        (
            found.event.at.isoformat(timespec="seconds"),
            found.event.username or ("-" if found.event.user_id is None else f"#{found.event.user_id}"),
            found.event.level or "-",
            "-" if found.event.results is None else str(found.event.results),
            found.form.value,
            ",".join(found.event.query_keys) or "-",
            found.event.via or "-",
            found.event.source_ip or "-",
            found.event.request_id or "-",
        )
        for found in lookup.searches
    ]
    print_table(columns, rows, empty="(no searches)")


def print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]], *, empty: str) -> None:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print(empty)


class ProgressBar:
    """shared.jobs.tiering.Progress as a tqdm bar on stderr: images, and the bytes moved so far."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.bar: Any = None
        self.moved_bytes = 0

    def begin(self, total: int) -> None:
        from tqdm import tqdm  # requirements-run.txt: only these commands need it

        self.bar = tqdm(total=total, desc=self.direction, unit="image", file=sys.stderr, dynamic_ncols=True)

    def step(self, moved_bytes: int) -> None:
        self.moved_bytes += moved_bytes
        self.bar.set_postfix_str(f"{self.moved_bytes / 1e6:.1f} MB moved", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_s3_access() -> None:
    """Exit with a clear message when the moves could not reach the images bucket."""
    if get_settings().images_bucket is None:
        raise SystemExit(
            "IMAGES_BUCKET is not set: name the images bucket (and give AWS credentials; for a local "
            "moto server also AWS_ENDPOINT_URL_S3=http://127.0.0.1:PORT and AWS_REGION)"
        )
    import boto3  # a dev dependency here; the Lambda runtime's own there

    if boto3.Session().get_credentials() is None:
        raise SystemExit(
            "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(any values for a local moto server, with AWS_ENDPOINT_URL_S3)"
        )


def move_images(request: tiering.MoveRequest) -> int:
    """Run a move with a progress bar and print its report; 1 when it stopped at an error."""
    bar = ProgressBar(request.direction)
    try:
        report = tiering.run(get_settings(), request, progress=bar)
    finally:
        bar.close()
    print(json.dumps(report, indent=2))
    return 1 if "error" in report else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    user = commands.add_parser("user", help="create a user (or reset its password and end its sessions)")
    user.add_argument("name")
    user.add_argument("--password", default=os.environ.get("PASSWORD"))
    token = commands.add_parser("token", help="print a fresh bearer token for a user")
    token.add_argument("name")
    commands.add_parser(
        "migrate", help="apply pending migrations, then describe DICOM scans stored before DICOMweb; print the report"
    )
    commands.add_parser(
        "cleanup",
        help="remove expired sessions, throttle and audit rows, unreferenced S3 objects and expired uploads; "
        "VACUUM; print the report",
    )
    trail = commands.add_parser("audit", help="the audit trail, newest first (this listing is audited too)")
    trail.add_argument("--name", help="only this user's events")
    trail.add_argument("--limit", type=int, default=50, choices=range(1, 10_001), metavar="1..10000")
    searches = commands.add_parser(
        "audit-search",
        help="who searched for a value through DICOMweb (found by its keyed hash; this lookup is audited too)",
    )
    searches.add_argument("--keyword", required=True, help="a QIDO-RS matching key (PatientName, PatientID, ...)")
    searches.add_argument(
        "--value", required=True, help="the value (a person name in any case); its *value* form is looked for too"
    )
    searches.add_argument(
        "--limit", type=int, default=50, choices=range(1, audit_search.MAX_LIMIT + 1), metavar="1..1000"
    )
    to_s3 = commands.add_parser("move-to-s3", help="move PostgreSQL images to the S3 tier; print the report")
    to_s3.add_argument("--older-than", help="only scans created before this: an age (30d, 12h) or ISO timestamp")
    to_s3.add_argument("--min-bytes", type=int, help="only images of at least this many bytes (default: the threshold)")
    to_s3.add_argument("--limit", type=int, help="move at most this many images")
    to_postgres = commands.add_parser("move-to-postgres", help="move S3 images back into PostgreSQL; print the report")
    to_postgres.add_argument("--limit", type=int, help="move at most this many images")
    args = parser.parse_args(argv)
    try:
        return run(parser, args)
    except tiering.BadMoveRequest as error:
        print(f"{parser.prog} {args.command}: {error}", file=sys.stderr)
        return 2
    except DomainError as error:
        # A user's mistake (a short password, say) deserves one clear line, not a traceback.
        print(f"{parser.prog} {args.command}: {error.message}", file=sys.stderr)
        return 2


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # The functions' JSON log lines (the migrate function's, for one) go to stderr here: stdout
    # carries the command's own answer alone (a JSON report, a token), for scripts to read.
    handler = observability.logger.registered_handler
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(sys.stderr)
    prepare_database()
    if args.command == "migrate":
        print(json.dumps(migrate(backfill=True), indent=2))
    elif args.command == "cleanup":
        migrate()
        print(json.dumps(cleanup.run_cleanup(get_settings()), indent=2))
    elif args.command in ("move-to-s3", "move-to-postgres"):
        event: dict[str, Any] = {"direction": args.command.removeprefix("move-"), "limit": args.limit}
        if args.command == "move-to-s3":
            event |= {"olderThan": args.older_than, "minBytes": args.min_bytes}
        request = tiering.MoveRequest.from_event({name: value for name, value in event.items() if value is not None})
        check_s3_access()
        migrate()
        return move_images(request)
    elif args.command == "audit":
        migrate()
        print_audit(args.name, args.limit)
    elif args.command == "audit-search":
        migrate()
        print_searches(args.keyword, args.value, args.limit)
    elif args.command == "user":
        if not args.password:
            parser.error("give a password: --password P, or PASSWORD=P in the environment")
        migrate()
        create_user(args.name, args.password)
    else:
        print(f"token for {args.name} (expires in {get_settings().session_ttl_seconds} s):", file=sys.stderr)
        print(issue_token(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
