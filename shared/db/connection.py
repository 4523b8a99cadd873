"""Every query the functions run, over one lazily opened pg8000 connection per container.

Functions are verb_noun, take the connection first and keyword arguments after, never commit
(the caller owns the transaction) and return dataclasses. SQL lives in module constants with
pg8000 `:name` parameters; the only formatted piece is an image column taken from a fixed map.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import socket
import ssl
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pg8000 import core as pg8000_core
from pg8000 import native as pg8000_native
from pg8000.converters import make_params
from pg8000.exceptions import DatabaseError, InterfaceError
from pybase64 import b64encode as _b64encode  # SIMD base64: ~30 us for 200 KB

from shared.config import DatabaseParams, Settings, get_settings
from shared.dicom_index import DicomIndex
from shared.errors import DatabaseUnavailable, InvalidRequest, ScanNotFound, UserExists

log = logging.getLogger(__name__)

R = TypeVar("R")

UNIQUE_VIOLATION = "23505"
# character_not_in_repertoire (a NUL in text), untranslatable_character: the client's text, not our bug.
BAD_TEXT = frozenset({"22021", "22P05"})
# A warm container may sit frozen for minutes; its socket can be dead without our knowing.
CHECK_AFTER_IDLE_SECONDS = 30.0


class ImageType(StrEnum):
    """The four renderings stored for every scan."""

    original = "original"
    preview = "preview"
    annotated = "annotated"
    thumbnail = "thumbnail"


# ---------------------------------------------------------------- connections


@functools.lru_cache(maxsize=512)
def _to_statement(sql: str) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
    return pg8000_native.to_statement(sql)  # type: ignore[no-any-return]


_DESCRIBE_UNNAMED_PORTAL = pg8000_core._create_message(pg8000_core.DESCRIBE, pg8000_core.PORTAL + pg8000_core.NULL_BYTE)
_BIND_HEAD = pg8000_core.NULL_BYTE * 2  # unnamed portal and statement
_BYTEA_OID = 17
_BYTES_TYPES = (bytes, bytearray, memoryview)

# What an invocation keeps back from the time Lambda gives it, to answer once the database has had
# the rest. Turning DatabaseUnavailable into the JSON 503 takes milliseconds; the margin covers what
# can stall it (a GC pause, a slow log write, the socket timeout firing late). That work does not
# grow with the function's timeout, so the margin is a fixed time rather than a share of it.
ANSWER_MARGIN_SECONDS = 0.5


class _Budget:
    """The database time one invocation has left: DB_TIMEOUT_SECONDS of waiting, all before `deadline`."""

    __slots__ = ("deadline", "seconds_left")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.seconds_left: float | None = None  # read from the settings at the first wait

    def timeout(self) -> float:
        """The socket timeout for the next wait: all that is left; DatabaseUnavailable when nothing is."""
        if self.seconds_left is None:
            self.seconds_left = get_settings().db_timeout_seconds
        left = min(self.seconds_left, self.deadline - time.monotonic())
        if left <= 0:
            log.warning("the invocation's database time is spent: answering 503")
            raise DatabaseUnavailable("The database is unavailable; try again shortly.")
        return left

    def spend(self, started: float) -> None:
        """Charge the wait that began at `started` (time.monotonic())."""
        if self.seconds_left is not None:
            self.seconds_left -= time.monotonic() - started


# A contextvar, not a thread-local: Mangum runs the app in a task on the invoking thread, and
# Starlette runs sync code in a thread pool; both copy the context, so both see the budget.
_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("database_budget", default=None)


@contextlib.contextmanager
def invocation_budget(remaining_ms: int | None) -> Iterator[None]:
    """Bound every database wait of one invocation (connect, each statement, the reconnect) together.

    In all they wait at most DB_TIMEOUT_SECONDS, and none goes on past the invocation's end less
    ANSWER_MARGIN_SECONDS: a database that stops answering costs a 503 with Retry-After, never the
    platform's timeout error. `remaining_ms` is the Lambda context's get_remaining_time_in_millis()
    (None: no end known). Outside this block, every wait gets DB_TIMEOUT_SECONDS, as scripts want.
    """
    deadline = math.inf if remaining_ms is None else time.monotonic() + remaining_ms / 1000 - ANSWER_MARGIN_SECONDS
    token = _budget.set(_Budget(deadline))
    try:
        yield
    finally:
        _budget.reset(token)


class Connection(pg8000_native.Connection):  # type: ignore[misc]  # pg8000 ships no types
    """pg8000's native connection: one network round trip per statement, `:name` translation cached.

    pg8000's run() takes three round trips for a statement with parameters (Parse + Sync, then
    Describe + Sync, then Bind + Execute + Sync), each a wait on the server. Here Parse, Bind,
    Describe (portal), Execute and Sync go out together, as libpq's PQexecParams sends them, and the
    answers come back in one read: ParseComplete, BindComplete, RowDescription (or NoData), the
    rows, CommandComplete, ReadyForQuery. The statement stays unnamed: named prepared statements
    would pin every client session to one database connection on RDS Proxy.

    pg8000 also re-parses the SQL character by character on every run(): ~0.5 ms for our INSERT.
    Our SQL is a fixed set of module constants, so each is translated once. This leans on pg8000
    1.31's message helpers (pinned in requirements.txt); tests/test_connection.py holds it to
    pg8000's own results and errors.

    pg8000 sets the socket timeout once, at connect. Here each statement sets it to what the
    invocation's budget has left (see invocation_budget), and outside one to `default_timeout`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The socket timeout of a statement outside any invocation's budget.
        self.default_timeout: float | None = kwargs.get("timeout")
        super().__init__(*args, **kwargs)

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        """Run one statement; `:name` parameters as in pg8000.native. Its wait comes out of the budget."""
        return self._within_budget(lambda: self._run(sql, stream, types, params))

    def run_with_raw_bytes(self, sql: str, params: dict[str, Any], *, column_count: int, raw_column: int) -> Any:
        """run(), except that the bytea column `raw_column` of the `column_count` arrives in binary
        format, as the bytes themselves: pg8000 asks for text, in which a bytea is hex, twice its
        size on the wire and decoded in Python (or base64 from encode(), which is slow to make)."""
        formats = tuple(1 if i == raw_column else 0 for i in range(column_count))
        statement, make_vals = _to_statement(sql)

        def execute() -> Any:
            self._context = self._execute_in_one_trip(statement, make_vals(params), (), formats)
            return self._context.rows

        return self._within_budget(execute)

    def _within_budget(self, execute: Callable[[], Any]) -> Any:
        sock = self._usock
        if sock is None:
            raise InterfaceError("connection is closed")
        budget = _budget.get()
        if budget is None:
            if sock.gettimeout() != self.default_timeout:
                sock.settimeout(self.default_timeout)
            return execute()
        sock.settimeout(budget.timeout())
        started = time.monotonic()
        try:
            return execute()
        finally:
            budget.spend(started)

    def _run(self, sql: str, stream: Any, types: Any, params: dict[str, Any]) -> Any:
        if (not params and stream is None) or stream is not None:
            return super().run(sql, stream=stream, types=types, **params)
        statement, make_vals = _to_statement(sql)
        oids = () if types is None else make_vals(defaultdict(lambda: None, types))
        self._context = self._execute_in_one_trip(statement, make_vals(params), oids)
        return self._context.rows

    def handle_DATA_ROW(self, data: bytes, context: Any) -> None:  # pg8000 dispatches by this name
        raw = getattr(context, "raw_column", None)
        if raw is None:
            super().handle_DATA_ROW(data, context)
            return
        idx, row = 2, list[Any]()
        for i, func in enumerate(context.input_funcs):
            length = pg8000_core.i_unpack(data, idx)[0]
            idx += 4
            if length == -1:
                row.append(None)
                continue
            value = data[idx : idx + length]
            idx += length
            row.append(bytes(value) if i == raw else func(str(value, encoding=self._client_encoding)))
        context.rows.append(row)

    def _execute_in_one_trip(
        self, statement: str, values: tuple[Any, ...], oids: Any, formats: tuple[int, ...] = ()
    ) -> Any:
        context = pg8000_core.Context(statement)
        if 1 in formats:
            context.raw_column = formats.index(1)
        # bytes parameters go in binary format, declared bytea: the bytes themselves, where pg8000
        # sends hex text, twice the size, encoded here and decoded by the server (an upload's ~1 MB
        # of images: ~3.5 of ~7 ms of its INSERT). Every other parameter goes as pg8000 sends it.
        binary = [isinstance(value, _BYTES_TYPES) for value in values]
        if any(binary):
            declared = list(oids) + [0] * (len(values) - len(oids))
            oids = [_BYTEA_OID if raw else oid for oid, raw in zip(declared, binary, strict=True)]
        parse = bytearray(pg8000_core.NULL_BYTE)
        parse.extend(statement.encode(self._client_encoding) + pg8000_core.NULL_BYTE)
        parse.extend(pg8000_core.H_pack(len(oids)))
        for oid in oids:
            parse.extend(pg8000_core.i_pack(0 if oid == -1 else oid))
        bind = bytearray(_BIND_HEAD)
        if any(binary):
            bind.extend(pg8000_core.H_pack(len(binary)))
            for raw in binary:
                bind.extend(pg8000_core.H_pack(1 if raw else 0))
        else:
            bind.extend(pg8000_core.H_pack(0))  # every parameter as text
        params = make_params(self.py_types, tuple(None if raw else v for v, raw in zip(values, binary, strict=True)))
        bind.extend(pg8000_core.H_pack(len(params)))
        for value, raw, param in zip(values, binary, params, strict=True):
            if raw:
                bind.extend(pg8000_core.i_pack(memoryview(value).nbytes))
                bind += value
            elif param is None:
                bind.extend(pg8000_core.i_pack(-1))
            else:
                encoded = param.encode(self._client_encoding)
                bind.extend(pg8000_core.i_pack(len(encoded)))
                bind.extend(encoded)
        bind.extend(pg8000_core.H_pack(len(formats)))  # none: every result column as text
        for code in formats:
            bind.extend(pg8000_core.H_pack(code))
        try:
            self._send_message(pg8000_core.PARSE, parse)
            self._send_message(pg8000_core.BIND, bind)
            pg8000_core._write(self._sock, _DESCRIBE_UNNAMED_PORTAL)
            pg8000_core._write(self._sock, pg8000_core.EXECUTE_MSG)
            pg8000_core._write(self._sock, pg8000_core.SYNC_MSG)
            pg8000_core._flush(self._sock)
        except AttributeError:
            if self._sock is None:
                raise InterfaceError("connection is closed") from None
            raise
        self.handle_messages(context)
        return context


