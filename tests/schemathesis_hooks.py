"""Schemathesis hooks for tests/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

STOW-RS takes multipart/related, which schemathesis cannot serialize by itself: this wraps whatever
body it generates as the one application/dicom part of a multipart/related request, with a
boundary, so the fuzzer reaches the part parsing and the per-instance failures rather than stopping
at a missing boundary. Uses the requests transport's own registry (schemathesis 4.32.5, pinned): the
public `schemathesis.serializer` cannot set the Content-Type's boundary.
"""

from __future__ import annotations

import json
from typing import Any

from schemathesis.transport.requests import REQUESTS_TRANSPORT

BOUNDARY = "schemathesis-stow-7781"


@REQUESTS_TRANSPORT.serializer("multipart/related")
def multipart_related(ctx: Any, value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        part = value
    elif isinstance(value, str):
        part = value.encode("utf-8", "surrogatepass")
    else:
        part = json.dumps(value).encode()
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    return {"data": body, "headers": {"Content-Type": content_type}}
