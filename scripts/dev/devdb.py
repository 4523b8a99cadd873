"""The embedded PostgreSQL (pgserver) for `make run` and the tests, robust to a kill -9.

pgserver starts its server in a session of its own, so it outlives us and keeps data between runs.
pgserver 0.1.4 takes a server for alive when the pid in postmaster.pid exists, but a postgres killed
with -9 can linger as a zombie. So: connect first; if that fails and the process is gone or a zombie,
remove the stale postmaster.pid and let pgserver start the server again.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path

import pg8000.native
import psutil

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "ctscan"


def _postmaster_lines(pgdata: Path) -> list[str]:
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen addr, shmem key, status
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return []


def _socket(pgdata: Path) -> tuple[str, str] | None:
    """(socket directory, port) of the server recorded in pgdata, if any."""
    lines = _postmaster_lines(pgdata)
    if len(lines) < 5 or not lines[4].strip():
        return None
    return lines[4].strip(), lines[3].strip()


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid in postmaster.pid. A standalone backend (initdb's bootstrap, single-user mode) writes
    its pid negated; a crashed initdb leaves that file behind, and its process is the same."""
    with contextlib.suppress(ValueError, IndexError):
        return abs(int(_postmaster_lines(pgdata)[0])) or None
    return None


def _can_connect(pgdata: Path) -> bool:
    socket = _socket(pgdata)
    if socket is None:
        return False
    try:
        pg8000.native.Connection(
            "postgres", unix_sock=f"{socket[0]}/.s.PGSQL.{socket[1]}", database="postgres", timeout=3
        ).close()
    except Exception:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def clear_stale_pid(pgdata: Path, *, wait_seconds: float = 15.0) -> None:
    """Remove postmaster.pid if its server is dead (gone or a zombie) and cannot be reached."""
    pid = _postmaster_pid(pgdata)
    if pid is None or _can_connect(pgdata):
        return
    deadline = time.monotonic() + wait_seconds
    while _alive(pid):
        # Alive but not answering: it may be starting up or shutting down; give it a moment.
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres pid {pid} in {pgdata} is alive but not accepting connections")
        time.sleep(0.2)
        if _can_connect(pgdata):
            return
    log.warning("removing stale postmaster.pid (pid %s is gone)", pid)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)


def ensure_server(pgdata: Path, *, database: str = DEFAULT_DATABASE, attempts: int = 20) -> str:
    """Start (or reuse) the embedded server in pgdata, make sure `database` exists, return its URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); pgserver copes with its fallback.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # development dependency only

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _ in range(attempts):
        clear_stale_pid(pgdata)
        try:
            # cleanup_mode=None: the server keeps running (and keeps the data) after we exit.
            pgserver.get_server(pgdata, cleanup_mode=None)
            break
        except Exception as exc:  # after a kill -9, old backends can hold shared memory a moment longer
            last_error = exc
            pgserver.PostgresServer._instances.pop(pgdata, None)
            time.sleep(0.5)
    else:
        raise RuntimeError(f"could not start the embedded PostgreSQL in {pgdata}: {last_error}")
    socket = _socket(pgdata)
    if socket is None:
        raise RuntimeError(f"the embedded PostgreSQL in {pgdata} wrote no socket directory")
    url = f"postgresql://postgres@/{database}?host={socket[0]}&port={socket[1]}"
    create_database(url.replace(f"/{database}?", "/postgres?"), database)
    return url


def create_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE if it does not exist yet."""
    from shared.core.config import parse_database_url
    from shared.db import connect

    # The project's own connect: its socket (TCP_NODELAY, keepalive), TLS as the URL's sslmode says.
    con = connect(parse_database_url(admin_url), timeout=10)
    try:
        if not con.run("SELECT 1 FROM pg_database WHERE datname = :name", name=database):
            con.run(f"CREATE DATABASE {pg8000.native.identifier(database)}")
    finally:
        con.close()


def stop_server(pgdata: Path) -> None:
    """Stop the embedded server in pgdata, if one runs."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    if _postmaster_pid(pgdata) is not None:
        with contextlib.suppress(Exception):
            pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata.resolve(), user="pgserver" if _is_root() else None)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def main(argv: list[str]) -> int:
    """`python -m scripts.dev.devdb stop DIR...`: stop the embedded servers in those data directories."""
    if len(argv) < 2 or argv[0] != "stop":
        print("usage: python -m scripts.dev.devdb stop PGDATA...", file=sys.stderr)
        return 2
    for directory in argv[1:]:
        pgdata = Path(directory)
        if pgdata.is_dir():
            stop_server(pgdata)
            print(
                f"stopped the embedded PostgreSQL in {pgdata}" if not _can_connect(pgdata) else f"{pgdata} still runs"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
