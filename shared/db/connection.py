"""One lazily opened connection per container: connect (TLS, Secrets Manager credentials), check
before reuse after idling, reconnect once on a network error, transactions, SQLSTATE mapping."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pg8000.exceptions import DatabaseError, InterfaceError

from shared.core.config import DatabaseParams, Settings, get_settings
from shared.core.errors import DatabaseUnavailable, InvalidRequest
from shared.db.budget import current_budget
from shared.db.protocol import Connection

log = logging.getLogger(__name__)

R = TypeVar("R")

UNIQUE_VIOLATION = "23505"
# character_not_in_repertoire (a NUL in text), untranslatable_character: the client's text, not our bug.
BAD_TEXT = frozenset({"22021", "22P05"})
# A warm container may sit frozen for minutes; its socket can be dead without our knowing.
CHECK_AFTER_IDLE_SECONDS = 30.0


def _ssl_context(sslmode: str, sslrootcert: str | None = None) -> ssl.SSLContext | bool | None:
    """pg8000's TLS setting for libpq's sslmode and sslrootcert.

    As libpq: verify-ca checks the server's certificate chain, verify-full its host name too, and
    require checks nothing unless a root certificate file is named (then it acts as verify-ca).
    sslrootcert names the certificate authorities to trust; without it (or "system"), the system's.
    """
    # pg8000: False = no TLS, None = TLS if the server offers it (unverified), a context = TLS required.
    if sslmode == "disable":
        return False
    if sslmode in ("allow", "prefer"):
        return None
    cafile = None if sslrootcert in (None, "system") else sslrootcert
    context = ssl.create_default_context(cafile=cafile)
    if sslmode == "require" and cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = sslmode == "verify-full"
    # The TLS 1.3 key share in P-256, the group every TLS 1.3 server must support (RFC 8446 9.1) and
    # PostgreSQL's default (ssl_ecdh_curve): OpenSSL's X25519 share made such a server ask again
    # (HelloRetryRequest), a round trip more on every connect (tests/test_transport.py counts them).
    context.set_ecdh_curve("prime256v1")
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
    try:
        # No Nagle: pg8000 writes a statement in pieces (Parse, Bind, ..., Sync) and the last small
        # piece would wait for the server's delayed ACK of the one before, ~40 ms on Linux, on every
        # statement whose messages span more than one segment (an upload's INSERT). libpq and most
        # drivers set it too. TLS wraps this same socket (pg8000 upgrades it), so it holds for both.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        sock.close()
        raise
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
    from shared.core.secrets import get_database_credentials

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
            ssl_context=_ssl_context(params.sslmode, params.sslrootcert),
            application_name="ctscan-store",
        )
    except (InterfaceError, OSError) as exc:
        _close_quietly(sock)
        log.warning("database connect failed: %s (%s)", type(exc).__name__, params.describe())
        raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
    except DatabaseError as exc:
        _close_quietly(sock)
        # Authentication or a missing database: the server answered, but we cannot work.
        log.error("database refused connection: SQLSTATE %s (%s)", sqlstate(exc), params.describe())
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
        budget = current_budget()
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
            if sqlstate(exc) in BAD_TEXT:
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
    """Run the block in one transaction: commit on success, roll back on any error.

    On our Connection, BEGIN goes out with the block's first statement (one round trip less), and a
    block that ran no statement sends nothing at all; a block may send COMMIT with its last
    statement (con.commit_with_next_statement()), one more round trip less. A plain pg8000
    connection (some tests and tools hand one in) gets BEGIN and COMMIT in round trips of their own.
    """
    lazy = isinstance(con, Connection)
    if lazy:
        con.begin_with_next_statement()
    else:
        con.run("BEGIN")
    try:
        yield con
    except BaseException:
        if lazy:
            con.take_commit_sent()
        if not (lazy and con.take_pending_begin()):
            with contextlib.suppress(InterfaceError, OSError, DatabaseError):
                con.run("ROLLBACK")
        raise
    if lazy and (con.take_pending_begin() | con.take_commit_sent()):
        return  # nothing ran, or COMMIT went out with the last statement
    con.run("COMMIT")


def sqlstate(exc: DatabaseError) -> str:
    """The SQLSTATE code of a database error, or \"\" when it carries none."""
    detail = exc.args[0] if exc.args else None
    return str(detail.get("C", "")) if isinstance(detail, dict) else ""
