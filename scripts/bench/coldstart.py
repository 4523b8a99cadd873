"""Cold start: each function's init (the import of its handler, then its first request) from its own
built zip, in a fresh CPython 3.12 process, against a real database.

`make bench` runs it; `.venv/bin/python -m scripts.bench.main --cold-start` runs it alone. It needs
`make package` (.serverless/<function>.zip) and a CPython 3.12 (scripts/build/find-lambda-python.sh).

Each child process has only the unzipped package on sys.path (-I: no user site, no PYTHONPATH; -B:
nothing written beside the code, as /var/task is read-only), its working directory is the package, and
its environment is what serverless.yml gives the function, less the CloudFormation references (the
database comes as DATABASE_URL, the signing and audit keys as local files instead of secrets). The
first request is the API Gateway HTTP API 2.0 event of a representative route, built here as the tests
build it (scripts/dev/localgw/events.py), and the child reports the two times it measured.

What a local process leaves out: Lambda fetching and unpacking the zip and starting the runtime, its
share of a CPU (below 1769 MB a function has only a fraction of one vCPU), and the first request's
Secrets Manager calls (boto3's import among them) for the database credentials and keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scripts.bench.common import REPORT, fresh_database
from scripts.build.serverless_yml import read_serverless_yml
from scripts.dev import phantom
from scripts.dev.env import ROOT
from scripts.dev.localgw.events import LambdaContext, build_event
from scripts.dev.localgw.routes import Route, load_routes

# The order they run in: upload's first, uncounted run stores the scan that images and render read.
FUNCTIONS = ("upload", "images", "render", "scans", "auth", "admin", "migrate")
RUNS = 7
# At 1769 MB a function has one full vCPU; below, a share in proportion (AWS Lambda's documentation).
FULL_VCPU_MB = 1769
# From provider.environment, what only the deployed stack has: the database is DATABASE_URL here.
DEPLOYED_DATABASE_VARIABLES = frozenset({"DB_HOST", "DB_PORT", "DB_NAME", "DB_SECRET_ARN", "DB_SSLMODE"})
USERNAME = "coldstart"
PASSWORD = "cold-start-bench-password"  # a throwaway user in a throwaway database

# Runs inside one function's unpacked zip: the import of its handler, then one call of it, each timed;
# the last line of stdout is the report (the handler's own log lines and metrics come before it).
CHILD = """
import json, sys, time
sys.path.insert(0, '.')
spec = json.load(open(sys.argv[1], encoding='utf-8'))
class Context:
    def __init__(self, attributes, remaining_ms):
        self.__dict__.update(attributes)
        self._deadline = time.monotonic() + remaining_ms / 1000
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))
context = Context(spec['context'], spec['remaining_ms'])
event = spec['event']
cpu_started, started = time.process_time(), time.perf_counter()
module = __import__(spec['module'], fromlist=['handler'])
imported, cpu_imported = time.perf_counter(), time.process_time()
result = module.handler(event, context)
answered = time.perf_counter()
if isinstance(result, dict) and 'statusCode' in result:
    result = {'statusCode': result['statusCode'], 'body': None if result.get('isBase64Encoded') else result.get('body')}
print(json.dumps({'coldstart': {'import_ms': (imported - started) * 1000, 'request_ms': (answered - imported) * 1000,
                                'import_cpu_ms': (cpu_imported - cpu_started) * 1000, 'result': result}}, default=str))
"""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One fresh process: its import and first request, in milliseconds, and what the handler returned;
    and the import's CPU time, which other work on a shared machine disturbs less than the clock."""

    import_ms: float
    request_ms: float
    result: Any
    import_cpu_ms: float = 0.0

    @property
    def init_ms(self) -> float:
        return self.import_ms + self.request_ms


@dataclasses.dataclass
class Fixture:
    """What the first requests need from the database, filled in as the functions run."""

    token: str
    scan_id: str | None = None
    study: str = ""
    series: str = ""
    instance: str = ""


@dataclasses.dataclass(frozen=True)
class Function:
    name: str
    handler_module: str
    memory_mb: int
    timeout_s: int
    http: bool


