"""pgbouncer in transaction mode in front of the test server: the stricter stand-in for RDS Proxy.

Between transactions pgbouncer hands a server connection to whichever client asks next, so anything
that leans on a session (an advisory lock, SET, a temporary table) shows here what it would do behind
a transaction pooler. Debian's package (`apt-get install pgbouncer`; 1.18 on bookworm): without it
the tests that need it skip with how to get it, except on CI (CI set), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from pg8000.exceptions import DatabaseError, InterfaceError

from shared import db
from shared.core import config

START_SECONDS = 15.0


def pgbouncer_binary() -> str:
    """The pgbouncer executable (Debian installs it in /usr/sbin), or skip (fail on CI) saying how to get it."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    reason = "pgbouncer is not installed: apt-get install -y pgbouncer"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the pooler tests never skip there)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(server_url: str, *, port: int, pool_size: int, auth_file: Path) -> str:
    params = config.parse_database_url(server_url)
    if params.unix_sock:
        # pgbouncer takes the socket's directory as host and finds .s.PGSQL.<port> in it.
        host, port_text = params.unix_sock.rsplit("/.s.PGSQL.", 1)
        server_port = int(port_text)
    else:
        host, server_port = params.host or "127.0.0.1", params.port
    password = f" password={params.password}" if params.password else ""
    return f"""\
[databases]
; Any database name a client asks for, on the test server, as the test server's user.
* = host={host} port={server_port} user={params.user}{password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {auth_file}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
; As RDS Proxy: nothing resets a server connection's session state between clients.
server_reset_query =
server_reset_query_always = 0
"""


@contextlib.contextmanager
def running_pgbouncer(server_url: str, workdir: Path, *, pool_size: int = 20) -> Iterator[str]:
    """Start pgbouncer (transaction mode) in front of `server_url`'s server; yield its URL for the same
    database and user; stop it at the end."""
    binary = pgbouncer_binary()
    params = config.parse_database_url(server_url)
    workdir.mkdir(parents=True, exist_ok=True)
    auth_file = workdir / "users.txt"
    auth_file.write_text(f'"{params.user}" ""\n')
    port = _free_port()
    ini = workdir / "pgbouncer.ini"
    ini.write_text(_config(server_url, port=port, pool_size=pool_size, auth_file=auth_file))
    log_path = workdir / "pgbouncer.log"
    # Root reads the ini and the auth file (at start), then pgbouncer runs as that user.
    as_user = ["-u", _unprivileged_user(params.unix_sock)] if os.geteuid() == 0 else []
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, *as_user, str(ini)], stdout=log, stderr=subprocess.STDOUT)
    user = quote(params.user, safe="")
    url = urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", urlsplit(server_url).path, "", ""))
    try:
        _wait_until_up(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _unprivileged_user(unix_sock: str | None) -> str:
    """Who pgbouncer runs as under root (containers, CI), which it refuses to run as: the owner of the
    server's socket directory (the embedded server's data directory, its user's alone), else nobody."""
    if unix_sock is None:
        return "nobody"
    return pwd.getpwuid(Path(unix_sock).parent.stat().st_uid).pw_name


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            con = db.connect(config.parse_database_url(url), timeout=5)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        with contextlib.suppress(InterfaceError, OSError, DatabaseError):
            con.close()
        return
