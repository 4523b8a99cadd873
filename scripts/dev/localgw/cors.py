"""CORS, as HTTP API applies provider.httpApi.cors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.build.serverless_yml import read_serverless_yml

# What the serverless framework configures for `httpApi: {cors: true}`.
DEFAULT_CORS_HEADERS = (
    "Content-Type",
    "X-Amz-Date",
    "Authorization",
    "X-Api-Key",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Amzn-Trace-Id",
)
DEFAULT_CORS_METHODS = ("OPTIONS", "GET", "POST", "PUT", "DELETE", "PATCH")


@dataclass(frozen=True)
class Cors:
    """provider.httpApi.cors: API Gateway answers preflights itself and sets the CORS headers of every
    response, replacing any the function sent."""

    allowed_origins: tuple[str, ...]
    allowed_headers: tuple[str, ...] = DEFAULT_CORS_HEADERS
    allowed_methods: tuple[str, ...] = DEFAULT_CORS_METHODS
    exposed_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    def _allowed_origin(self, origin: str) -> str | None:
        if origin in self.allowed_origins:
            return origin
        if "*" in self.allowed_origins:
            return origin if self.allow_credentials else "*"
        return None

    def _common(self, allowed: str) -> list[tuple[str, str]]:
        headers = [("Access-Control-Allow-Origin", allowed)]
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def preflight(self, origin: str, method: str, requested_headers: str) -> list[tuple[str, str]]:
        """The headers of the 204 answering a preflight: none unless origin, method and headers are allowed."""
        allowed = self._allowed_origin(origin)
        methods = {m.upper() for m in self.allowed_methods}
        asked = {h.strip().lower() for h in requested_headers.split(",") if h.strip()}
        if (
            allowed is None
            or ("*" not in methods and method.upper() not in methods)
            or ("*" not in self.allowed_headers and not asked <= {h.lower() for h in self.allowed_headers})
        ):
            return []
        headers = self._common(allowed)
        headers.append(("Access-Control-Allow-Methods", ",".join(self.allowed_methods)))
        if self.allowed_headers:
            headers.append(("Access-Control-Allow-Headers", ",".join(self.allowed_headers)))
        if self.max_age is not None:
            headers.append(("Access-Control-Max-Age", str(self.max_age)))
        if allowed != "*":
            headers.append(("Vary", "Origin"))
        return headers

    def apply(self, origin: str | None, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A response's headers: the function's own CORS headers dropped, the configured ones added."""
        kept = [(n, v) for n, v in headers if not n.lower().startswith("access-control-")]
        allowed = None if origin is None else self._allowed_origin(origin)
        if allowed is None:
            return kept
        kept += self._common(allowed)
        if self.exposed_headers:
            kept.append(("Access-Control-Expose-Headers", ",".join(self.exposed_headers)))
        if allowed != "*":
            vary = [i for i, (n, _) in enumerate(kept) if n.lower() == "vary"]
            if not vary:
                kept.append(("Vary", "Origin"))
            elif "origin" not in kept[vary[0]][1].lower() and kept[vary[0]][1].strip() != "*":
                kept[vary[0]] = (kept[vary[0]][0], f"{kept[vary[0]][1]}, Origin")
        return kept


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def load_cors(serverless_yml: Path, *, stage: str = "dev") -> Cors | None:
    """provider.httpApi.cors with `${param:...}` resolved for the stage (params.<stage> over params.default)."""
    config = read_serverless_yml(serverless_yml)
    spec = ((config.get("provider") or {}).get("httpApi") or {}).get("cors")
    if not spec:
        return None
    if spec is True:
        return Cors(allowed_origins=("*",))
    all_params = config.get("params") or {}
    params = {**(all_params.get("default") or {}), **(all_params.get(stage) or {})}

    def resolve(value: Any) -> Any:
        found = re.fullmatch(r"\$\{param:(\w+)\}", value) if isinstance(value, str) else None
        if found is None:
            return value
        if found.group(1) not in params:
            raise ValueError(f"{serverless_yml}: {value} has no value for stage {stage!r}")
        return params[found.group(1)]

    max_age = resolve(spec.get("maxAge"))
    return Cors(
        allowed_origins=_strings(resolve(spec.get("allowedOrigins"))) or ("*",),
        allowed_headers=_strings(resolve(spec.get("allowedHeaders"))) or DEFAULT_CORS_HEADERS,
        allowed_methods=_strings(resolve(spec.get("allowedMethods"))) or DEFAULT_CORS_METHODS,
        exposed_headers=_strings(resolve(spec.get("exposedResponseHeaders"))),
        max_age=None if max_age is None else int(max_age),
        allow_credentials=bool(resolve(spec.get("allowCredentials", False))),
    )
