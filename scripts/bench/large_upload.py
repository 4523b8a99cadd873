"""How long and how much memory the upload function needs for the largest presigned upload.

`make bench-large-upload [MB=480]`: a multi-frame uncompressed CT DICOM of about MB megabytes is
posted through the real flow (POST /api/v1/scans/uploads, a multipart POST to the presigned URL,
POST …/complete) against moto's S3 server in a process of its own, with the S3 tier on. It prints
the time of each step and the upload function's peak memory while completing (this process's
peak RSS grown over what it held before, the file itself included as the caller's copy).

S3 here is moto on the same machine: the transfers cost what a local socket costs, where Lambda's
network to S3 runs at ~100+ MB/s. The figure that sizes the function is the CPU and memory of
/complete; add the transfer at the bandwidth of the deployed function to judge its 29 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BUCKET = "ctscan-bench-large"
REGION = "eu-central-1"
FRAME_BYTES = 512 * 512 * 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry a forking parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: kilobytes there too


def large_dicom(megabytes: int) -> bytes:
    """An uncompressed multi-frame CT of about `megabytes` MB (512x512, 16 bits a sample)."""
    from scripts.dev import phantom

    frames = max(1, megabytes * 1_000_000 // FRAME_BYTES)
    ds = phantom.ct_slice_dataset(512, frames=1, seed=11)
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(ds.PixelData) * frames
    return phantom.dicom_bytes(ds)


def complete_in_this_process(upload_id: str, token: str) -> int:
    """The child: import the upload function, complete the upload, print its figures as JSON."""
    import asyncio

    asyncio.set_event_loop(asyncio.new_event_loop())
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the functions' logs
    from functions.upload import handler  # noqa: F401 - imported as a cold container would
    from tests.lambda_client import LambdaClient

    imported = peak_rss_mb()
    started = time.perf_counter()
    completed = LambdaClient().request("POST", f"/api/v1/scans/uploads/{upload_id}/complete", token=token)
    seconds = time.perf_counter() - started
    assert completed.status == 201, completed.body
    scan = completed.json()
    figures = {
        "complete_s": round(seconds, 2),
        "complete_peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(imported, 1),
        "frames": scan["dicom"]["frameCount"] if scan.get("dicom") else "?",
        "original_in": "s3" if scan["fileSize"] >= 1048576 else "postgres",
    }
    print(json.dumps(figures), file=real_stdout)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=480, help="size of the DICOM file in MB (default 480)")
    parser.add_argument("--complete", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.complete:
        return complete_in_this_process(args.complete, args.token)

    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return run(args.mb, f"http://127.0.0.1:{port}")
    finally:
        moto.terminate()
        moto.wait(timeout=30)


def run(megabytes: int, endpoint: str) -> int:
    os.environ.update(
        {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": REGION,
            "IMAGES_BUCKET": BUCKET,
            "STORAGE_TIER_S3_MIN_BYTES": "1048576",
        }
    )
    import boto3
    import requests

    from scripts.bench.main import bench_database
    from shared import auth, db

    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    report = sys.stdout
    bench_database("ctscan_bench_large_upload")  # from here on stdout (the functions' logs) is /dev/null
    from tests.lambda_client import LambdaClient

    user_id = db.call(db.create_user, username="bench", password_hash=auth.hash_password("bench"))
    token = db.call(auth.issue_session, user_id=user_id, ttl_seconds=3600).token
    api = LambdaClient()

    data = large_dicom(megabytes)
    figures: dict[str, float | int | str] = {"file_bytes": len(data)}
    started = time.perf_counter()
    created = api.request(
        "POST",
        "/api/v1/scans/uploads",
        token=token,
        body=json.dumps({"filename": "large.dcm", "size": len(data)}).encode(),
        headers={"content-type": "application/json"},
    )
    assert created.status == 201, created.body
    figures["start_ms"] = round((time.perf_counter() - started) * 1000, 1)
    upload = created.json()
    started = time.perf_counter()
    posted = requests.post(
        upload["url"], data=upload["fields"], files={"file": ("large.dcm", data, "application/dicom")}, timeout=600
    )
    assert posted.status_code == 204, posted.text
    figures["post_to_s3_s"] = round(time.perf_counter() - started, 2)

    del data
    # /complete in a process of its own, as in a fresh upload container: its peak RSS is the function's.
    child = subprocess.run(
        [sys.executable, "-m", "scripts.bench.large_upload", "--complete", upload["uploadId"], "--token", token],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=900,
        check=True,
    )
    figures.update(json.loads(child.stdout.strip().splitlines()[-1]))
    for name, value in figures.items():
        print(f"{name:28} {value}", file=report)
    db.close_connection()
    return 0


if __name__ == "__main__":
    sys.exit(main())