def _ssl_context(sslmode: str) -> ssl.SSLContext | bool | None:
    # pg8000: False = no TLS, None = TLS if the server offers it (unverified), a context = TLS required.
    if sslmode == "disable":
        return False
    if sslmode in ("allow", "prefer"):
        return None
    context = ssl.create_default_context()
    if sslmode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = sslmode == "verify-full"
    return context


def _open_socket(params: DatabaseParams, timeout: float) -> socket.socket:
    if params.unix_sock:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(params.unix_sock)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((params.host or "localhost", params.port), timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def connect(params: DatabaseParams, *, timeout: float) -> Connection:
    """Open a pg8000 connection with a socket timeout so a dead peer never hangs a request.

    With a secret ARN the credentials come from Secrets Manager, cached per container. When a
    connect with cached credentials fails, the secret is read again once: if it changed (it was
    rotated), we retry with the new one. pg8000 usually reports a refused password as SQLSTATE
    28P01, but now and then as a network error (the server closes the socket as it answers; seen
    about 1 in 300 here), so the refresh does not depend on which error came back. The retry gets
    what is left of `timeout`: it bounds the whole connect.
    """
    if params.secret_arn is None:
        return _connect(params, user=params.user, password=params.password, timeout=timeout)
    from shared.secrets import get_database_credentials

    started = time.monotonic()
    cached = get_database_credentials(params.secret_arn)
    try:
        return _connect(params, user=cached.username, password=cached.password, timeout=timeout)
    except DatabaseUnavailable:
        current = get_database_credentials(params.secret_arn, refresh=True)
        left = timeout - (time.monotonic() - started)
        if current == cached or left <= 0:
            raise
        log.warning("database secret changed since it was cached; connecting with the new one")
        return _connect(params, user=current.username, password=current.password, timeout=left)


def _connect(params: DatabaseParams, *, user: str, password: str | None, timeout: float) -> Connection:
    sock: socket.socket | None = None
    try:
        # Our own socket, so that a failed handshake (say, a timeout) closes it instead of leaking it.
        sock = _open_socket(params, timeout)
        return Connection(
            user,
            host=params.host,
            sock=sock,
            database=params.database,
            password=password,
            timeout=timeout,
            ssl_context=_ssl_context(params.sslmode),
            application_name="ctscan-store",
        )
    except (InterfaceError, OSError) as exc:
        _close_quietly(sock)
        log.warning("database connect failed: %s (%s)", type(exc).__name__, params.describe())
        raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
    except DatabaseError as exc:
        _close_quietly(sock)
        # Authentication or a missing database: the server answered, but we cannot work.
        log.error("database refused connection: SQLSTATE %s (%s)", _sqlstate(exc), params.describe())
        raise DatabaseUnavailable("The database is unavailable; try again shortly.") from None


def _close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class _Holder(threading.local):
    con: Connection | None = None
    last_used: float = 0.0


_holder = _Holder()
# Every container connection this process opened, so a local gateway shutting its containers down
# can close them (their threads are gone by then). Weak: a dropped connection leaves the set.
_opened: weakref.WeakSet[Connection] = weakref.WeakSet()


def _connection(settings: Settings) -> Connection:
    con = _holder.con
    now = time.monotonic()
    if con is not None and now - _holder.last_used > CHECK_AFTER_IDLE_SECONDS:
        try:
            con.run("SELECT 1")
        except (InterfaceError, OSError):
            close_connection()
            con = None
    if con is None:
        budget = _budget.get()
        if budget is None:
            con = connect(settings.database, timeout=settings.db_timeout_seconds)
        else:
            timeout, started = budget.timeout(), time.monotonic()
            try:
                con = connect(settings.database, timeout=timeout)
            finally:
                budget.spend(started)
        con.default_timeout = settings.db_timeout_seconds
        _holder.con = con
        _opened.add(con)
    _holder.last_used = now
    return con


def close_connection() -> None:
    """Drop this container's connection (it is reopened on next use)."""
    con, _holder.con = _holder.con, None
    if con is not None:
        _close_without_waiting(con)


def close_all_connections() -> None:
    """Close every container connection of this process (the local gateway's shutdown)."""
    for con in list(_opened):
        _close_without_waiting(con)
    _opened.clear()


def _close_without_waiting(con: Connection) -> None:
    # pg8000 says goodbye (a Terminate message) before it closes. To a server that stopped reading,
    # with a send buffer still full, a blocking send would wait out a whole timeout once more.
    with contextlib.suppress(Exception):
        con._usock.settimeout(0)
    with contextlib.suppress(Exception):
        con.close()


def call(fn: Callable[..., R], /, **kwargs: Any) -> R:
    """Run fn(con, **kwargs) on this container's connection; reconnect once on a network error.

    Only connection-level failures are retried. A second failure answers 503, never a hang; so
    does an invocation's database time running out (see invocation_budget), retry or not.
    """
    settings = get_settings()
    for attempt in (1, 2):
        con = _connection(settings)
        try:
            return fn(con, **kwargs)
        except DatabaseError as exc:
            if _sqlstate(exc) in BAD_TEXT:
                raise InvalidRequest("Text parameters must not contain NUL or other invalid characters.") from None
            raise
        except (InterfaceError, OSError) as exc:
            close_connection()
            log.warning("database network error (attempt %d): %s", attempt, type(exc).__name__)
            if attempt == 2:
                raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
        except DatabaseUnavailable:
            # The invocation's database time ran out part-way, perhaps inside a transaction: drop
            # the connection (the server rolls back) so that the next invocation starts clean.
            close_connection()
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def transaction(con: Connection) -> Iterator[Connection]:
    """Run the block in one transaction: commit on success, roll back on any error."""
    con.run("BEGIN")
    try:
        yield con
    except BaseException:
        with contextlib.suppress(InterfaceError, OSError, DatabaseError):
            con.run("ROLLBACK")
        raise
    con.run("COMMIT")


def _sqlstate(exc: DatabaseError) -> str:
    detail = exc.args[0] if exc.args else None
    return str(detail.get("C", "")) if isinstance(detail, dict) else ""


# ---------------------------------------------------------------- users and sessions


@dataclass(frozen=True)
class Owner:
    """The authenticated user a request acts for."""

    id: int
    username: str


@dataclass(frozen=True)
class Credentials:
    """A user's id and stored password hash, for login."""

    user_id: int
    password_hash: str


INSERT_USER = """
    INSERT INTO users (username, password_hash) VALUES (:username, :password_hash) RETURNING id
"""
UPDATE_USER_PASSWORD = "UPDATE users SET password_hash = :password_hash WHERE username = :username RETURNING id"  # noqa: S105
SELECT_CREDENTIALS = "SELECT id, password_hash FROM users WHERE username = :username"
SELECT_USER_ID = "SELECT id FROM users WHERE username = :username"
# Held until the transaction ends: a password change or reset waits for a login that verified the
# old password, or that login sees the new hash; and a user's sessions are created one at a time.
LOCK_USER = "SELECT password_hash FROM users WHERE id = :user_id FOR UPDATE"
# The new session, and in the same statement the end of the user's expired sessions and of the
# oldest live ones beyond :max_sessions - 1 others (the DELETE sees the table without the new row).
INSERT_SESSION = """
    WITH ended AS (
        DELETE FROM sessions
        WHERE user_id = CAST(:user_id AS bigint)
          AND (expires_at <= now() OR token_hash IN (
              SELECT token_hash FROM sessions
              WHERE user_id = CAST(:user_id AS bigint) AND expires_at > now()
              ORDER BY created_at DESC, token_hash DESC
              OFFSET CAST(:max_sessions AS integer) - 1))
    )
    INSERT INTO sessions (token_hash, user_id, expires_at)
    VALUES (:token_hash, CAST(:user_id AS bigint), now() + make_interval(secs => :ttl_seconds))
    RETURNING expires_at
"""
SELECT_SESSION_OWNER = """
    SELECT u.id, u.username FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.token_hash = :token_hash AND s.expires_at > now()
"""
DELETE_SESSION = "DELETE FROM sessions WHERE token_hash = :token_hash"
DELETE_USER_SESSIONS = "DELETE FROM sessions WHERE user_id = :user_id"


def create_user(con: Connection, *, username: str, password_hash: str) -> int:
    """Insert a user; UserExists when the name is taken."""
    try:
        rows = con.run(INSERT_USER, username=username, password_hash=password_hash)
    except DatabaseError as exc:
        if _sqlstate(exc) == UNIQUE_VIOLATION:
            raise UserExists(f"user {username!r} already exists") from None
        raise
    return int(rows[0][0])


def set_user_password(con: Connection, *, username: str, password_hash: str) -> int | None:
    """Replace a user's password hash; the user's id, or None when there is no such user."""
    rows = con.run(UPDATE_USER_PASSWORD, username=username, password_hash=password_hash)
    return int(rows[0][0]) if rows else None


def get_credentials(con: Connection, *, username: str) -> Credentials | None:
    """The stored password hash for a username, or None."""
    rows = con.run(SELECT_CREDENTIALS, username=username)
    return Credentials(int(rows[0][0]), str(rows[0][1])) if rows else None


def get_user_id(con: Connection, *, username: str) -> int | None:
    """The id of a username, or None."""
    rows = con.run(SELECT_USER_ID, username=username)
    return int(rows[0][0]) if rows else None


def lock_user(con: Connection, *, user_id: int) -> str | None:
    """Lock a user's row until the transaction ends; its current password hash, or None when gone."""
    rows = con.run(LOCK_USER, user_id=user_id)
    return str(rows[0][0]) if rows else None


def create_session(con: Connection, *, token_hash: str, user_id: int, ttl_seconds: int, max_sessions: int) -> datetime:
    """Store a session by the hash of its token, ending the user's expired sessions and the oldest
    live ones beyond max_sessions; returns when the new one expires."""
    rows = con.run(
        INSERT_SESSION, token_hash=token_hash, user_id=user_id, ttl_seconds=ttl_seconds, max_sessions=max_sessions
    )
    expires_at: datetime = rows[0][0]
    return expires_at


def get_session_owner(con: Connection, *, token_hash: str) -> Owner | None:
    """The owner of an unexpired session, or None."""
    rows = con.run(SELECT_SESSION_OWNER, token_hash=token_hash)
    return Owner(int(rows[0][0]), str(rows[0][1])) if rows else None


def delete_session(con: Connection, *, token_hash: str) -> None:
    """End a session."""
    con.run(DELETE_SESSION, token_hash=token_hash)


def delete_user_sessions(con: Connection, *, user_id: int) -> int:
    """End every session of a user; returns how many."""
    con.run(DELETE_USER_SESSIONS, user_id=user_id)
    return int(con.row_count or 0)


# ---------------------------------------------------------------- login throttling


@dataclass(frozen=True)
class LoginLimits:
    """How many failed logins a window allows, per username and per source IP."""

    window_seconds: int
    max_per_username: int
    max_per_source: int


# Seconds until this username's and this source's failures in the window are back under their
# limits (the limit-th newest leaving the window lets the next attempt through), NULL while under
# both. :failure_id, the caller's own pending failure (or NULL), is not counted.
_LOGIN_WAIT = """
    SELECT CAST(ceil(extract(epoch FROM max(wait))) AS integer) AS seconds FROM (
        (SELECT at + make_interval(secs => CAST(:window_seconds AS integer)) - now() AS wait
         FROM login_failures
         WHERE username_key = CAST(:username_key AS char(64))
           AND at > now() - make_interval(secs => CAST(:window_seconds AS integer))
           AND id IS DISTINCT FROM CAST(:failure_id AS bigint)
         ORDER BY at DESC OFFSET CAST(:max_per_username AS integer) - 1 LIMIT 1)
        UNION ALL
        (SELECT at + make_interval(secs => CAST(:window_seconds AS integer)) - now() AS wait
         FROM login_failures
         WHERE source_ip = CAST(:source_ip AS text)
           AND at > now() - make_interval(secs => CAST(:window_seconds AS integer))
           AND id IS DISTINCT FROM CAST(:failure_id AS bigint)
         ORDER BY at DESC OFFSET CAST(:max_per_source AS integer) - 1 LIMIT 1)
    ) waits
"""
# Counts the window and records the attempt as a pending failure only when under both limits;
# clears this username's and this source's failures that have left the window.
RESERVE_LOGIN_ATTEMPT = f"""
    WITH wait AS ({_LOGIN_WAIT}),
    pruned AS (
        DELETE FROM login_failures
        WHERE (username_key = CAST(:username_key AS char(64)) OR source_ip = CAST(:source_ip AS text))
          AND at <= now() - make_interval(secs => CAST(:window_seconds AS integer))
    ),
    pending AS (
        INSERT INTO login_failures (username_key, source_ip)
        SELECT CAST(:username_key AS char(64)), CAST(:source_ip AS text) FROM wait WHERE seconds IS NULL
        RETURNING id
    )
    SELECT (SELECT id FROM pending), (SELECT seconds FROM wait)
"""
# Counts again once the pending failure is committed, now seeing every concurrent attempt that got
# as far, and withdraws it when they have passed a limit together.
CONFIRM_LOGIN_ATTEMPT = f"""
    WITH wait AS ({_LOGIN_WAIT}),
    withdrawn AS (
        DELETE FROM login_failures
        WHERE id = CAST(:failure_id AS bigint) AND (SELECT seconds FROM wait) IS NOT NULL
    )
    SELECT seconds FROM wait
"""
DELETE_LOGIN_FAILURES = "DELETE FROM login_failures WHERE username_key = :username_key"


def reserve_login_attempt(con: Connection, *, username_key: str, source_ip: str, limits: LoginLimits) -> int | None:
    """Count a login attempt as a failure in advance; None when it may go ahead, else seconds to wait.

    Two statements, outside any transaction: the first records the pending failure only while the
    window is under both limits; the second, once that row is committed, counts again and withdraws
    it if concurrent attempts passed a limit meanwhile. A burst of parallel guesses thus never gets
    more than a limit's worth through (it may be refused a little early instead). An attempt that
    is refused is not recorded, so it does not extend the window.
    """
    params = {
        "username_key": username_key,
        "source_ip": source_ip,
        "window_seconds": limits.window_seconds,
        "max_per_username": limits.max_per_username,
        "max_per_source": limits.max_per_source,
    }
    failure_id, seconds = con.run(RESERVE_LOGIN_ATTEMPT, failure_id=None, **params)[0]
    if failure_id is not None:
        seconds = con.run(CONFIRM_LOGIN_ATTEMPT, failure_id=failure_id, **params)[0][0]
    return None if seconds is None else max(1, int(seconds))


def delete_login_failures(con: Connection, *, username_key: str) -> None:
    """Forget a username's failed logins (after a successful one)."""
    con.run(DELETE_LOGIN_FAILURES, username_key=username_key)


# ---------------------------------------------------------------- scans


@dataclass(frozen=True)
class Scan:
    """A scan's metadata and analysis results, never its image bytes."""

    id: str
    owner_id: int
    filename: str
    content_type: str
    width: int
    height: int
    file_hash: str
    results: dict[str, Any]
    created_at: datetime
    dicom: DicomIndex | None = None
    file_size: int = 0  # bytes of the original file


@dataclass(frozen=True)
class NewScan:
    """Everything one upload writes, in one row."""

    id: str
    owner_id: int
    filename: str
    content_type: str
    width: int
    height: int
    results_json: str
    original: bytes
    preview: bytes
    annotated: bytes
    thumbnail: bytes
    file_hash: str
    preview_hash: str
    annotated_hash: str
    thumbnail_hash: str
    dicom: DicomIndex | None
    # The images whose bytes are already in the S3 tier (their bytes here give only their size).
    in_s3: frozenset[ImageType] = frozenset()


DICOM_FIELDS = tuple(DicomIndex.__dataclass_fields__)
# octet_length() of a TOAST-ed value reads its pointer, never the bytes; an S3 original's size is in the row.
SCAN_COLUMNS = (
    "id, owner_id, filename, content_type, width, height, file_hash, results, created_at, "
    "COALESCE(original_size, octet_length(original_image_data)), " + ", ".join(DICOM_FIELDS)
)
_BASE_FIELD_COUNT = 10

INSERT_SCAN = f"""
    INSERT INTO scans (id, owner_id, filename, content_type, width, height, results,
                       original_image_data, preview_image_data, annotated_image_data, thumbnail_image_data,
                       file_hash, preview_hash, annotated_hash, thumbnail_hash,
                       original_storage, preview_storage, annotated_storage, thumbnail_storage,
                       original_size, preview_size, annotated_size, thumbnail_size, {", ".join(DICOM_FIELDS)})
    VALUES (:id, :owner_id, :filename, :content_type, :width, :height, CAST(:results AS jsonb),
            :original, :preview, :annotated, :thumbnail,
            :file_hash, :preview_hash, :annotated_hash, :thumbnail_hash,
            :original_storage, :preview_storage, :annotated_storage, :thumbnail_storage,
            CAST(:original_size AS bigint), CAST(:preview_size AS bigint), CAST(:annotated_size AS bigint),
            CAST(:thumbnail_size AS bigint),
            {", ".join(f":{name}" for name in DICOM_FIELDS)})
    ON CONFLICT (owner_id, file_hash) DO NOTHING
    RETURNING {SCAN_COLUMNS}
"""
SELECT_SCAN = f"SELECT {SCAN_COLUMNS} FROM scans WHERE id = :scan_id AND owner_id = :owner_id"
SELECT_SCAN_BY_HASH = f"SELECT {SCAN_COLUMNS} FROM scans WHERE owner_id = :owner_id AND file_hash = :file_hash"
SELECT_SCANS_FIRST_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans WHERE owner_id = :owner_id
    ORDER BY created_at DESC, id DESC LIMIT :limit
"""
SELECT_SCANS_NEXT_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans
    WHERE owner_id = :owner_id AND (created_at, id) < (:before_at, :before_id)
    ORDER BY created_at DESC, id DESC LIMIT :limit
"""
# Reading order within a series: instance number, then slice position; a missing one sorts last.
# The expressions match the indexes of migration 004 so the keyset comparison is an index range.
_INSTANCE_KEY = "COALESCE(instance_number, 2147483647)"
_POSITION_KEY = "COALESCE(slice_position, 'Infinity'::float8)"
_SERIES_KEY = "COALESCE(series_instance_uid, '')"
SELECT_SERIES_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans
    WHERE owner_id = :owner_id AND series_instance_uid = :series_uid
      AND (CAST(:study_uid AS text) IS NULL OR study_instance_uid = CAST(:study_uid AS text))
      AND ({_INSTANCE_KEY}, {_POSITION_KEY}, id)
          > (CAST(:after_instance AS integer), CAST(:after_position AS float8), CAST(:after_id AS text))
    ORDER BY {_INSTANCE_KEY}, {_POSITION_KEY}, id LIMIT :limit
"""
SELECT_STUDY_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans
    WHERE owner_id = :owner_id AND study_instance_uid = :study_uid
      AND ({_SERIES_KEY}, {_INSTANCE_KEY}, {_POSITION_KEY}, id)
          > (CAST(:after_series AS text), CAST(:after_instance AS integer), CAST(:after_position AS float8),
             CAST(:after_id AS text))
    ORDER BY {_SERIES_KEY}, {_INSTANCE_KEY}, {_POSITION_KEY}, id LIMIT :limit
"""
# The delete and its audit row (204, or 404 when there was no such scan of this owner) in one statement.
DELETE_SCAN = """
    WITH gone AS (
        DELETE FROM scans WHERE id = :scan_id AND owner_id = :owner_id RETURNING id
    ), audit AS (
        INSERT INTO audit_events (user_id, action, scan_id, via, status, source_ip, request_id)
        SELECT :owner_id, 'scan.delete', left(CAST(:scan_id AS text), 64), 'token',
               CASE WHEN EXISTS (SELECT FROM gone) THEN 204 ELSE 404 END,
               CAST(:source_ip AS text), CAST(:request_id AS text)
    )
    SELECT count(*) FROM gone
"""


def _scan(row: list[Any]) -> Scan:
    dicom_values = row[_BASE_FIELD_COUNT:]
    dicom = None
    if row[3] == "application/dicom":
        values = dict(zip(DICOM_FIELDS, dicom_values, strict=True))
        spacing = values["pixel_spacing_mm"]
        values["pixel_spacing_mm"] = (float(spacing[0]), float(spacing[1])) if spacing else None
        dicom = DicomIndex(**values)
    return Scan(
        id=row[0],
        owner_id=int(row[1]),
        filename=row[2],
        content_type=row[3],
        width=int(row[4]),
        height=int(row[5]),
        file_hash=row[6],
        results=row[7],
        created_at=row[8],
        file_size=int(row[9]),
        dicom=dicom,
    )


def insert_scan(con: Connection, *, scan: NewScan) -> Scan | None:
    """Insert a scan with all its images; None when this owner already has a scan with this hash."""
    dicom: dict[str, Any] = (
        {name: getattr(scan.dicom, name) for name in DICOM_FIELDS}
        if scan.dicom is not None
        else dict.fromkeys(DICOM_FIELDS)
    )
    if dicom["pixel_spacing_mm"] is not None:
        dicom["pixel_spacing_mm"] = list(dicom["pixel_spacing_mm"])
    images: dict[str, Any] = {}
    for kind, data in (
        (ImageType.original, scan.original),
        (ImageType.preview, scan.preview),
        (ImageType.annotated, scan.annotated),
        (ImageType.thumbnail, scan.thumbnail),
    ):
        in_s3 = kind in scan.in_s3
        images[kind.value] = None if in_s3 else data
        images[f"{kind.value}_storage"] = "s3" if in_s3 else "postgres"
        images[f"{kind.value}_size"] = len(data) if in_s3 else None
    rows = con.run(
        INSERT_SCAN,
        id=scan.id,
        owner_id=scan.owner_id,
        filename=scan.filename,
        content_type=scan.content_type,
        width=scan.width,
        height=scan.height,
        results=scan.results_json,
        **images,
        file_hash=scan.file_hash,
        preview_hash=scan.preview_hash,
        annotated_hash=scan.annotated_hash,
        thumbnail_hash=scan.thumbnail_hash,
        **dicom,
    )
    return _scan(rows[0]) if rows else None


def find_scan_by_hash(con: Connection, *, owner_id: int, file_hash: str) -> Scan | None:
    """This owner's scan of a file with this SHA-256, or None."""
    rows = con.run(SELECT_SCAN_BY_HASH, owner_id=owner_id, file_hash=file_hash)
    return _scan(rows[0]) if rows else None


def get_scan(con: Connection, *, scan_id: str, owner_id: int) -> Scan:
    """One of this owner's scans; ScanNotFound otherwise (also for other owners' scans)."""
    rows = con.run(SELECT_SCAN, scan_id=scan_id, owner_id=owner_id)
    if not rows:
        raise ScanNotFound("No scan with this id.")
    return _scan(rows[0])


def list_scans_for_owner(
    con: Connection, *, owner_id: int, limit: int, before: tuple[datetime, str] | None = None
) -> list[Scan]:
    """This owner's scans, newest first, strictly older than `before` (keyset pagination)."""
    if before is None:
        rows = con.run(SELECT_SCANS_FIRST_PAGE, owner_id=owner_id, limit=limit)
    else:
        rows = con.run(SELECT_SCANS_NEXT_PAGE, owner_id=owner_id, before_at=before[0], before_id=before[1], limit=limit)
    return [_scan(row) for row in rows]


@dataclass(frozen=True)
class SeriesPosition:
    """A place in reading order (series, instance number, slice position, id): where a page ends."""

    series_uid: str
    instance_key: int
    position_key: float
    scan_id: str


SERIES_START = SeriesPosition("", -(2**31), float("-inf"), "")


def series_position(scan: Scan) -> SeriesPosition:
    """Where a scan sits in reading order, with the same defaults for missing values as the SQL."""
    dicom = scan.dicom
    instance = dicom.instance_number if dicom and dicom.instance_number is not None else 2**31 - 1
    position = dicom.slice_position if dicom and dicom.slice_position is not None else float("inf")
    series = (dicom.series_instance_uid if dicom else None) or ""
    return SeriesPosition(series, instance, position, scan.id)


def list_scans_in_series(
    con: Connection,
    *,
    owner_id: int,
    limit: int,
    series_uid: str | None,
    study_uid: str | None,
    after: SeriesPosition = SERIES_START,
) -> list[Scan]:
    """This owner's scans of one series (or study), in reading order, after `after` (keyset pagination)."""
    common = {
        "owner_id": owner_id,
        "limit": limit,
        "after_instance": after.instance_key,
        "after_position": after.position_key,
        "after_id": after.scan_id,
    }
    if series_uid is not None:
        rows = con.run(SELECT_SERIES_PAGE, series_uid=series_uid, study_uid=study_uid, **common)
    elif study_uid is not None:
        rows = con.run(SELECT_STUDY_PAGE, study_uid=study_uid, after_series=after.series_uid, **common)
    else:
        raise ValueError("a series or a study is required")
    return [_scan(row) for row in rows]


def delete_scan(
    con: Connection, *, scan_id: str, owner_id: int, source_ip: str | None = None, request_id: str | None = None
) -> None:
    """Delete one of this owner's scans, audited in the same statement; ScanNotFound when there is none."""
    deleted = con.run(DELETE_SCAN, scan_id=scan_id, owner_id=owner_id, source_ip=source_ip, request_id=request_id)
    if not deleted[0][0]:
        raise ScanNotFound("No scan with this id.")


# ---------------------------------------------------------------- image reads (the images function)


@dataclass(frozen=True)
class ImageRead:
    """What a request asks of one image, beyond which image: span, conditions, body or not.

    `start`/`stop` as ByteRange has them (start < 0: the last -start bytes; stop None: to the end),
    used only when `ranged`. `if_none_match` holds the hashes named by If-None-Match (`"*"` in it
    matches any). `known_sha256`: the hash of bytes the caller already holds (then none come back).
    """

    with_data: bool = True
    ranged: bool = False
    start: int = 0
    stop: int | None = None
    if_range: str | None = None
    if_none_match: tuple[str, ...] = ()
    known_sha256: str | None = None


WHOLE_IMAGE = ImageRead()


@dataclass(frozen=True)
class ImagePart:
    """What one image read found: type, hash, size, the HTTP status it makes, the span [first, stop)
    and its bytes as base64.

    `base64` is None when the bytes were not asked for (HEAD), not needed (304, 416) or already held
    by the caller (ImageRead.known_sha256).
    """

    content_type: str
    sha256: str
    size: int
    status: int
    first: int
    stop: int
    base64: str | None
    # Where the bytes live: "postgres" (then `base64` holds them when asked for) or "s3" (the
    # caller fetches them from the object at shared.storage.object_key(owner_id, sha256)).
    storage: str = "postgres"
    owner_id: int = 0


# One call per read, whatever the request: HEAD, revalidation (304), If-Range, Range (206 or 416)
# or the whole image (200). read_scan_image() (migration 005) resolves the token, the owner and the
# image, decides the status, writes the audit row and returns the span's bytes as base64, in one
# round trip and one transaction; see its comments for why it is a PL/pgSQL function.
READ_SCAN_IMAGE = """
    SELECT reader, content_type, sha256, size, status, first, stop, storage, data
    FROM read_scan_image(
        CAST(:token_hash AS text), :scan_id, :image_type, :with_data, :ranged, :start, :stop,
        CAST(:if_range AS text), CAST(:if_none_match AS text[]), CAST(:known_sha256 AS text),
        CAST(:source_ip AS text), CAST(:request_id AS text)
    )
"""


def read_image(
    con: Connection,
    *,
    token_hash: str | None,
    scan_id: str,
    image_type: ImageType,
    read: ImageRead = WHOLE_IMAGE,
    source_ip: str | None = None,
    request_id: str | None = None,
) -> ImagePart | None:
    """A scan's image, the read audited in the same call (read_scan_image()).

    With a token hash: the session owner's scan; None when there is no such unexpired session.
    Without (None): any scan by id alone, audited as its owner's read via a signature; call it only
    after a valid URL signature named this scan and type. ScanNotFound when there is no such scan.
    """
    params = dict(
        token_hash=token_hash,
        scan_id=scan_id,
        image_type=image_type.value,
        with_data=read.with_data,
        ranged=read.ranged,
        start=read.start,
        stop=read.stop,
        if_range=read.if_range,
        if_none_match=list(read.if_none_match),
        known_sha256=read.known_sha256,
        source_ip=source_ip,
        request_id=request_id,
    )
    # The image bytes (column 8) in binary format: they cross the wire once, as themselves.
    rows = con.run_with_raw_bytes(READ_SCAN_IMAGE, params, column_count=9, raw_column=8)
    if not rows:
        return None
    reader, content_type, digest, size, status, first, stop, storage, data = rows[0]
    if size is None or storage is None:  # no such scan, or it was deleted while the call read it
        raise ScanNotFound("No scan with this id.")
    encoded = None if data is None else _b64encode(data).decode("ascii")
    return ImagePart(content_type, digest, int(size), int(status), int(first), int(stop), encoded, storage, int(reader))
