"""PostgreSQL: one connection per container and every query the request paths run.

The front door: other packages call `db.call(db.get_scan, ...)` and never reach into a submodule,
except for the table families that are packages' own business (`db.audit`, `db.migrations`). Each
name loads its module on first use, so the images function never loads the users or scans SQL.

    budget      the database time one invocation may spend (a 503 before Lambda's timeout)
    protocol    pg8000 extended: one round trip per statement, bytea in binary
    connection  connect, reuse, reconnect once, transactions, SQLSTATE
    outcomes    writes a retry must not run twice: their outcome, recorded under a key per call
    users       users, sessions and the login throttle
    scans       the scans table and its reading-order pages
    images      the four image kinds and the one-call image read (read_scan_image())
    uploads     presigned uploads in progress
    audit       the audit trail
    migrations  the migration runner
    backfill    the DICOM scans stored before DICOMweb (migration 010), for the backfill job

Functions are verb_noun, take the connection first and keyword arguments after, never commit (the
caller owns the transaction, `transaction(con)`) and return dataclasses. SQL lives in module
constants with pg8000 `:name` parameters; the only formatted piece is a column taken from a fixed map.
"""

from typing import TYPE_CHECKING

from shared.core.front_door import lazy_exports

if TYPE_CHECKING:
    from shared.db.budget import ANSWER_MARGIN_SECONDS, invocation_budget
    from shared.db.connection import (
        UNIQUE_VIOLATION,
        call,
        close_all_connections,
        close_connection,
        connect,
        sqlstate,
        transaction,
    )
    from shared.db.images import WHOLE_IMAGE, ImagePart, ImageRead, ImageType, read_image, set_read_status
    from shared.db.outcomes import call_once, record_outcome
    from shared.db.protocol import Connection
    from shared.db.scans import (
        SERIES_START,
        NewScan,
        Scan,
        SeriesPosition,
        delete_scan,
        find_owner_and_scan_by_hash,
        find_scan_by_hash,
        find_scans_by_hashes,
        get_scan,
        insert_scan,
        list_scans_for_owner,
        list_scans_in_series,
        replay_delete_scan,
        series_position,
    )
    from shared.db.uploads import StagedUpload, delete_upload, get_upload, insert_upload
    from shared.db.users import (
        Credentials,
        LoginLimits,
        Owner,
        create_session,
        create_user,
        create_viewer_token,
        delete_session,
        delete_user_sessions,
        get_session_owner,
        get_user_id,
        lock_user_forgetting_failures,
        reserve_login_attempt,
        set_user_password,
    )
else:  # each name loads with its module on first use (shared/core/front_door.py)
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "budget": ("ANSWER_MARGIN_SECONDS", "invocation_budget"),
            "connection": (
                "UNIQUE_VIOLATION",
                "call",
                "call_once",
                "close_all_connections",
                "close_connection",
                "connect",
                "sqlstate",
                "transaction",
            ),
            "outcomes": ("call_once", "record_outcome"),
            "images": ("WHOLE_IMAGE", "ImagePart", "ImageRead", "ImageType", "read_image", "set_read_status"),
            "protocol": ("Connection",),
            "scans": (
                "SERIES_START",
                "NewScan",
                "Scan",
                "SeriesPosition",
                "delete_scan",
                "find_owner_and_scan_by_hash",
                "find_scan_by_hash",
                "find_scans_by_hashes",
                "get_scan",
                "insert_scan",
                "list_scans_for_owner",
                "list_scans_in_series",
                "replay_delete_scan",
                "series_position",
            ),
            "uploads": ("StagedUpload", "delete_upload", "get_upload", "insert_upload"),
            "users": (
                "Credentials",
                "LoginLimits",
                "Owner",
                "create_session",
                "create_user",
                "create_viewer_token",
                "delete_session",
                "delete_user_sessions",
                "get_session_owner",
                "get_user_id",
                "lock_user_forgetting_failures",
                "reserve_login_attempt",
                "set_user_password",
            ),
        },
    )

__all__ = [
    "ANSWER_MARGIN_SECONDS",
    "SERIES_START",
    "UNIQUE_VIOLATION",
    "WHOLE_IMAGE",
    "Connection",
    "Credentials",
    "ImagePart",
    "ImageRead",
    "ImageType",
    "LoginLimits",
    "NewScan",
    "Owner",
    "Scan",
    "SeriesPosition",
    "StagedUpload",
    "call",
    "call_once",
    "close_all_connections",
    "close_connection",
    "connect",
    "create_session",
    "create_user",
    "create_viewer_token",
    "delete_scan",
    "delete_session",
    "delete_upload",
    "delete_user_sessions",
    "find_owner_and_scan_by_hash",
    "find_scan_by_hash",
    "find_scans_by_hashes",
    "get_scan",
    "get_session_owner",
    "get_upload",
    "get_user_id",
    "insert_scan",
    "insert_upload",
    "invocation_budget",
    "list_scans_for_owner",
    "list_scans_in_series",
    "lock_user_forgetting_failures",
    "read_image",
    "record_outcome",
    "replay_delete_scan",
    "reserve_login_attempt",
    "series_position",
    "set_read_status",
    "set_user_password",
    "sqlstate",
    "transaction",
]