def functions(serverless: Mapping[str, Any]) -> dict[str, Function]:
    """Every function of serverless.yml: its handler's module, memory, timeout, and whether HTTP reaches it."""
    provider = serverless.get("provider") or {}
    found: dict[str, Function] = {}
    for name, spec in (serverless.get("functions") or {}).items():
        module = str(spec["handler"]).rsplit(".", 1)[0].replace("/", ".")
        http = any(isinstance(event, dict) and "httpApi" in event for event in spec.get("events") or [])
        memory = int(spec.get("memorySize", provider.get("memorySize", 1024)))
        timeout = int(spec.get("timeout", provider.get("timeout", 6)))
        found[str(name)] = Function(str(name), module, memory, timeout, http)
    return found


def function_environment(serverless: Mapping[str, Any], name: str, database_url: str, scratch: Path) -> dict[str, str]:
    """The environment the function has deployed, as far as it runs here: provider's and its own plain
    values (a CloudFormation reference resolves only in the stack), the database as DATABASE_URL, the
    keys that are secrets in the stack as files in `scratch`, and the variables the Lambda runtime sets."""
    provider = serverless.get("provider") or {}
    spec = (serverless.get("functions") or {})[name]
    merged = {**(provider.get("environment") or {}), **(spec.get("environment") or {})}
    env = {
        key: value
        for key, value in merged.items()
        if isinstance(value, str) and key not in DEPLOYED_DATABASE_VARIABLES and not key.endswith("_SECRET_ARN")
    }
    function = functions(serverless)[name]
    env.update(
        DATABASE_URL=database_url,
        IMAGE_URL_KEYS_FILE=str(scratch / "image-url-keys.json"),
        AUDIT_KEY_FILE=str(scratch / "audit-query-key.json"),
        AWS_LAMBDA_FUNCTION_NAME=name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(function.memory_mb),
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_REGION="eu-central-1",
        LAMBDA_TASK_ROOT=".",
        LANG="en_US.UTF-8",
        TZ=":UTC",
        PATH="/usr/local/bin:/usr/bin:/bin",
    )
    return env


def request(name: str, fixture: Fixture, run: int, routes: list[Route]) -> dict[str, Any]:
    """The event of `name`'s first request: an HTTP API 2.0 event of a representative route (run picks
    a distinct DICOM slice for each upload, as a stored SOP Instance UID is refused a second time), or
    the invocation payload of an ops-invoked function."""
    if name == "admin":
        return {"action": "audit", "limit": 1}
    if name == "migrate":
        return {"backfill": True}
    bearer = ("authorization", f"Bearer {fixture.token}")
    headers = [("host", "coldstart.example.test"), ("user-agent", "coldstart-bench")]
    body = b""
    if name == "upload":
        body, content_type = multipart_dicom(phantom.dicom_bytes(upload_dataset(run)), f"slice-{run}.dcm")
        method, path = "POST", "/api/v1/scans/analyze"
        headers += [bearer, ("content-type", content_type)]
    elif name == "images":
        method, path = "GET", f"/api/v1/scans/image/{fixture.scan_id}/thumbnail"
        headers.append(bearer)
    elif name == "render":
        method = "GET"
        path = f"/api/v1/dicomweb/studies/{fixture.study}/series/{fixture.series}/instances/{fixture.instance}/rendered"
        headers += [bearer, ("accept", "image/jpeg")]
    elif name == "scans":
        method, path = "GET", "/api/v1/scans"
        headers.append(bearer)
    elif name == "auth":
        method, path = "POST", "/api/v1/auth/sessions"
        body = json.dumps({"username": USERNAME, "password": PASSWORD}).encode()
        headers.append(("content-type", "application/json"))
    else:
        raise ValueError(f"no first request for {name}")
    for route in routes:
        if route.function_name == name and (params := route.match(method, path)) is not None:
            return build_event(
                method=method,
                raw_path=path,
                raw_query="",
                headers=headers,
                body=body,
                source_ip="198.51.100.7",
                route=route,
                path_params=params,
            )
    raise ValueError(f"serverless.yml routes no {method} {path} to {name}")


def upload_dataset(run: int) -> Any:
    """The 512x512 CT slice (scripts/dev/phantom.py) of upload's run `run`: each a distinct instance."""
    return phantom.ct_slice_dataset(512, seed=7000 + run, instance_number=run + 1)


