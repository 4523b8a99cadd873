"""Ingest against Orthanc (issue 19): the same DICOM CT slices stored by our upload route and by Orthanc.

Both sizes (512x512 and 128x128 uncompressed CT slices from scripts/dev/phantom.py, one series per size,
every file distinct), the very same files to each server, each server on a fresh database of the same
PostgreSQL server:

- ours: the local gateway in processes of its own, as `make run` runs it, with 5 worker processes
  (see GATEWAY_WORKERS), POST /api/v1/scans/analyze (multipart, bearer token);
- Orthanc 1.10 with its PostgreSQL index and storage plugins, POST /instances, twice: with an index
  pool of 5 connections (as many as our 5 concurrent uploads hold) and with Debian's default of 1.

One client (this module run as `python -m scripts.bench.ingest`, a process of its own, so it never
takes the GIL from a server) measures them all with the same code:

- upload latency: one kept-alive connection per server, one file at a time, the servers in turns
  file by file (drift weighs on all alike), p50 and p95 after a few warm-up files;
- ingest throughput: 5 threads, each with its own kept-alive connection (to a gateway worker process
  of its own, for ours), take files in order until a fixed number is stored: instances/s; the
  servers take turns, round by round.

Beside them: the function-milliseconds per stored instance (what Lambda bills for ours: the sum of
the upload handler's own durations, as its JSON "request" log lines report them, divided by the
instances it stored), and PostgreSQL bytes per stored instance (pg_database_size before and after).
The function-milliseconds are given twice: from the sequential uploads (one at a time, nothing else
running: the nearest to a Lambda sandbox with its own CPU) and from the 5-client rounds (5 handlers
on this machine's cores at once, so each takes longer than it would in Lambda). Beside the latter,
where the work goes, read from /proc for every server alike: the CPU milliseconds per instance of the
server's own processes (for ours the gateway workers, which also do the gateway's HTTP work, API
Gateway's part when deployed) and of the PostgreSQL processes working in its database.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.bench import threads

SIZES = (512, 128)
WARMUP = 3  # sequential uploads per size and server not counted (the first one imports the handler)
SEQUENTIAL = 40  # counted sequential uploads per size and server
CLIENTS = 5
ROUNDS = 2  # counted throughput rounds per size; the servers take turns in each
# Files stored per server per round by the 5 clients: a few seconds of work at Orthanc's rate.
ROUND_FILES = {512: 200, 128: 400}
WARM_FILES = 30  # per size and server before the counted rounds, each on a new connection (see _warm)
# Gateway processes: each a whole gateway with its own upload containers (threads), as Lambda runs
# each container in a process of its own. 5 for the 5 clients, and each client's connection is kept
# on a worker of its own (spread_connections), so that no two concurrent uploads share a GIL: Lambda
# gives each concurrent request a sandbox. Lambda gives each its own CPU share too; here all share
# the machine's cores with PostgreSQL and the client, as Orthanc's threads do.
GATEWAY_WORKERS = 5
ORTHANC_INDEX_CONNECTIONS = (5, 1)  # as many as our 5 concurrent uploads hold, and Debian's default
DATABASE = "ctscan_bench_ingest"
OUR_PATH = "/api/v1/scans/analyze"

# Each ratio is ours / Orthanc's best of its two index pools (5 connections was slower to ingest than
# Debian's 1 in our runs: its transactions then conflict and retry).
TARGETS = {f"ingest_upload_p50_vs_orthanc_{size}": 1.0 for size in SIZES}
AT_LEAST = {f"ingest_per_s_vs_orthanc_{size}": 1.0 for size in SIZES}


@dataclass(frozen=True)
class Server:
    """One server under test, as the client process sees it (JSON-able)."""

    name: str
    port: int
    path: str
    headers: dict[str, str]
    multipart: bool  # ours: the file in a multipart form; Orthanc: the DICOM bytes as the body
    processes: tuple[int, ...] = ()  # the server's processes that accept connections (see server_processes)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "path": self.path,
            "headers": self.headers,
            "multipart": self.multipart,
            "workers": list(self.processes),
        }


@dataclass
class Durations:
    """The upload function's own durations, read from its JSON log lines on the gateway's stdout."""

    stored_ms: list[float] = field(default_factory=list)  # invocations that answered 201
    other: int = 0  # anything else the upload function answered (there should be none)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, line: str) -> None:
        duration = upload_duration(line)
        if duration is None:
            return
        status, ms = duration
        with self.lock:
            if status == 201:
                self.stored_ms.append(ms)
            else:
                self.other += 1

    def count(self) -> int:
        with self.lock:
            return len(self.stored_ms)

    def since(self, start: int, expected: int, timeout: float = 10.0) -> list[float]:
        """The durations logged after the first `start`, once `expected` of them have arrived (the
        gateway writes each line before it answers, but this process reads the pipe on its own time)."""
        deadline = time.monotonic() + timeout
        while self.count() < start + expected and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.lock:
            found = self.stored_ms[start:]
        if len(found) != expected:  # a changed log line must not turn into a wrong figure
            raise RuntimeError(f"{len(found)} upload log lines with a duration for {expected} instances stored")
        return found


def upload_duration(line: str) -> tuple[int, float] | None:
    """(status, milliseconds) from the upload function's "request" log line (LOG_FORMAT=json), else None.

    The line is shared.core.observability's: latency_ms is measured around the whole handler
    (Mangum, the app, the database), which is what Lambda bills, less the log line itself.
    """
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("message") != "request" or record.get("function_name") != "upload":
        return None
    if record.get("route") != f"POST {OUR_PATH}":
        return None
    try:
        return int(record["status_code"]), float(record["latency_ms"])
    except (KeyError, TypeError, ValueError):
        return None


def ratio(mine: float | None, theirs: float | None) -> float | None:
    """mine / theirs, rounded; None when either is missing or theirs is 0."""
    if mine is None or not theirs:
        return None
    return round(mine / theirs, 2)


def best_orthanc(results: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """Orthanc's best figure for `key` over its index pools (the lowest time, the highest rate or size
    per instance... as `key` says: throughput is the one figure where more is better)."""
    values = [float(v[key]) for name, v in results.items() if name.startswith("orthanc") and v.get(key) is not None]
    if not values:
        return None
    return max(values) if key.startswith("per_s_") else min(values)


def in_turns(items: Sequence[Any], turn: int) -> list[Any]:
    """items rotated by `turn`: who goes first changes from turn to turn."""
    if not items:
        return []
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


# ---------------------------------------------------------------- the bench (this process)


def write_files(folder: Path, size: int, count: int) -> list[Path]:
    """`count` distinct uncompressed CT slices of one series, written to `folder`; their paths."""
    from scripts.dev import phantom

    study, series = phantom.uid("ingest-study", size), phantom.uid("ingest-series", size)
    paths = []
    for number in range(count):
        dataset = phantom.ct_slice_dataset(
            size,
            seed=90_000 + size * 10 + number,
            instance_number=number + 1,
            slice_position=float(number),
            study_uid=study,
            series_uid=series,
        )
        path = folder / f"{size}-{number:05d}.dcm"
        path.write_bytes(phantom.dicom_bytes(dataset))
        paths.append(path)
    return paths


def run_client(spec: Mapping[str, Any]) -> dict[str, Any]:
    """This module's client in a process of its own; its JSON answer."""
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench.ingest"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[2],
    )
    if out.returncode != 0:
        raise RuntimeError(f"the ingest client failed: {out.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer


def server_processes(port: int, *, count: int = 1, timeout: float = 30.0) -> list[int]:
    """The processes that serve connections to `port`: those holding its listening socket, less a
    parent that only watches its workers holding it too (the gateway's). Waits until there are
    `count` (the gateway prints its banner before it forks its workers). Empty where /proc cannot tell."""
    deadline = time.monotonic() + timeout
    found = _server_processes(port)
    while found and len(found) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        found = _server_processes(port)
    return found


def _server_processes(port: int) -> list[int]:
    inodes = socket_inodes(local=port, state="0A")
    if not inodes:
        return []
    holders: dict[int, int] = {}  # pid -> parent pid
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and holds(int(proc.name), inodes):
            with contextlib.suppress(OSError):
                holders[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    workers = sorted(pid for pid, parent in holders.items() if parent in holders)
    return workers or sorted(holders)


def backend_pids(server_url: str, databases: Sequence[str]) -> dict[str, list[int]]:
    """The PostgreSQL server processes (backends, autovacuum) working in each database now."""
    from shared import db
    from shared.core import config

    admin = db.connect(config.parse_database_url(server_url), timeout=60)
    try:
        rows = admin.run(
            "SELECT datname, pid FROM pg_stat_activity WHERE datname = ANY(:names) AND pid <> pg_backend_pid()",
            names=list(databases),
        )
    finally:
        admin.close()
    found: dict[str, list[int]] = {name: [] for name in databases}
    for name, pid in rows:
        found[name].append(int(pid))
    return found


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User plus system CPU seconds of each process, all its threads (from /proc/<pid>/stat)."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def cpu_used(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds used between two readings by the processes of the second (all of it for one that
    started in between)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def worker_shares(before: Mapping[int, float], after: Mapping[int, float]) -> list[float]:
    """Each worker's share of the CPU the workers used between two readings, largest first."""
    used = [after[pid] - before[pid] for pid in after if pid in before]
    total = sum(used)
    return sorted((round(u / total, 2) for u in used), reverse=True) if total > 0 else []


def database_sizes(server_url: str, names: Sequence[str]) -> dict[str, int]:
    from shared import db
    from shared.core import config

    admin = db.connect(config.parse_database_url(server_url), timeout=60)
    try:
        return {name: int(admin.run("SELECT pg_database_size(:name)", name=name)[0][0]) for name in names}
    finally:
        admin.close()


def our_database(server_url: str, name: str) -> tuple[str, str]:
    """A fresh, migrated database `name` with a bench user: (its URL, a session token)."""
    from scripts.bench.common import fresh_database
    from shared import auth, db
    from shared.core import config
    from shared.db.migrations import run_migrations

    url = fresh_database(server_url, name)
    con = db.connect(config.parse_database_url(url), timeout=60)
    try:
        run_migrations(con)
        user_id = db.create_user(con, username="bench-ingest", password_hash=auth.hash_password("bench-ingest"))
        token = auth.issue_session(con, user_id=user_id, ttl_seconds=7200).token
    finally:
        con.close()
    return url, token


@contextlib.contextmanager
def orthanc_servers(server_url: str, database: str) -> Iterator[tuple[list[Server], dict[str, str], list[str]]]:
    """Orthanc once per index pool size, each on a fresh database; (servers, versions, database names).
    Nothing when Orthanc or its PostgreSQL plugins are not installed."""
    from scripts.bench import orthanc
    from scripts.bench.common import fresh_database
    from shared.core import config

    if not orthanc.available():
        yield [], {}, []
        return
    servers: list[Server] = []
    names: list[str] = []
    versions: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for pool in ORTHANC_INDEX_CONNECTIONS:
            name = f"{database}_orthanc{pool}"
            params = config.parse_database_url(fresh_database(server_url, name))
            host = params.host if params.unix_sock is None else str(Path(params.unix_sock).parent)
            port = stack.enter_context(
                orthanc.running(
                    host=host or "localhost",
                    port=params.port,
                    database=name,
                    user=params.user,
                    index_connections=pool,
                )
            )
            versions = orthanc.versions(port)
            label = "orthanc" if pool == ORTHANC_INDEX_CONNECTIONS[0] else f"orthanc_{pool}conn"
            dicom = {"Content-Type": "application/dicom"}
            processes = tuple(server_processes(port))
            servers.append(Server(label, port, "/instances", dicom, multipart=False, processes=processes))
            names.append(name)
        yield servers, versions, names


def section(server_url: str, *, database: str = DATABASE) -> dict[str, object]:
    """The ingest section: prints the side-by-side table, returns the flat figures.

    database: ours; Orthanc's are database + "_orthanc5" and "_orthanc1" (all dropped and made anew).
    """
    from scripts.bench import orthanc
    from scripts.bench.common import REPORT, gateway_process

    if not orthanc.available():
        print(
            "(Orthanc or its PostgreSQL plugins are not installed: the ingest rows are ours alone. "
            "scripts/bench/ensure-orthanc.sh installs them where apt can)",
            file=REPORT,
        )
    url, token = our_database(server_url, database)
    durations = Durations()
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        port = stack.enter_context(gateway_process(url, workers=GATEWAY_WORKERS, on_line=durations.take))
        bearer = {"Authorization": f"Bearer {token}"}
        workers = server_processes(port, count=GATEWAY_WORKERS)
        ours = Server("ours", port, OUR_PATH, bearer, multipart=True, processes=tuple(workers))
        theirs, versions, orthanc_databases = stack.enter_context(orthanc_servers(server_url, database))
        servers = [ours, *theirs]
        databases = dict(zip([s.name for s in servers], [database, *orthanc_databases], strict=True))
        for size in SIZES:
            figures = size_block(server_url, folder, size, servers, databases, durations)
            for name, values in figures.items():
                results.setdefault(name, {}).update(values)
    if durations.other:
        raise RuntimeError(f"the upload function answered {durations.other} uploads with a status other than 201")
    print_side_by_side(results, versions)
    return flat_figures(results, versions)


def size_block(
    server_url: str,
    folder: Path,
    size: int,
    servers: Sequence[Server],
    databases: Mapping[str, str],
    durations: Durations,
) -> dict[str, dict[str, Any]]:
    """Every measure of one size, on every server: sequential, then the warm-up and counted rounds."""
    sequential_count = WARMUP + SEQUENTIAL
    total = sequential_count + WARM_FILES + ROUNDS * ROUND_FILES[size]
    paths = [str(p) for p in write_files(folder, size, total)]
    specs = [s.spec() for s in servers]
    before = database_sizes(server_url, list(databases.values()))
    stored: dict[str, int] = {s.name: 0 for s in servers}

    start = durations.count()
    sequential = run_client({"mode": "sequential", "servers": specs, "files": paths[:sequential_count]})
    our_sequential_ms = durations.since(start, sequential["ours"]["stored"])
    warm_files = paths[sequential_count : sequential_count + WARM_FILES]
    warm = run_client({"mode": "warm", "servers": specs, "files": warm_files})
    start = durations.count()
    cpu_before = cpu_readings(server_url, servers, databases)
    rounds = [
        paths[sequential_count + WARM_FILES + r * ROUND_FILES[size] :][: ROUND_FILES[size]] for r in range(ROUNDS)
    ]
    load = run_client({"mode": "parallel", "servers": specs, "rounds": rounds, "clients": CLIENTS})
    our_parallel_ms = durations.since(start, load["ours"]["stored"])
    cpu_after = cpu_readings(server_url, servers, databases)
    after = database_sizes(server_url, list(databases.values()))

    figures: dict[str, dict[str, Any]] = {}
    for server in servers:
        name = server.name
        stored[name] = sequential[name]["stored"] + warm[name]["stored"] + load[name]["stored"]
        samples = sequential[name]["ms"][WARMUP:]
        figures[name] = {
            f"upload_p50_ms_{size}": round(statistics.median(samples), 2),
            f"upload_p95_ms_{size}": round(percentile(samples, 95), 2),
            f"per_s_5clients_{size}": round(load[name]["stored"] / load[name]["seconds"], 1),
            f"db_bytes_per_instance_{size}": round((after[databases[name]] - before[databases[name]]) / stored[name]),
        }
    figures["ours"][f"fn_ms_per_instance_{size}"] = round(sum(our_parallel_ms) / load["ours"]["stored"], 2)
    for server in servers:
        (processes_before, backends_before), (processes_after, backends_after) = (
            cpu_before[server.name],
            cpu_after[server.name],
        )
        counted = load[server.name]["stored"]
        if processes_after:
            used = cpu_used(processes_before, processes_after)
            figures[server.name][f"server_cpu_ms_per_instance_{size}"] = round(used * 1000 / counted, 2)
        if backends_after:
            used = cpu_used(backends_before, backends_after)
            figures[server.name][f"pg_cpu_ms_per_instance_{size}"] = round(used * 1000 / counted, 2)
        if len(processes_after) > 1:
            shares = worker_shares(processes_before, processes_after)
            figures[server.name][f"worker_cpu_shares_{size}"] = "/".join(str(share) for share in shares)
    figures["ours"][f"fn_ms_per_instance_sequential_{size}"] = round(
        sum(our_sequential_ms[WARMUP:]) / (sequential["ours"]["stored"] - WARMUP), 2
    )
    return figures


def cpu_readings(
    server_url: str, servers: Sequence[Server], databases: Mapping[str, str]
) -> dict[str, tuple[dict[int, float], dict[int, float]]]:
    """For each server: the CPU seconds so far of its processes and of its database's PostgreSQL backends."""
    backends = backend_pids(server_url, list(databases.values()))
    return {s.name: (cpu_seconds(s.processes), cpu_seconds(backends[databases[s.name]])) for s in servers}


def percentile(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


ROWS = [
    (f"upload_p50_ms_{size}", f"upload {size}x{size}, p50 ms (one connection)") for size in SIZES
] + [
    (f"upload_p95_ms_{size}", f"upload {size}x{size}, p95 ms") for size in SIZES
] + [
    (f"per_s_5clients_{size}", f"ingest {size}x{size}, instances/s, {CLIENTS} clients") for size in SIZES
] + [
    (f"fn_ms_per_instance_{size}", f"function ms per instance {size}x{size}, {CLIENTS} clients") for size in SIZES
] + [
    (f"fn_ms_per_instance_sequential_{size}", f"function ms per instance {size}x{size}, sequential")
    for size in SIZES
] + [
    (f"server_cpu_ms_per_instance_{size}", f"server CPU ms per instance {size}x{size}, {CLIENTS} clients")
    for size in SIZES
] + [
    (f"pg_cpu_ms_per_instance_{size}", f"PostgreSQL CPU ms per instance {size}x{size}, {CLIENTS} clients")
    for size in SIZES
] + [
    (f"worker_cpu_shares_{size}", f"each gateway worker's share of its CPU, {size}x{size}") for size in SIZES
] + [
    (f"db_bytes_per_instance_{size}", f"PostgreSQL bytes per instance {size}x{size}") for size in SIZES
]  # fmt: skip


def print_side_by_side(results: Mapping[str, Mapping[str, Any]], versions: Mapping[str, str]) -> None:
    from scripts.bench.common import REPORT

    names = list(results)
    print("\nIngest, distinct uncompressed CT slices, the same files to each server, one run", file=REPORT)
    print(f"  ours:    local gateway ({GATEWAY_WORKERS} worker processes) + upload function, PostgreSQL", file=REPORT)
    if versions:
        plugins = ", ".join(f"{k} {v}" for k, v in versions.items())
        pools = " / ".join(str(n) for n in ORTHANC_INDEX_CONNECTIONS)
        print(f"  Orthanc: {plugins}; index pool {pools} connections, storage in PostgreSQL", file=REPORT)
    width = max(len(text) for _, text in ROWS)
    header = "".join(f"  {name:>15}" for name in names)
    print(f"{'':<{width}}{header}  {'ours/best Orthanc':>17}", file=REPORT)
    for key, text in ROWS:
        values = [results[name].get(key) for name in names]
        cells = "".join(f"  {'-' if v is None else v!s:>15}" for v in values)
        mine = results["ours"].get(key)
        found = ratio(mine, best_orthanc(results, key)) if isinstance(mine, int | float) else None
        print(f"{text:<{width}}{cells}  {'' if found is None else found:>17}", file=REPORT)
    print("", file=REPORT)


def flat_figures(results: Mapping[str, Mapping[str, Any]], versions: Mapping[str, str]) -> dict[str, object]:
    """ingest_<server>_<figure> for bench-results.json, and the ratios that have targets."""
    figures: dict[str, object] = {}
    for name, values in results.items():
        figures.update({f"ingest_{name}_{key}": value for key, value in values.items()})
    if "orthanc" in results:
        figures["ingest_orthanc_versions"] = ", ".join(f"{k} {v}" for k, v in versions.items())
        ours = results["ours"]
        for size in SIZES:
            figures[f"ingest_upload_p50_vs_orthanc_{size}"] = ratio(
                ours[f"upload_p50_ms_{size}"], best_orthanc(results, f"upload_p50_ms_{size}")
            )
            figures[f"ingest_per_s_vs_orthanc_{size}"] = ratio(
                ours[f"per_s_5clients_{size}"], best_orthanc(results, f"per_s_5clients_{size}")
            )
    return figures


# ---------------------------------------------------------------- the client (its own process)


class Client:
    """One kept-alive connection to one server; store() POSTs a file as that server takes it."""

    BOUNDARY = "----ctscanIngestBench7MA4YWxkTrZu0gW"

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.connection = http.client.HTTPConnection("127.0.0.1", int(spec["port"]), timeout=120)

    @classmethod
    def body(cls, spec: Mapping[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
        """The request body and headers for one file: the same bytes, in the server's envelope."""
        headers = dict(spec["headers"])
        if not spec["multipart"]:
            return data, headers
        head = (
            f'--{cls.BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slice.dcm"\r\n'
            "Content-Type: application/dicom\r\n\r\n"
        ).encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={cls.BOUNDARY}"
        return head + data + f"\r\n--{cls.BOUNDARY}--\r\n".encode(), headers

    def store(self, body: bytes, headers: Mapping[str, str]) -> None:
        """POST one prepared body; raises unless the server stored it (201 ours, 200 Success Orthanc)."""
        self.connection.request("POST", self.spec["path"], body=body, headers=dict(headers))
        response = self.connection.getresponse()
        answer = response.read()
        if self.spec["multipart"]:
            if response.status != 201:
                raise RuntimeError(f"{self.spec['name']}: {response.status} {answer[:300]!r}")
        elif response.status != 200 or json.loads(answer).get("Status") != "Success":
            raise RuntimeError(f"{self.spec['name']}: {response.status} {answer[:300]!r}")

    def close(self) -> None:
        self.connection.close()


def _sequential(specs: Sequence[Mapping[str, Any]], files: Sequence[str]) -> dict[str, Any]:
    """Each file to every server in turn (who goes first rotates), one connection per server."""
    clients = {s["name"]: Client(s) for s in specs}
    samples: dict[str, list[float]] = {s["name"]: [] for s in specs}
    try:
        for number, path in enumerate(files):
            data = Path(path).read_bytes()
            for spec in in_turns(specs, number):
                body, headers = Client.body(spec, data)
                start = time.perf_counter()
                clients[spec["name"]].store(body, headers)
                samples[spec["name"]].append((time.perf_counter() - start) * 1000)
    finally:
        for client in clients.values():
            client.close()
    return {name: {"ms": values, "stored": len(values)} for name, values in samples.items()}


def _parallel(spec: Mapping[str, Any], files: Sequence[str], clients: int) -> float:
    """Store every file on one server with `clients` threads, each on its own kept-alive connection
    (on a worker process of its own, where the server has several); seconds from the first request
    to the last answer."""
    bodies = [Client.body(spec, Path(path).read_bytes()) for path in files]
    connected = spread_connections(spec, clients)
    return threads.drain(
        bodies,
        [functools.partial(lambda client: client, client) for client in connected],
        lambda client, item: client.store(*item),
        Client.close,
        name=str(spec["name"]),
    )


def spread_connections(spec: Mapping[str, Any], clients: int, tries: int = 100) -> list[Client]:
    """`clients` connected clients; with spec["workers"] (the gateway's worker processes), each on a
    worker of its own as far as there are workers.

    Lambda runs each concurrent request in a sandbox of its own. The gateway's workers share one
    listening socket, and connections that arrive close together often go to the same worker
    (asyncio accepts all that are waiting), where they share one GIL while another worker idles. So
    the client keeps a connection only when a worker with none of ours accepted it, and drops the
    rest before the clock starts (it finds who accepted it in /proc).
    """
    workers = list(spec.get("workers") or [])
    kept: list[Client] = []
    taken: set[int] = set()
    for _ in range(tries):
        if len(kept) == clients:
            break
        client = Client(spec)
        client.connection.connect()
        if not workers or len(taken) == len(workers):
            kept.append(client)
            continue
        worker = accepting_worker(client, workers)
        if worker is not None and worker not in taken:
            taken.add(worker)
            kept.append(client)
        else:
            client.close()
    while len(kept) < clients:  # the workers would not spread: measure anyway (the shares will say so)
        kept.append(Client(spec))
        kept[-1].connection.connect()
    return kept


def accepting_worker(client: Client, workers: Sequence[int], wait: float = 2.0) -> int | None:
    """Which of `workers` holds the server side of the client's connection (None if none does in time)."""
    sock = client.connection.sock
    if sock is None:
        return None
    local_port = sock.getsockname()[1]
    server_port = int(client.spec["port"])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        inodes = socket_inodes(local=server_port, remote=local_port, state="01")  # ESTABLISHED
        for pid in workers:
            if holds(pid, inodes):
                return pid
        time.sleep(0.005)
    return None


def socket_inodes(*, local: int, remote: int | None = None, state: str) -> set[str]:
    """ "socket:[inode]" of the loopback TCP sockets on local port `local` (and remote port `remote`)
    in `state` (/proc/net/tcp's hex code: 0A listening, 01 established)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] != state or int(fields[1].rsplit(":", 1)[1], 16) != local:
                    continue
                if remote is None or int(fields[2].rsplit(":", 1)[1], 16) == remote:
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes


def holds(pid: int, inodes: set[str]) -> bool:
    """Whether process `pid` has one of these sockets open."""
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if str(fd.readlink()) in inodes:
                    return True
    return False


def run(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The client's work for one spec: "sequential", "warm" (the files with CLIENTS threads, so that
    every gateway worker process has imported the upload function before the counted rounds) or
    "parallel" (each round's files to each server in turn, CLIENTS threads)."""
    servers: list[Mapping[str, Any]] = list(spec["servers"])
    if spec["mode"] == "sequential":
        return _sequential(servers, spec["files"])
    if spec["mode"] == "warm":
        for server in servers:
            _parallel(server, spec["files"], CLIENTS)
        return {s["name"]: {"stored": len(spec["files"])} for s in servers}
    seconds = {s["name"]: 0.0 for s in servers}
    stored = {s["name"]: 0 for s in servers}
    for number, files in enumerate(spec["rounds"]):
        for server in in_turns(servers, number):
            seconds[server["name"]] += _parallel(server, files, int(spec["clients"]))
            stored[server["name"]] += len(files)
    return {name: {"seconds": seconds[name], "stored": stored[name]} for name in seconds}


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))
