"""Orthanc with its PostgreSQL plugins, on the same PostgreSQL server, as a yardstick for `make bench`;
and Orthanc with its DICOMweb plugin, a reference DICOMweb root for the OHIF harness (tests/test_ohif.py).

Used only when Debian's `orthanc` and `orthanc-postgresql` (bench) or `orthanc-dicomweb` (OHIF)
packages are installed (they are not a dependency of this project: `make bench` installs them where
apt can, scripts/bench/ensure-orthanc.sh). Orthanc runs on loopback; for the bench with its index
and its file storage in PostgreSQL, like our store keeps everything in PostgreSQL; the same DICOM
files are POSTed to its /instances as to our upload route (scripts/bench/ingest.py).

With `orthanc-dicomweb` too, `running(..., dicomweb=True)` loads the DICOMweb plugin at
DICOMWEB_ROOT, and the DICOMweb section (scripts/bench/dicomweb.py) measures both servers with one
client. Everything else is Orthanc's and Debian's default configuration (keep-alive, TCP_NODELAY,
50 HTTP threads, HTTP compression, a 128 MB storage cache, full series metadata read from the files).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGINS = Path("/usr/share/orthanc/plugins")
INDEX_PLUGIN = PLUGINS / "libOrthancPostgreSQLIndex.so"
STORAGE_PLUGIN = PLUGINS / "libOrthancPostgreSQLStorage.so"
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
DICOMWEB_ROOT = "/dicom-web"


def available() -> bool:
    """Orthanc and both PostgreSQL plugins are installed."""
    return ORTHANC.exists() and INDEX_PLUGIN.exists() and STORAGE_PLUGIN.exists()


def dicomweb_available() -> bool:
    """Orthanc and its DICOMweb plugin are installed."""
    return ORTHANC.exists() and DICOMWEB_PLUGIN.exists()


def dicomweb_bench_available() -> bool:
    """Orthanc, both PostgreSQL plugins and the DICOMweb plugin are installed (the bench's DICOMweb section)."""
    return available() and DICOMWEB_PLUGIN.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running(
    *, host: str, port: int, database: str, user: str, dicomweb: bool = False, index_connections: int = 1
) -> Iterator[int]:
    """Orthanc on loopback with its index and storage in PostgreSQL; yields its HTTP port.

    dicomweb: with the DICOMweb plugin at DICOMWEB_ROOT (WADO-URI off). index_connections: the
    PostgreSQL index plugin's pool (4.0's IndexConnectionsCount; Debian's default is 1).
    """
    postgresql: dict[str, object] = {
        "Plugins": [str(INDEX_PLUGIN), str(STORAGE_PLUGIN), *([str(DICOMWEB_PLUGIN)] if dicomweb else [])],
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": True,
            "Host": host,
            "Port": port,
            "Database": database,
            "Username": user,
            "Password": "",
            "Lock": False,
            "IndexConnectionsCount": index_connections,
        },
    }
    if dicomweb:
        postgresql["DicomWeb"] = {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": False}
    with _running("bench", postgresql) as http_port:
        yield http_port


@contextlib.contextmanager
def running_dicomweb() -> Iterator[int]:
    """Orthanc on loopback with its DICOMweb plugin at DICOMWEB_ROOT, its SQLite index and files in a
    temporary folder; yields its HTTP port. No DICOM port, no authentication (loopback only)."""
    dicomweb = {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": False},
    }
    with _running("dicomweb", dicomweb) as http_port:
        yield http_port


@contextlib.contextmanager
def _running(name: str, settings: Mapping[str, object], attempts: int = 3) -> Iterator[int]:
    """Orthanc with these settings over the common ones; a start that loses its probed port to another
    process (it exits at once) is tried again on another."""
    for attempt in range(1, attempts + 1):
        workdir = Path(tempfile.mkdtemp(prefix=f"orthanc-{name}-"))
        http_port = _free_port()
        config = {
            "Name": name,
            "HttpPort": http_port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "StorageCompression": False,
            **settings,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        with (workdir / "orthanc.log").open("wb") as log:  # the child has its own copy of the descriptor
            process = subprocess.Popen(
                [str(ORTHANC), str(workdir / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=log
            )
        try:
            try:
                _wait_until_up(http_port, process, workdir)
            except RuntimeError:
                if attempt < attempts and process.poll() is not None:
                    continue
                raise
            yield http_port
            return
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            shutil.rmtree(workdir, ignore_errors=True)


def store(connection: HTTPConnection, data: bytes) -> str:
    """POST one DICOM file to /instances; its Orthanc id."""
    connection.request("POST", "/instances", body=data, headers={"Content-Type": "application/dicom"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200 or answer.get("Status") not in ("Success", "AlreadyStored"):
        raise RuntimeError(f"Orthanc refused the file: {response.status} {answer}")
    return str(answer["ID"])


def read_figures(
    data: bytes, *, host: str, port: int, database: str, user: str, measure: Callable[[int, str], dict[str, float]]
) -> dict[str, float]:
    """Store one file, then let `measure(http_port, path)` time GETs of it from Orthanc."""
    with running(host=host, port=port, database=database, user=user) as http_port:
        connection = HTTPConnection("127.0.0.1", http_port, timeout=60)
        instance = store(connection, data)
        connection.close()
        return measure(http_port, f"/instances/{instance}/file")


def _wait_until_up(http_port: int, process: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (workdir / "orthanc.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc exited with {process.returncode}: {log}")
        try:
            connection = HTTPConnection("127.0.0.1", http_port, timeout=2)
            connection.request("GET", "/system")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("Orthanc did not answer within 60 s")


def versions(http_port: int) -> dict[str, str]:
    """What is running: Orthanc's version and each loaded plugin's (GET /system, /plugins/{id})."""
    connection = HTTPConnection("127.0.0.1", http_port, timeout=30)
    try:
        found = {"orthanc": str(_get_json(connection, "/system")["Version"])}
        for plugin in _get_json(connection, "/plugins"):
            if str(plugin).endswith(".js"):  # explorer.js: the Orthanc Explorer extensions, not a plugin
                continue
            found[str(plugin)] = str(_get_json(connection, f"/plugins/{plugin}")["Version"])
        return found
    finally:
        connection.close()


def _get_json(connection: HTTPConnection, path: str) -> Any:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"Orthanc answered {response.status} to GET {path}")
    return json.loads(body)