def multipart_dicom(data: bytes, filename: str) -> tuple[bytes, str]:
    """A one-file multipart/form-data body, as the web app posts an upload."""
    boundary = "----coldstartBoundary0123456789"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# What a first request must answer, or the figure is of an error path.
EXPECTED_STATUS = {"upload": 201, "images": 200, "render": 200, "scans": 200, "auth": 201}


def check(name: str, result: Any) -> None:
    """Raise when the handler did not do the work the figure stands for."""
    if name in EXPECTED_STATUS:
        status = result.get("statusCode") if isinstance(result, dict) else None
        if status != EXPECTED_STATUS[name]:
            raise RuntimeError(f"{name}: first request answered {status}, not {EXPECTED_STATUS[name]}: {result}")
        return
    done = isinstance(result, dict) and (
        result.get("ok") is True if name == "admin" else "applied" in result and result.get("status") != "error"
    )
    if not done:
        raise RuntimeError(f"{name}: {result}")


def parse_child_output(stdout: str) -> Sample:
    """The child's report: the last stdout line that is a JSON object with a "coldstart" key (the
    handler's JSON log lines and metrics come before it)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict) and isinstance(document.get("coldstart"), dict):
            report = document["coldstart"]
            return Sample(
                float(report["import_ms"]),
                float(report["request_ms"]),
                report.get("result"),
                float(report.get("import_cpu_ms", 0.0)),
            )
    raise ValueError("the child printed no cold-start report")


def context_attributes(function: Function, run: int) -> dict[str, Any]:
    """The Lambda context's attributes (LambdaContext's, as the tests pass it), as JSON for the child."""
    route = Route("POST", "/", function.name, function.handler_module, function.timeout_s, function.memory_mb)
    context = LambdaContext(route, f"coldstart-{function.name}-{run}")
    return {key: value for key, value in vars(context).items() if not key.startswith("_")}


def run_once(
    python: str, package: Path, function: Function, event: Any, env: Mapping[str, str], scratch: Path, run: int
) -> Sample:
    """One fresh CPython 3.12 process in the unpacked package: import, then the first request."""
    spec_file = scratch / f"{function.name}-{run}.json"
    spec = {
        "module": function.handler_module,
        "event": event,
        "context": context_attributes(function, run),
        "remaining_ms": function.timeout_s * 1000,
    }
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    out = subprocess.run(
        [python, "-B", "-I", "-c", CHILD, str(spec_file)],
        cwd=package,
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=function.timeout_s + 60,
    )
    spec_file.unlink()
    if out.returncode != 0:
        raise RuntimeError(f"{function.name}: the child failed:\n{out.stderr[-3000:]}")
    sample = parse_child_output(out.stdout)
    check(function.name, sample.result)
    return sample


@contextlib.contextmanager
def unpacked(archive: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"coldstart-{archive.stem}-") as directory:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(directory)
        yield Path(directory)


def lambda_python() -> str:
    """CPython 3.12's path, or "" when there is none."""
    found = subprocess.run(
        [str(ROOT / "scripts" / "build" / "find-lambda-python.sh")], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


def prepare_database(server_url: str, name: str) -> tuple[str, Fixture]:
    """A fresh database `name`, migrated, with a user and a session's token (the scan comes from the
    upload function's uncounted first run). Its own connection: the bench's process-wide one stays."""
    from shared import auth, db
    from shared.core import config
    from shared.db.migrations import run_migrations

    url = fresh_database(server_url, name)
    con = db.connect(config.parse_database_url(url), timeout=60)
    try:
        run_migrations(con)
        user_id = auth.create_user(con, username=USERNAME, password=PASSWORD)
        token = auth.issue_session(con, user_id=user_id, ttl_seconds=3600).token
    finally:
        con.close()
    return url, Fixture(token=token)


def remember_upload(fixture: Fixture, result: Any) -> None:
    """The scan the upload's uncounted run (run 0) stored: what images and render read."""
    fixture.scan_id = json.loads(result["body"])["scanId"]
    ds = upload_dataset(0)
    fixture.study, fixture.series, fixture.instance = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def measure(server_url: str, *, database: str = "ctscan_bench_coldstart", runs: int = RUNS) -> dict[str, list[Sample]]:
    """`runs` counted fresh processes per function (after one uncounted run each), or {} without
    packages or CPython 3.12. The counted runs go round the functions in turn, so that a busy spell
    on the machine weighs on all of them alike rather than on whichever was running."""
    python = lambda_python()
    archives = {name: ROOT / ".serverless" / f"{name}.zip" for name in FUNCTIONS}
    if not python or not all(archive.exists() for archive in archives.values()):
        print("(no built packages or no CPython 3.12: run `make package` for the cold-start figures)", file=REPORT)
        return {}
    serverless = read_serverless_yml(ROOT / "serverless.yml")
    described = functions(serverless)
    routes = load_routes(ROOT / "serverless.yml")
    url, fixture = prepare_database(server_url, database)
    samples: dict[str, list[Sample]] = {name: [] for name in FUNCTIONS}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coldstart-scratch-")))
        packages = {name: stack.enter_context(unpacked(archive)) for name, archive in archives.items()}
        envs = {name: function_environment(serverless, name, url, scratch) for name in FUNCTIONS}

        def run(name: str, number: int) -> Sample:
            event = request(name, fixture, number, routes)
            return run_once(python, packages[name], described[name], event, envs[name], scratch, number)

        for name in FUNCTIONS:  # uncounted: upload's stores the scan the reads then ask for
            first = run(name, 0)
            if name == "upload":
                remember_upload(fixture, first.result)
        for number in range(1, runs + 1):
            for name in FUNCTIONS:
                samples[name].append(run(name, number))
    return samples


def figures_from(samples: Mapping[str, list[Sample]]) -> dict[str, object]:
    """Medians per function: import, first request, and their sum (the median of the sums)."""
    figures: dict[str, object] = {}
    for name, runs in samples.items():
        figures[f"cold_{name}_import_ms"] = round(statistics.median(s.import_ms for s in runs), 1)
        figures[f"cold_{name}_first_request_ms"] = round(statistics.median(s.request_ms for s in runs), 1)
        figures[f"cold_{name}_init_ms"] = round(statistics.median(s.init_ms for s in runs), 1)
        figures[f"cold_{name}_import_cpu_ms"] = round(statistics.median(s.import_cpu_ms for s in runs), 1)
    return figures


def print_section(samples: Mapping[str, list[Sample]], described: Mapping[str, Function]) -> None:
    """The per-function table, with what a local process leaves out."""
    if not samples:
        return
    print("\ncold start from each function's zip, CPython 3.12, median of fresh processes (ms):", file=REPORT)
    print(
        f"{'function':<9} {'memory':>7} {'vCPU':>5} {'import':>8} {'1st req':>8} {'init':>8} {'best init':>10} "
        f"{'import CPU':>11}  runs",
        file=REPORT,
    )
    for name, runs in samples.items():
        function = described[name]
        share = min(1.0, function.memory_mb / FULL_VCPU_MB)
        print(
            f"{name:<9} {function.memory_mb:>5}MB {share:>5.2f} "
            f"{statistics.median(s.import_ms for s in runs):>8.1f} "
            f"{statistics.median(s.request_ms for s in runs):>8.1f} "
            f"{statistics.median(s.init_ms for s in runs):>8.1f} {min(s.init_ms for s in runs):>10.1f} "
            f"{statistics.median(s.import_cpu_ms for s in runs):>11.1f}  {len(runs)}",
            file=REPORT,
        )
    print(
        "best init: the fastest run, the least disturbed by other work on the machine; import CPU: the\n"
        "import's CPU time (median), which waiting for a busy core leaves out. A local process\n"
        "leaves out Lambda's fetch and unpack of the zip and the runtime's own start; its CPU share (one\n"
        f"full vCPU at {FULL_VCPU_MB} MB, the vCPU column's fraction below that: these ran on a whole core);\n"
        "and, deployed, the first request's Secrets Manager calls (boto3's import and client, the database\n"
        "credentials, the origin and signing secrets), which are DATABASE_URL and local key files here.",
        file=REPORT,
    )


def figures(server_url: str, *, database: str = "ctscan_bench_coldstart") -> dict[str, object]:
    """The cold-start figures for `make bench`, with their table printed."""
    samples = measure(server_url, database=database)
    print_section(samples, functions(read_serverless_yml(ROOT / "serverless.yml")))
    return figures_from(samples)
