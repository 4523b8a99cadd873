"""Drive the real Lambda entry points with AWS-exact HTTP API v2.0 events, in process."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.dev.localgw.containers import Gateway
from scripts.dev.localgw.events import LambdaContext, build_event
from scripts.dev.localgw.routes import load_routes

ROOT = Path(__file__).resolve().parent.parent
ROUTES = load_routes(ROOT / "serverless.yml")


@dataclass
class Result:
    """What API Gateway would send back: status, lower-cased headers, body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes
    raw: dict[str, Any]

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        code: str = self.json()["error"]["code"]
        return code


class LambdaClient:
    """Builds the event API Gateway would build and calls that function's handler(event, context)."""

    def __init__(self, host: str = "api.example.test") -> None:
        self.gateway = Gateway(ROUTES)
        self.host = host

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        query: str = "",
        source_ip: str = "203.0.113.9",
    ) -> Result:
        found = self.gateway.match(method, path)
        assert found is not None, f"no route in serverless.yml for {method} {path}"
        route, params = found
        all_headers = [
            ("host", self.host),
            ("user-agent", "pytest"),
            ("x-forwarded-for", source_ip),
            ("x-forwarded-port", "443"),
            ("x-forwarded-proto", "https"),
        ]
        if body:
            all_headers.append(("content-length", str(len(body))))
        if token is not None:
            all_headers.append(("authorization", f"Bearer {token}"))
        all_headers += list((headers or {}).items())
        event = build_event(
            method=method,
            raw_path=path,
            raw_query=query,
            headers=all_headers,
            body=body,
            source_ip=source_ip,
            route=route,
            path_params=params,
        )
        return self.invoke(route.function_name, event)

    def invoke(self, function_name: str, event: dict[str, Any]) -> Result:
        route = next(r for r in ROUTES if r.function_name == function_name)
        module_name, attribute = route.handler_ref.rsplit(".", 1)
        handler = getattr(importlib.import_module(module_name.replace("/", ".")), attribute)
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:  # a worker thread: give it a loop, as the Lambda runtime does
            asyncio.set_event_loop(asyncio.new_event_loop())
        raw = handler(event, LambdaContext(route, event["requestContext"]["requestId"]))
        # Everything crosses Lambda as JSON: prove the result survives that.
        raw = json.loads(json.dumps(raw))
        body = raw.get("body") or ""
        data = base64.b64decode(body) if raw.get("isBase64Encoded") else body.encode()
        headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
        return Result(raw["statusCode"], headers, data, raw)


def multipart(
    fields: Mapping[str, tuple[str, bytes, str] | str], boundary: str = "----ctscanBoundary7MA4YWxkTrZu0gW"
) -> tuple[bytes, str]:
    """Encode form fields (files as (filename, bytes, content type)) as multipart/form-data."""
    parts: list[bytes] = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data, ctype = value
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n"
            )
            parts.append(head.encode() + data + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
