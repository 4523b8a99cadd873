"""`make bench` transports: the database-bound requests over each way a function can reach PostgreSQL.

One private cluster (scripts/bench/tlspg.py: its own certificate authority, TLS when the machine has
server binaries built with OpenSSL) is reached over its unix socket (as the embedded server is),
plain TCP, TCP with TLS (sslmode=verify-full, as deployed to RDS Proxy), and TCP with TLS behind a
proxy that adds 1 ms each way (scripts/bench/netdelay.py), which also counts the round trips. The
requests are the real handlers in process (tests/lambda_client.LambdaClient), kept alive between
requests as a warm container keeps its connection: a DICOM CT upload (512x512 and 128x128, distinct
files), an image read (the thumbnail) and a login. Behind the proxy, each request's round trips
are counted, and a container's first request (connect, TLS, authentication, then the work) is
measured apart from a warm one; so is a connect alone, over every transport.

Alone: `python -m scripts.bench.main --transport`.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from scripts.bench import tlspg
from scripts.bench.common import REPORT, percentile
from scripts.bench.netdelay import ProxyProcess
from scripts.dev import phantom
from shared import auth, db
from shared.core import config
from shared.db import connection

DATABASE = "ctscan_bench_transport"
# An upload over TCP (plain, as the issue measured it) at most this much slower than over the unix socket.
TARGETS = {
    "transport_upload_512_tcp_vs_unix_p50": 1.2,
    "transport_upload_128_tcp_vs_unix_p50": 1.2,
}
DELAY_SECONDS = 0.001
RUNS = 24  # per transport and kind of request, after warm-up
ROUNDS = 3  # the transports take turns, RUNS / ROUNDS requests at a time, so drift weighs on all alike
FIRST_REQUESTS = 5  # a container's first request (new connection), per kind, behind the proxy
PASSWORD = "bench-transport-password"


@dataclass
class Transport:
    """One way to the database, the samples taken over it, and (behind the proxy) its round trips."""

    label: str
    url: str
    proxy: ProxyProcess | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    round_trips: dict[str, list[int]] = field(default_factory=dict)
    connections: dict[str, list[int]] = field(default_factory=dict)


def _use(url: str) -> None:
    """Point this process's functions at `url`, as a new container would be (no connection yet)."""
    db.close_connection()
    os.environ["DATABASE_URL"] = url
    config.get_settings.cache_clear()


@contextlib.contextmanager
def _database_url(url: str) -> Iterator[None]:
    before = os.environ.get("DATABASE_URL")
    try:
        yield
    finally:
        db.close_connection()
        if before is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = before
        config.get_settings.cache_clear()


def section() -> dict[str, object]:
    """The transports' figures (and a line saying why TLS is left out, when it is)."""
    try:
        tlspg.tls_binaries()
        tls = True
    except tlspg.NoTlsServer as missing:
        print(f"(transports: TLS rows left out: {missing})", file=REPORT)
        tls = False
    with tlspg.private_server(tls=tls, plain=True) as server, _database_url(server.unix_url()):
        return _measure(server, tls=tls)


