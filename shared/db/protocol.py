"""pg8000's native connection, extended: one network round trip per statement (PQexecParams' way),
bytea parameters and results in binary, `:name` translation cached, each wait out of the budget, and
a statement sent without waiting for its answer (send(), read later: libpq's pipeline mode, one deep).

Built on pg8000 1.31's message helpers (pinned in requirements.txt); tests/test_connection.py holds
it to pg8000's own results and errors.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pg8000 import core as pg8000_core
from pg8000 import native as pg8000_native
from pg8000.converters import make_params
from pg8000.exceptions import DatabaseError, InterfaceError

from shared.db.budget import current_budget


@functools.lru_cache(maxsize=512)
def _to_statement(sql: str) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
    return pg8000_native.to_statement(sql)  # type: ignore[no-any-return]


_DESCRIBE_UNNAMED_PORTAL = pg8000_core._create_message(pg8000_core.DESCRIBE, pg8000_core.PORTAL + pg8000_core.NULL_BYTE)
_BIND_HEAD = pg8000_core.NULL_BYTE * 2  # unnamed portal and statement
_BYTEA_OID = 17
_BYTES_TYPES = (bytes, bytearray, memoryview)


class Pending:
    """A statement sent with Connection.send() whose answer has not been read yet: result() reads it
    (or takes what the connection read before its next statement) and returns its rows or raises
    its error, as run() would have."""

    def __init__(self, con: Connection, context: Any) -> None:
        self._con: Connection | None = con
        self._context = context
        self._error: BaseException | None = None

    def result(self) -> Any:
        con = self._con
        if con is not None and con._pending is self:
            con.drain()
        if self._error is not None:
            raise self._error
        return self._context.rows

    def _read(self, con: Connection) -> None:
        self._con = None
        try:
            con._within_budget(lambda: con._read_answers(False, self._context))
        except DatabaseError as exc:  # the server's answer, read whole: the connection is in step
            self._error = exc
            raise
        except BaseException as exc:
            # The answer was not read whole (a network error, a timeout, the budget spent): the
            # connection is out of step and is closed, so that no statement reads this answer.
            self._error = exc
            with contextlib.suppress(Exception):
                con._usock.settimeout(0)
            with contextlib.suppress(Exception):
                con.close()
            raise


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

    A transaction's BEGIN goes out with its first statement, in the same write (see
    begin_with_next_statement), instead of a round trip of its own.

    pg8000 sets the socket timeout once, at connect. Here each statement sets it to what the
    invocation's budget has left (see invocation_budget), and outside one to `default_timeout`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The socket timeout of a statement outside any invocation's budget.
        self.default_timeout: float | None = kwargs.get("timeout")
        self._pending: Pending | None = None
        self._begin_pending = False
        self._commit_pending = False
        self._commit_sent = False
        super().__init__(*args, **kwargs)

    def begin_with_next_statement(self) -> None:
        """Open a transaction with the next statement: BEGIN (a simple Query) goes out in the same
        write as it, and both answers come back in one read. A round trip less per transaction; the
        server sees BEGIN, then the statement, as if sent one by one (through a pooler too)."""
        self._begin_pending = True
        self._commit_pending = self._commit_sent = False

    def commit_with_next_statement(self) -> None:
        """End the transaction with the next statement: COMMIT goes out in the same write, right
        after it, and both answers come back in one read. For a transaction's last statement (an
        audit row, say): a round trip less. If the statement fails, the server turns that COMMIT
        into a rollback, and the statement's error is raised as ever."""
        self._commit_pending = True

    def take_commit_sent(self) -> bool:
        """Whether COMMIT went out with a statement (see commit_with_next_statement); clears it and
        a COMMIT still waiting for a statement."""
        sent, self._commit_sent, self._commit_pending = self._commit_sent, False, False
        return sent

    def _send_pending_commit(self) -> bool:
        commit, self._commit_pending = self._commit_pending, False
        if commit:
            self.send_QUERY("COMMIT")
            self._commit_sent = True
        return commit

    def take_pending_begin(self) -> bool:
        """Whether a BEGIN was still waiting for a statement (it is not any more): a transaction that
        ran no statement has nothing to commit or roll back."""
        pending, self._begin_pending = self._begin_pending, False
        return pending

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        """Run one statement; `:name` parameters as in pg8000.native. Its wait comes out of the budget."""
        self.drain()
        return self._within_budget(lambda: self._run(sql, stream, types, params))

    def send(self, sql: str, **params: Any) -> Pending:
        """Send one statement with parameters, outside any transaction, and return without waiting
        for its answer: the server works on it while the caller does something else (STOW-RS
        analyses the next instance while the last one is written). Pending.result() reads the
        answer; so does the next statement on this connection, first, so the two stay in step.
        One statement is pending at a time."""
        self.drain()
        if self._begin_pending or self._commit_pending:
            raise InterfaceError("send() runs a statement of its own, outside a transaction")
        statement, make_vals = _to_statement(sql)
        context = self._within_budget(lambda: self._send_in_one_trip(statement, make_vals(params), ()))
        self._pending = Pending(self, context)
        return self._pending

    def drain(self) -> None:
        """Read the answer of the statement send() left pending, if any. Its own error (the
        server's) is kept for its result(); anything else is raised here too, and the connection,
        out of step, is closed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending._read(self)
        except DatabaseError:  # the statement's own error, for its result()
            return

    def run_with_raw_bytes(self, sql: str, params: dict[str, Any], *, column_count: int, raw_column: int) -> Any:
        """run(), except that the bytea column `raw_column` of the `column_count` arrives in binary
        format, as the bytes themselves: pg8000 asks for text, in which a bytea is hex, twice its
        size on the wire and decoded in Python (or base64 from encode(), which is slow to make)."""
        self.drain()
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
        budget = current_budget()
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
        if stream is not None:  # COPY: BEGIN in a round trip of its own, as before
            if self.take_pending_begin():
                super().run("BEGIN")
            return super().run(sql, stream=stream, types=types, **params)
        if not params:  # a simple Query, as pg8000 sends it, after the pending BEGIN if any
            begin = self.take_pending_begin()
            context = pg8000_core.Context(sql)
            try:
                if begin:
                    self.send_QUERY("BEGIN")
                self.send_QUERY(sql)
                commit = self._send_pending_commit()
                pg8000_core._flush(self._sock)
            except AttributeError:
                if self._sock is None:
                    raise InterfaceError("connection is closed") from None
                raise
            self._context = self._read_answers(begin, context, commit)
            return self._context.rows
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
        begin = self._begin_pending
        commit = self._commit_pending
        context = self._send_in_one_trip(statement, values, oids, formats)
        return self._read_answers(begin, context, commit)

    def _send_in_one_trip(
        self, statement: str, values: tuple[Any, ...], oids: Any, formats: tuple[int, ...] = ()
    ) -> Any:
        """Send Parse, Bind, Describe, Execute and Sync (with a pending BEGIN before them and a
        pending COMMIT after) in one write; the statement's Context, its answers not read yet."""
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
        begin = self.take_pending_begin()
        try:
            if begin:
                self.send_QUERY("BEGIN")
            self._send_message(pg8000_core.PARSE, parse)
            self._send_message(pg8000_core.BIND, bind)
            pg8000_core._write(self._sock, _DESCRIBE_UNNAMED_PORTAL)
            pg8000_core._write(self._sock, pg8000_core.EXECUTE_MSG)
            pg8000_core._write(self._sock, pg8000_core.SYNC_MSG)
            self._send_pending_commit()
            pg8000_core._flush(self._sock)
        except AttributeError:
            if self._sock is None:
                raise InterfaceError("connection is closed") from None
            raise
        return context

    def _read_answers(self, begin: bool, context: Any, commit: bool = False) -> Any:
        """Read the answers to what went out in one write: BEGIN's, the statement's, COMMIT's. Each
        ends with its ReadyForQuery; all are read, so the connection stays in step, and the first
        error is raised (a network error before any other at once). After a failed statement,
        pg8000 calls the COMMIT's answer (the server's ROLLBACK) an error of its own: the
        statement's is the one raised."""
        answers = [pg8000_core.Context("BEGIN")] if begin else []
        answers += [context] + ([pg8000_core.Context("COMMIT")] if commit else [])
        error: Exception | None = None
        for answer in answers:
            try:
                self.handle_messages(answer)
            except Exception as exc:
                if error is None and isinstance(exc, InterfaceError | OSError):
                    raise
                error = error or exc
        if error is not None:
            raise error
        return context
