"""The database transports as deployed: TCP with TCP_NODELAY, TLS verified as libpq verifies it, and a
warm container whose connection a proxy closed while it idled.

Deployed, the functions reach RDS Proxy over TCP with TLS (sslmode=verify-full). The TLS tests run
against a private cluster with its own certificate authority (scripts/bench/tlspg.py), which
rejects every plain connection; they skip only when no PostgreSQL server binaries built with
OpenSSL exist on the machine, and fail instead on CI (CI set), where .ci/run installs Debian's.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.bench import tlspg
from scripts.bench.netdelay import DelayProxy
from scripts.dev import phantom
from shared import db
from shared.core.config import get_settings, parse_database_url
from shared.core.errors import DatabaseUnavailable
from shared.db import connection
from tests.conftest import User
from tests.lambda_client import LambdaClient, multipart


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tlspg.PrivateServer]:
    """A private cluster that accepts TLS only (hostnossl rejected), verified by its own CA."""
    try:
        tlspg.tls_binaries()
    except tlspg.NoTlsServer as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (CI is set: the TLS tests never skip there)", pytrace=False)
        pytest.skip(str(missing))
    with tlspg.private_server(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server() -> Iterator[tlspg.PrivateServer]:
    """A private cluster over plain TCP (any server binaries on the machine will do)."""
    with tlspg.private_server(tls=False, plain=True) as server:
        yield server


def _nodelay(con: db.Connection) -> int:
    sock = con._usock
    assert sock.family in (socket.AF_INET, socket.AF_INET6), sock
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_a_plain_tcp_connection_has_tcp_nodelay(plain_server: tlspg.PrivateServer) -> None:
    con = db.connect(parse_database_url(plain_server.tcp_url()), timeout=10)
    try:
        assert con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[False]]
        assert _nodelay(con) == 1
    finally:
        con.close()


def test_a_tls_verify_full_connection_has_tcp_nodelay(tls_server: tlspg.PrivateServer) -> None:
    params = parse_database_url(tls_server.tls_url())
    assert (params.sslmode, params.sslrootcert) == ("verify-full", str(tls_server.ca_file))
    con = db.connect(params, timeout=10)
    try:
        assert isinstance(con._usock, ssl.SSLSocket)
        assert con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[True]]
        assert _nodelay(con) == 1
    finally:
        con.close()


def test_the_tls_server_refuses_plain_connections(tls_server: tlspg.PrivateServer) -> None:
    # What the test above connected over is TLS because nothing else gets in.
    with pytest.raises(DatabaseUnavailable):
        db.connect(parse_database_url(tls_server.tcp_url()), timeout=10)


def test_verify_full_checks_the_host_name_and_verify_ca_does_not(tls_server: tlspg.PrivateServer) -> None:
    # 127.0.0.2 reaches the same server, but its certificate names 127.0.0.1, ::1 and localhost only.
    other = tlspg.OTHER_LOOPBACK
    with pytest.raises(Exception) as refused:
        db.connect(parse_database_url(tls_server.tls_url(host=other)), timeout=10)
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    for url in (tls_server.tls_url(host=other, sslmode="verify-ca"), tls_server.tls_url(host="localhost")):
        con = db.connect(parse_database_url(url), timeout=10)
        try:
            assert con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [[True]]
        finally:
            con.close()


def test_verify_full_without_our_ca_refuses_the_server(tls_server: tlspg.PrivateServer) -> None:
    # Without sslrootcert the system's authorities are trusted, and none of them signed this server.
    url = tls_server.tls_url().split("&sslrootcert=")[0]
    with pytest.raises(Exception) as refused:
        db.connect(parse_database_url(url), timeout=10)
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


def test_require_with_a_root_certificate_verifies_the_chain_as_libpq_does(tmp_path: Path) -> None:
    # libpq: sslmode=require with an sslrootcert file acts as verify-ca; without one it checks nothing.
    context = connection._ssl_context("require", None)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE
    ca_file, _, _ = tlspg.make_certificates(tmp_path)
    context = connection._ssl_context("require", str(ca_file))
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, False)
    context = connection._ssl_context("verify-full", "system")
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)


def test_a_tls_connect_takes_three_round_trips(tls_server: tlspg.PrivateServer) -> None:
    # SSLRequest, the TLS 1.3 handshake, then startup and authentication (the TCP handshake aside):
    # no HelloRetryRequest for a key share the server does not take.
    with DelayProxy(parse_database_url(tls_server.tls_url()), delay_seconds=0.0) as proxy:
        con = db.connect(parse_database_url(proxy.url()), timeout=10)
        try:
            assert proxy.counts().round_trips == 3
            assert con._usock.version() == "TLSv1.3"
        finally:
            con.close()


# ---------------------------------------------------------------- a proxy that closes idle clients


def test_a_warm_container_whose_idle_connection_the_proxy_closed_reconnects_transparently(
    api: LambdaClient, alice: User, settings_env: pytest.MonkeyPatch, database_url: str
) -> None:
    # RDS Proxy closes a client connection idle past its IdleClientTimeout (30 min by default); a
    # warm container then finds its connection dead on its next request. Here a proxy closes the
    # client side after 0.3 s idle; the container's check after idling is shortened to match.
    upstream = parse_database_url(database_url)
    with DelayProxy(upstream, delay_seconds=0.0, idle_close_seconds=0.3) as proxy:
        db.close_connection()
        settings_env.setenv("DATABASE_URL", proxy.url())
        get_settings.cache_clear()
        settings_env.setattr(connection, "CHECK_AFTER_IDLE_SECONDS", 0.1)
        assert api.request("GET", "/api/v1/scans", token=alice.token).status == 200
        assert proxy.connections == 1
        time.sleep(0.8)
        assert proxy.idle_closed == 1
        result = api.request("GET", "/api/v1/scans", token=alice.token)
        assert result.status == 200
        assert proxy.connections == 2  # one new connection, opened by the same request


def test_without_the_idle_check_the_reconnect_still_answers(
    api: LambdaClient, alice: User, settings_env: pytest.MonkeyPatch, database_url: str
) -> None:
    # Idle for less than CHECK_AFTER_IDLE_SECONDS, the container skips its liveness check: a closed
    # socket then shows on the request's first statement, which call() retries once on a new one.
    upstream = parse_database_url(database_url)
    with DelayProxy(upstream, delay_seconds=0.0, idle_close_seconds=0.3) as proxy:
        db.close_connection()
        settings_env.setenv("DATABASE_URL", proxy.url())
        get_settings.cache_clear()
        assert api.request("GET", "/api/v1/scans", token=alice.token).status == 200
        time.sleep(0.8)
        assert proxy.idle_closed == 1
        assert api.request("GET", "/api/v1/scans", token=alice.token).status == 200
        assert proxy.connections == 2


# ---------------------------------------------------------------- round trips of a warm container

# What a warm container's requests may cost in round trips to the database (each one ~0.5-1 ms to
# RDS Proxy and beyond, deployed): a regression here is a slower request in production that no
# loopback timing shows. scripts/bench/transport.py prints the same counts behind 1 ms of latency.
ROUND_TRIPS = {"upload": 2, "duplicate upload": 1, "large upload": 3, "read": 1, "login": 5}


def test_a_warm_upload_read_and_login_stay_within_their_round_trips(
    api: LambdaClient, alice: User, settings_env: pytest.MonkeyPatch, database_url: str
) -> None:
    def upload(seed: int, status: int = 201) -> str:
        data = phantom.dicom_bytes(phantom.ct_slice_dataset(128, seed=seed))
        body, ctype = multipart({"file": ("slice.dcm", data, "application/dicom")})
        result = api.request(
            "POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype}
        )
        assert result.status == status, result.body
        scan_id: str = result.json()["scanId"]
        return scan_id

    def login() -> None:
        body = json.dumps({"username": alice.username, "password": alice.password}).encode()
        result = api.request("POST", "/api/v1/auth/sessions", body=body, headers={"content-type": "application/json"})
        assert result.status == 201, result.body

    with DelayProxy(parse_database_url(database_url), delay_seconds=0.0) as proxy:
        db.close_connection()
        settings_env.setenv("DATABASE_URL", proxy.url())
        get_settings.cache_clear()
        scan_id = upload(7001)  # the container's first request: it connects
        login()

        def read() -> None:
            assert api.request("GET", f"/api/v1/scans/image/{scan_id}/thumbnail", token=alice.token).status == 200

        def trips(request: Callable[[], object]) -> int:
            before = proxy.counts()
            request()
            spent = proxy.counts() - before
            assert spent.connections == 0  # warm: the container's connection is reused
            return spent.round_trips

        spent = {
            "upload": trips(lambda: upload(7002)),
            "duplicate upload": trips(lambda: upload(7002, status=200)),
            "read": trips(read),
            "login": trips(login),
        }
        # Past ONE_TRIP_MAX_BODY the owner is looked up first, the duplicate after: one more.
        settings_env.setattr("functions.upload.handler.ONE_TRIP_MAX_BODY", 0)
        spent["large upload"] = trips(lambda: upload(7003))
    assert spent == {kind: min(spent[kind], budget) for kind, budget in ROUND_TRIPS.items()}, (spent, ROUND_TRIPS)