def _measure(server: tlspg.PrivateServer, *, tls: bool) -> dict[str, object]:
    from functions.migrate.handler import handler as migrate
    from tests.lambda_client import LambdaClient, multipart

    admin = db.connect(config.parse_database_url(server.unix_url()), timeout=30)
    try:
        admin.run(f"CREATE DATABASE {DATABASE}")
    finally:
        admin.close()
    _use(server.unix_url(DATABASE))
    assert migrate({}, None)["status"] == "ok"
    user_id = db.call(db.create_user, username="bench-transport", password_hash=auth.hash_password(PASSWORD))
    token = db.call(auth.issue_session, user_id=user_id, ttl_seconds=3600).token
    # Logins as a user of their own: each opens a session, and past 20 the oldest (`token`'s) would end.
    db.call(db.create_user, username="bench-transport-login", password_hash=auth.hash_password(PASSWORD))
    api = LambdaClient()

    transports = [Transport("unix", server.unix_url(DATABASE)), Transport("tcp", server.tcp_url(DATABASE))]
    proxy = None
    if tls:
        tls_url = server.tls_url(DATABASE)
        proxy = ProxyProcess(config.parse_database_url(tls_url), delay_seconds=DELAY_SECONDS)
        transports += [Transport("tls", tls_url), Transport("tls+1ms", proxy.url(), proxy)]

    seeds = iter(range(100_000, 1_000_000))

    def upload(size: int) -> Callable[[], None]:
        ds = phantom.ct_slice_dataset(size, seed=next(seeds))
        body, ctype = multipart({"file": ("t.dcm", phantom.dicom_bytes(ds), "application/dicom")})

        def send() -> None:
            result = api.request(
                "POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype}
            )
            assert result.status == 201, result.body

        return send

    body, ctype = multipart({"file": ("read.dcm", phantom.dicom_bytes(phantom.ct_slice_dataset(256)), "x")})
    scan_id = api.request(
        "POST", "/api/v1/scans/analyze", token=token, body=body, headers={"content-type": ctype}
    ).json()["scanId"]
    thumbnail = f"/api/v1/scans/image/{scan_id}/thumbnail"

    def read() -> Callable[[], None]:
        def send() -> None:
            result = api.request("GET", thumbnail, token=token)
            assert result.status == 200, result.status

        return send

    login_body = json.dumps({"username": "bench-transport-login", "password": PASSWORD}).encode()

    def login() -> Callable[[], None]:
        def send() -> None:
            result = api.request(
                "POST", "/api/v1/auth/sessions", body=login_body, headers={"content-type": "application/json"}
            )
            assert result.status == 201, result.body

        return send

    opened: list[db.Connection] = []

    def connect() -> Callable[[], None]:
        # A container's connect alone (TCP, TLS, authentication), as its first request pays it. Closed
        # later: the server's TLS close_notify would count as one more round trip.
        def send() -> None:
            opened.append(db.connect(config.get_settings().database, timeout=30))

        return send

    kinds: dict[str, Callable[[], Callable[[], None]]] = {
        "connect": connect,
        "upload_512": lambda: upload(512),
        "upload_128": lambda: upload(128),
        "read_thumbnail": read,
        "login": login,
    }
    try:
        for _ in range(ROUNDS):
            for transport in transports:
                _use(transport.url)
                for kind, make in kinds.items():
                    for i in range(2 + RUNS // ROUNDS):
                        _timed(transport, kind, make(), warm_up=i < 2)
                while opened:
                    opened.pop().close()
        if proxy is not None:
            behind = transports[-1]
            for kind, make in kinds.items():
                if kind == "connect":
                    continue
                for _ in range(FIRST_REQUESTS):
                    db.close_connection()  # a new container: its first request connects
                    time.sleep(0.05)  # the old connection's TLS close_notify, outside the count
                    _timed(behind, f"first_{kind}", make(), warm_up=False)
            # A warm container idle past CHECK_AFTER_IDLE_SECONDS (30 s) checks its connection first
            # (SELECT 1: a frozen container's socket may be dead): the read after such a pause.
            _use(behind.url)
            read()()
            idle_after = connection.CHECK_AFTER_IDLE_SECONDS
            connection.CHECK_AFTER_IDLE_SECONDS = 0.0
            try:
                for _ in range(FIRST_REQUESTS):
                    _timed(behind, "read_thumbnail_after_idle", read(), warm_up=False)
            finally:
                connection.CHECK_AFTER_IDLE_SECONDS = idle_after
    finally:
        if proxy is not None:
            proxy.close()
    return _figures(transports)


def _timed(transport: Transport, kind: str, send: Callable[[], None], *, warm_up: bool) -> None:
    before = transport.proxy.counts() if transport.proxy else None
    start = time.perf_counter()
    send()
    elapsed = (time.perf_counter() - start) * 1000
    if warm_up:
        return
    transport.samples.setdefault(kind, []).append(elapsed)
    if transport.proxy is not None and before is not None:
        delta = transport.proxy.counts() - before
        transport.round_trips.setdefault(kind, []).append(delta.round_trips)
        transport.connections.setdefault(kind, []).append(delta.connections)


def _mean(values: list[int]) -> float | int:
    mean = statistics.fmean(values)
    return int(mean) if mean.is_integer() else round(mean, 2)


def _figures(transports: list[Transport]) -> dict[str, object]:
    figures: dict[str, object] = {}
    for transport in transports:
        for kind, samples in transport.samples.items():
            figures[f"transport_{kind}_p50_ms[{transport.label}]"] = round(percentile(samples, 50), 2)
    for transport in transports:
        for kind, trips in transport.round_trips.items():
            figures[f"transport_{kind}_round_trips[{transport.label}]"] = _mean(trips)
        for kind, opened in transport.connections.items():
            if kind.startswith("first_") or kind == "connect":
                figures[f"transport_{kind}_connections[{transport.label}]"] = _mean(opened)
    by_label = {transport.label: transport for transport in transports}
    for size in (512, 128):
        kind = f"upload_{size}"
        tcp, unix = by_label["tcp"].samples[kind], by_label["unix"].samples[kind]
        figures[f"transport_upload_{size}_tcp_vs_unix_p50"] = round(percentile(tcp, 50) / percentile(unix, 50), 2)
    return figures
