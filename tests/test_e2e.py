"""End to end over real HTTP: `make run`'s entry point, the local gateway, and a kill -9 of everything."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psutil
import pytest

from tests import images
from tests.conftest import ROOT
from tests.lambda_client import multipart

pytestmark = pytest.mark.slow


# The gateway's first line names the port it bound (PORT=0: the system's choice, made atomically at
# bind time; a port probed free beforehand may be taken by the time the gateway binds it).
BANNER = re.compile(r"^Local gateway on http://127\.0\.0\.1:(\d+)")


class Service:
    """scripts/dev/run.py in a subprocess, on its own embedded PostgreSQL in a temporary folder."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata, self.port = pgdata, 0
        self.process: subprocess.Popen[str] | None = None
        self.token = ""
        self.env: dict[str, str] = {}  # more environment for scripts/dev/run.py
        self.output: list[str] = []  # what it printed before the gateway's banner

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(PGDATA_DIR=str(self.pgdata), PORT="0", PYTHONUNBUFFERED="1", **self.env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scripts.dev.run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("dev token: "):
                self.token = line.split(": ", 1)[1].strip()
            bound = BANNER.match(line)
            if bound:
                self.port = int(bound.group(1))
                self.output = lines
                return
        raise AssertionError("service did not start:\n" + "".join(lines))

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            all_headers = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
            conn.request(method, path, body=body or None, headers=all_headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def kill_gateway(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "pg")
    yield svc
    if svc.process and svc.process.poll() is None:
        svc.process.kill()
        svc.process.wait(10)
    if svc.process and svc.process.stdout and not svc.process.stdout.closed:
        svc.process.stdout.close()
    from scripts.dev.devdb import stop_server

    stop_server(svc.pgdata)


def test_upload_survives_kill_9_of_gateway_and_database(service: Service) -> None:
    # Given a running service with one uploaded scan
    service.start()
    data = images.png16(seed=11)
    body, ctype = multipart({"file": ("chest.png", data, "image/png")})
    status, _, raw = service.request("POST", "/api/v1/scans/analyze", body=body, headers={"Content-Type": ctype})
    assert status == 201, raw
    scan_id = json.loads(raw)["scanId"]
    before = {
        kind: service.request("GET", f"/api/v1/scans/image/{scan_id}/{kind}")[2]
        for kind in ("original", "annotated", "thumbnail")
    }
    assert before["original"] == data
    token = service.token

    # When the gateway and the database are both killed with SIGKILL
    postmaster = service.postmaster_pid()
    service.kill_gateway()
    os.kill(postmaster, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(postmaster) and psutil.Process(postmaster).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    # Then after a restart every image is byte-identical, and the old session still works
    service.start()
    assert service.postmaster_pid() != postmaster
    for kind, expected in before.items():
        status, headers, got = service.request("GET", f"/api/v1/scans/image/{scan_id}/{kind}", token=token)
        assert status == 200, kind
        assert got == expected, kind
        assert headers["etag"] == f'"{hashlib.sha256(got).hexdigest()}"'


def test_gateway_round_trip_over_http(service: Service) -> None:
    service.start()
    data = images.jpeg(seed=5)
    body, ctype = multipart({"file": ("knee.jpg", data, "image/jpeg")})

    status, headers, raw = service.request("POST", "/api/v1/scans/analyze", body=body, headers={"Content-Type": ctype})
    assert status == 201
    result = json.loads(raw)
    url, _, signature = result["results"]["imageUrl"].partition("?")
    assert url == f"http://127.0.0.1:{service.port}/api/v1/scans/image/{result['scanId']}/original"
    assert signature.startswith("exp=") and "&sig=" in signature

    # The signed URL works with no Authorization header, as an <img> would load it
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    conn.request("GET", result["results"]["imageUrl"].removeprefix(f"http://127.0.0.1:{service.port}"))
    signed = conn.getresponse()
    assert (signed.status, signed.read()) == (200, data)
    assert signed.getheader("referrer-policy") == "no-referrer"
    conn.close()

    status, headers, got = service.request("GET", f"/api/v1/scans/image/{result['scanId']}/original")
    assert (status, got, headers["content-type"]) == (200, data, "image/jpeg")

    status, headers, got = service.request("HEAD", f"/api/v1/scans/image/{result['scanId']}/original")
    assert (status, got, headers["content-length"]) == (200, b"", str(len(data)))

    status, _, got = service.request(
        "GET", f"/api/v1/scans/image/{result['scanId']}/original", headers={"If-None-Match": headers["etag"]}
    )
    assert (status, got) == (304, b"")

    status, _, raw = service.request("GET", "/api/v1/scans")
    assert status == 200 and [i["scanId"] for i in json.loads(raw)["items"]] == [result["scanId"]]

    status, _, raw = service.request("GET", "/api/v1/scans", token="wrong")
    assert status == 401 and json.loads(raw)["error"]["code"] == "not_authenticated"


def test_make_user_and_make_token(service: Service) -> None:
    service.start()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGDATA_DIR"] = str(service.pgdata)

    made = subprocess.run(
        ["make", "-s", "user", "NAME=carol", "PASSWORD=s3cret-passphrase"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    issued = subprocess.run(
        ["make", "-s", "token", "NAME=carol"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip().splitlines()[-1]

    status, _, raw = service.request("GET", "/api/v1/scans", token=token)
    assert status == 200 and json.loads(raw)["items"] == []
    status, _, raw = service.request(
        "POST",
        "/api/v1/auth/sessions",
        body=json.dumps({"username": "carol", "password": "s3cret-passphrase"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 201

    # A short password is refused in one clear line, not a traceback
    short = subprocess.run(
        ["make", "-s", "user", "NAME=dave", "PASSWORD=short"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert short.returncode != 0
    assert "password must be at least 12 characters" in short.stderr
    assert "Traceback" not in short.stderr + short.stdout


@contextlib.contextmanager
def files_a_reader_keeps(names: list[str]) -> Iterator[None]:
    """A reader's own files of these names in the checkout (written here if absent): each must survive."""
    kept = {}
    for name in names:
        path = ROOT / name
        kept[path] = path.read_bytes() if path.exists() else None
        if kept[path] is None:
            path.write_bytes(b"a reader's own " + name.encode())
    expected = {path: path.read_bytes() for path in kept}
    try:
        yield
        for path, content in expected.items():
            assert path.exists() and path.read_bytes() == content, f"{path.name} in the checkout was touched"
    finally:
        for path, original in kept.items():
            if original is None:
                path.unlink(missing_ok=True)


def run_readme_block(script: str, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The block in a shell in a folder of its own, as a reader pastes it, with `make` run in the checkout.

    Files the block writes (curl -o ...) land in `workdir`, never in the checkout, so the tests neither
    overwrite nor delete a reader's files of the same names; samples/ and .venv are the checkout's.
    """
    workdir.mkdir()
    for name in ("samples", ".venv"):
        (workdir / name).symlink_to(ROOT / name)
    prelude = f'make() {{ command make -C {shlex.quote(str(ROOT))} --no-print-directory "$@"; }}\n'
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", prelude + script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def readme_block(heading: str) -> str:
    """The first ```sh block after a README heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


def test_the_readme_api_examples_run_as_written(service: Service, tmp_path: Path) -> None:
    # Given `make run` (here: its entry point on a free port and its own embedded PostgreSQL)
    service.start()
    script = readme_block("## Using the API").replace("127.0.0.1:3000", f"127.0.0.1:{service.port}")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGDATA_DIR"] = str(service.pgdata)
    workdir = tmp_path / "reader"

    # When the README's commands run in a shell, as a reader would paste them, beside a reader's own
    # preview.jpg and original.dcm in the checkout
    with files_a_reader_keeps(["preview.jpg", "original.dcm"]):
        result = run_readme_block(script + '\necho "SCAN=$SCAN SERIES=$SERIES"\n', workdir, env)
    written = [workdir / "preview.jpg", workdir / "original.dcm"]
    preview, original = (path.read_bytes() if path.exists() else b"" for path in written)

    # Then every step worked: five slices stored, the series listed in order, images fetched
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for number in range(1, 6):
        assert f"201 samples/series/slice_{number:03d}.dcm" in out, out[-3000:]
    scan = out.rsplit("SCAN=", 1)[1].split()[0]
    assert scan.startswith("scan_")
    assert original == (ROOT / "samples" / "series" / "slice_003.dcm").read_bytes()
    assert preview[:3] == b"\xff\xd8\xff"
    # curl prints each JSON answer without a newline: take the listings out of the stream.
    decoder = json.JSONDecoder()
    listings = [decoder.raw_decode(out, start)[0] for start in _find_all(out, '{"items":')]
    newest_first, in_series = listings
    assert len(newest_first["items"]) == 6  # the PNG and the five slices
    assert [item["dicom"]["instanceNumber"] for item in in_series["items"]] == [1, 2, 3, 4, 5]


def _find_all(text: str, needle: str) -> list[int]:
    found, start = [], text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + 1)
    return found


def test_the_readme_dicomweb_examples_run_as_written(service: Service, tmp_path: Path) -> None:
    # Given `make run` (its entry point on a free port, its own embedded PostgreSQL)
    service.start()
    script = readme_block("## DICOMweb").replace("127.0.0.1:3000", f"127.0.0.1:{service.port}")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGDATA_DIR"] = str(service.pgdata)
    workdir = tmp_path / "reader"

    # When a reader pastes the README's DICOMweb commands into a shell (their own frame.multipart and
    # bone.png in the checkout survive it)
    with files_a_reader_keeps(["frame.multipart", "bone.png"]):
        result = run_readme_block(script, workdir, env)
    written = [workdir / "frame.multipart", workdir / "bone.png"]
    frame, bone = (path.read_bytes() if path.exists() else b"" for path in written)

    # Then the series was stored, found by its patient's name, described, and read as frames and a picture
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "5 instances stored or already held;" in out, out[-3000:]
    found = json.JSONDecoder().raw_decode(out, out.index("[{"))[0]
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "Phantom^Abdomen"}]
    assert "5 instances described" in out
    assert frame.startswith(b"--") and b"transfer-syntax=" in frame
    assert bone[:8] == b"\x89PNG\r\n\x1a\n"
    viewer = json.loads(out[out.rindex('{"token"') :])
    assert viewer["token"] and viewer["expiresAt"]


def test_make_run_creates_the_images_bucket_on_a_local_s3(service: Service) -> None:
    from moto.server import ThreadedMotoServer

    # Given a local S3 (moto's server) without the bucket IMAGES_BUCKET names
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint, bucket, region = f"http://{host}:{port}", f"ctscan-local-{secrets.token_hex(4)}", "eu-central-1"
        aws = dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION=region)
        client = boto3.client("s3", endpoint_url=endpoint, region_name=region, **_credentials(aws))
        assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
        service.env = dict(IMAGES_BUCKET=bucket, AWS_ENDPOINT_URL_S3=endpoint, STORAGE_TIER_S3_MIN_BYTES="1", **aws)

        # When `make run` starts (its entry point)
        service.start()

        # Then the bucket exists in the configured region, make run said so, and an upload lands in it
        assert f"images bucket: created {bucket} at {endpoint}\n" in service.output, service.output
        assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == region
        body, ctype = multipart({"file": ("chest.png", images.png16(seed=3), "image/png")})
        status, _, raw = service.request("POST", "/api/v1/scans/analyze", body=body, headers={"Content-Type": ctype})
        assert status == 201, raw
        assert client.list_objects_v2(Bucket=bucket)["KeyCount"] > 0

        # And a second start finds the bucket there and keeps its objects
        service.kill_gateway()
        service.start()
        assert f"images bucket: {bucket} at {endpoint}\n" in service.output, service.output
        assert client.list_objects_v2(Bucket=bucket)["KeyCount"] > 0
    finally:
        moto.stop()


def test_make_run_says_in_one_line_when_the_local_s3_is_unreachable(tmp_path: Path) -> None:
    # Given IMAGES_BUCKET and an endpoint where nothing listens
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        PGDATA_DIR=str(tmp_path / "pg"),
        IMAGES_BUCKET="ctscan-local",
        AWS_ENDPOINT_URL_S3="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="eu-central-1",
        AWS_MAX_ATTEMPTS="1",
    )

    # When make run starts
    result = subprocess.run(
        [sys.executable, "-m", "scripts.dev.run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    # Then it stops with one line naming the bucket and the endpoint, not a traceback
    assert result.returncode == 1
    assert "images bucket ctscan-local at http://127.0.0.1:9: " in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pg").exists()


def _credentials(aws: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": aws["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"]}
