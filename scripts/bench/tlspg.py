"""A private, throwaway PostgreSQL cluster that speaks TLS, for the tests and the bench.

Deployed, the functions reach RDS Proxy over TCP with TLS (`sslmode=verify-full`); the embedded
server (pgserver) is built without OpenSSL and the machine's own server must not be reconfigured.
So this makes a certificate authority and a server certificate for 127.0.0.1/localhost, initdb's a
cluster in a temporary directory with the first PostgreSQL binaries on the machine that were built
with OpenSSL (Debian's `postgresql` package has them), and starts it on a free loopback port with
ssl=on. By default only `hostssl` connections are let in (trust) and `hostnossl` ones are rejected,
so a connection that works is proven to be TLS. With `plain=True` it also accepts plain TCP and
listens on a unix socket, so one server can be measured over every transport.

Without TLS-capable binaries, `tls_binaries()` says why (`NoTlsServer`), and the callers skip or
print that; `private_server(tls=False)` still runs a cluster of pgserver's binaries.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

START_SECONDS = 30.0
SUPERUSER = "postgres"
# A loopback address the server also listens on and its certificate does not name.
OTHER_LOOPBACK = "127.0.0.2"


class NoTlsServer(RuntimeError):
    """No PostgreSQL server binaries built with OpenSSL on this machine."""


@dataclass(frozen=True)
class PrivateServer:
    """A running private cluster: where it listens and the certificate authority its certificate chains to."""

    host: str
    port: int
    workdir: Path
    ca_file: Path | None  # None: no TLS (binaries without OpenSSL)
    unix_dir: Path | None  # the socket directory when plain transports are on
    log_file: Path

    def tls_url(self, database: str = "postgres", *, sslmode: str = "verify-full", host: str | None = None) -> str:
        """A DATABASE_URL over TCP with TLS, verified against this cluster's own certificate authority."""
        if self.ca_file is None:
            raise NoTlsServer("this private server runs without TLS")
        where = host or self.host
        return (
            f"postgresql://{SUPERUSER}@{where}:{self.port}/{quote(database)}"
            f"?sslmode={sslmode}&sslrootcert={quote(str(self.ca_file))}"
        )

    def tcp_url(self, database: str = "postgres") -> str:
        """A DATABASE_URL over plain TCP (sslmode=disable)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{quote(database)}?sslmode=disable"

    def unix_url(self, database: str = "postgres") -> str:
        """A DATABASE_URL over the unix socket (plain transports only)."""
        if self.unix_dir is None:
            raise RuntimeError("this private server has no unix socket (plain=False)")
        return f"postgresql://{SUPERUSER}@/{quote(database)}?host={quote(str(self.unix_dir))}&port={self.port}"


def _ssl_capable(bindir: Path) -> bool:
    pg_config = bindir / "pg_config"
    if not pg_config.exists():
        return False
    try:
        configure = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-openssl" in configure or "--with-ssl=openssl" in configure


def _candidates() -> list[Path]:
    found: list[Path] = []
    if os.environ.get("TLS_PG_BINDIR"):
        found.append(Path(os.environ["TLS_PG_BINDIR"]))
    on_path = shutil.which("pg_config")
    if on_path:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bindir = subprocess.run([on_path, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if bindir:
                found.append(Path(bindir))
    # Debian and Ubuntu keep each major version's server binaries here (newest first).
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    found += [*debian, Path("/usr/local/pgsql/bin")]
    return [bindir for bindir in found if (bindir / "initdb").exists() and (bindir / "postgres").exists()]


def tls_binaries() -> Path:
    """The directory of the first server binaries built with OpenSSL; NoTlsServer says how to get some."""
    for bindir in _candidates():
        if _ssl_capable(bindir):
            return bindir
    raise NoTlsServer(
        "no PostgreSQL server binaries built with OpenSSL on this machine (pgserver's are not): "
        "apt-get install -y postgresql, or set TLS_PG_BINDIR"
    )


def _any_binaries() -> Path:
    with contextlib.suppress(NoTlsServer):
        return tls_binaries()
    import pgserver  # the embedded server's binaries, always installed for the tests

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway certificate authority and a server certificate it signed, for 127.0.0.1, ::1 and
    localhost: (ca.pem, server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctscan throwaway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.crt", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)  # postgres refuses a key others can read
    return ca_file, cert_file, key_file


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as() -> str | None:
    """initdb and postgres refuse to run as root: under root (containers, CI) they run as `postgres`
    (Debian's package creates it), else as nobody."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root with neither a postgres nor a nobody user to run the server as")


@contextlib.contextmanager
def private_server(
    *, tls: bool = True, plain: bool = False, log_statements: bool = False, durable: bool = False
) -> Iterator[PrivateServer]:
    """Start a private cluster (TLS with its own CA when `tls`; plain TCP and a unix socket too when
    `plain`), yield where it listens, then stop it and remove every file. `log_statements` writes
    every statement to its log file (log_statement=all), to see what a request sends. `durable`:
    fsync on, as RDS commits (make bench's own rows); else off, for comparisons on one cluster."""
    bindir = tls_binaries() if tls else _any_binaries()
    user = _run_as()
    workdir = Path(tempfile.mkdtemp(prefix="ctscan-tlspg-"))
    try:
        data, certs = workdir / "data", workdir / "certs"
        certs.mkdir()
        ca_file = cert_file = key_file = None
        if tls:
            ca_file, cert_file, key_file = make_certificates(certs)
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (workdir, certs, *certs.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            if ca_file is not None:
                ca_file.chmod(0o644)
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            user=user,
            timeout=120,
        )
        ssl_rule = "hostssl all all 127.0.0.0/8 trust\n" if tls else ""
        plain_rules = "local all all trust\nhostnossl all all 127.0.0.0/8 trust\n" if plain else ""
        # Every other connection, plain TCP above all, is refused: what works went over TLS.
        (data / "pg_hba.conf").write_text(f"{plain_rules}{ssl_rule}host all all all reject\n")
        port = _free_port()
        unix_dir = workdir if plain else None
        options = {
            # 127.0.0.2 too: an address the certificate does not name, for the host name checks.
            "listen_addresses": f"127.0.0.1,{OTHER_LOOPBACK}",
            "port": str(port),
            "unix_socket_directories": str(unix_dir) if unix_dir else "",
            # A throwaway cluster: durability costs would only add noise, unless measured as deployed.
            "fsync": "on" if durable else "off",
            "max_connections": "60",
            "logging_collector": "off",
        }
        if tls:
            options |= {"ssl": "on", "ssl_cert_file": str(cert_file), "ssl_key_file": str(key_file)}
        if log_statements:
            options |= {"log_statement": "all", "log_connections": "on", "log_line_prefix": "%m [%p] "}
        args = [str(bindir / "postgres"), "-D", str(data)]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        log_file = workdir / "postgres.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, user=user, start_new_session=True)
        server = PrivateServer("127.0.0.1", port, workdir, ca_file, unix_dir, log_file)
        try:
            _wait_until_up(server, process)
            yield server
        finally:
            process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_up(server: PrivateServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}: {server.log_file.read_text()[-2000:]}")
        if "ready to accept connections" in server.log_file.read_text(errors="replace"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres did not start in {START_SECONDS} s: {server.log_file.read_text()[-2000:]}")
        time.sleep(0.05)
