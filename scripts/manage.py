"""Ops and dev commands: create users, issue tokens, migrate. Never deployed.

python scripts/manage.py user NAME [--password P]   (or PASSWORD in the environment; a reset ends the user's sessions)
python scripts/manage.py token NAME                  prints a fresh token as the last line
python scripts/manage.py migrate                     prints the migration report as JSON
python scripts/manage.py audit [--name NAME] [--limit N]   the audit trail, newest first
python scripts/manage.py cleanup                     the cleanup job (as the nightly function runs it): JSON report
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from env import migrate, prepare_database  # type: ignore[import-not-found]

from shared import audit, auth, cleanup, db
from shared.config import get_settings
from shared.errors import DomainError


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
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(no events)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    user = commands.add_parser("user", help="create a user (or reset its password and end its sessions)")
    user.add_argument("name")
    user.add_argument("--password", default=os.environ.get("PASSWORD"))
    token = commands.add_parser("token", help="print a fresh bearer token for a user")
    token.add_argument("name")
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser("cleanup", help="remove expired sessions, throttle and audit rows; VACUUM; print the report")
    trail = commands.add_parser("audit", help="the audit trail, newest first (this listing is audited too)")
    trail.add_argument("--name", help="only this user's events")
    trail.add_argument("--limit", type=int, default=50, choices=range(1, 10_001), metavar="1..10000")
    args = parser.parse_args(argv)
    try:
        return run(parser, args)
    except DomainError as error:
        # A user's mistake (a short password, say) deserves one clear line, not a traceback.
        print(f"{parser.prog} {args.command}: {error.message}", file=sys.stderr)
        return 2


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    prepare_database()
    if args.command == "migrate":
        print(json.dumps(migrate(), indent=2))
    elif args.command == "cleanup":
        migrate()
        print(json.dumps(cleanup.run_cleanup(get_settings()), indent=2))
    elif args.command == "audit":
        migrate()
        print_audit(args.name, args.limit)
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
