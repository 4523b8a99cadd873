"""Lambda handlers for the local gateway tests: they report what the gateway sent them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from typing import Any

BINARY_PAYLOAD = bytes(range(256)) * 24
RESPONSE_COOKIES = ["session=abc; Path=/; HttpOnly", "theme=dark; Max-Age=60"]

calls: list[str] = []  # request ids of the events echo received
slow_runs: list[dict[str, Any]] = []
_slow_lock = threading.Lock()
stuck_threads: set[str] = set()  # names of the threads (containers) that ran stuck() past its timeout
release_stuck = threading.Event()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    calls.append(event["requestContext"]["requestId"])
    reply = {
        "event": event,
        "context": {
            "function_name": context.function_name,
            "aws_request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
        "pid": os.getpid(),
    }
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(reply)}


def binary(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "image/png", "Content-Length": str(len(BINARY_PAYLOAD))},
        "cookies": RESPONSE_COOKIES,
        "body": base64.b64encode(BINARY_PAYLOAD).decode(),
        "isBase64Encoded": True,
    }


def own_cors(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # CORS headers of its own, which API Gateway replaces when CORS is configured.
    headers = {"Access-Control-Allow-Origin": "*", "Vary": "Accept-Encoding", "ETag": '"v1"', "X-Scan-Id": "scan_1"}
    return {"statusCode": 200, "headers": headers, "body": "{}"}


def plain(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"hello": "world", "rawPath": event["rawPath"]}


def huge(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": "x" * 6_500_000}


def boom(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise RuntimeError("fixture handler failed on purpose")


def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    loop = asyncio.get_event_loop()  # raises in a worker thread that has no loop, as Mangum would
    started = time.monotonic()
    time.sleep(0.25)
    with _slow_lock:
        slow_runs.append({"thread": threading.get_ident(), "loop": id(loop), "start": started, "end": time.monotonic()})
    return {"statusCode": 204}


def stuck(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Outlives its function's 1 s timeout until the test releases it; with ?quick, answers at once."""
    quick = "quick" in (event.get("queryStringParameters") or {})
    if not quick:
        with _slow_lock:
            stuck_threads.add(threading.current_thread().name)
        release_stuck.wait(30)
    reply = {"thread": threading.current_thread().name, "remaining_ms": context.get_remaining_time_in_millis()}
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(reply)}
