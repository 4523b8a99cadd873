"""serverless.yml -> routes: every httpApi event of every function, and how a request finds its route."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from scripts.build.serverless_yml import read_serverless_yml


@dataclass(frozen=True)
class Route:
    method: str
    path_template: str
    function_name: str
    handler_ref: str
    timeout_s: int
    memory_mb: int = 1024

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path_template}"

    def match(self, method: str, raw_path: str) -> dict[str, str] | None:
        """Path parameters (URL-decoded) when this route serves the request, else None."""
        if self.method not in (method, "ANY"):
            return None
        pattern, names = _compile(self.path_template)
        found = pattern.fullmatch(raw_path)
        return None if found is None else {n: unquote(v) for n, v in zip(names, found.groups(), strict=True)}


@functools.cache
def _compile(template: str) -> tuple[re.Pattern[str], list[str]]:
    names: list[str] = []
    parts: list[str] = []
    for piece in re.split(r"(\{[^}]+\})", template):
        if piece.startswith("{") and piece.endswith("}"):
            greedy = piece.endswith("+}")
            names.append(piece[1 : -2 if greedy else -1])
            parts.append("(.+)" if greedy else "([^/]+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts)), names


def specificity(route: Route) -> tuple[int, int, bool]:
    """Sort key, preferred first: fewer greedy {name+} parameters, then fewer parameters, then a method before ANY."""
    return route.path_template.count("+}"), route.path_template.count("{"), route.method == "ANY"


def _as_int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else default


def load_routes(serverless_yml: Path) -> list[Route]:
    """Every httpApi route of every function; `${...}` variables stay plain strings."""
    config = read_serverless_yml(serverless_yml)
    provider = config.get("provider") or {}
    routes: list[Route] = []
    for name, spec in (config.get("functions") or {}).items():
        timeout = _as_int(spec.get("timeout"), _as_int(provider.get("timeout"), 29))
        memory = _as_int(spec.get("memorySize"), _as_int(provider.get("memorySize"), 1024))
        for event in spec.get("events") or []:
            http = event.get("httpApi") if isinstance(event, dict) else None
            if isinstance(http, str) and " " in http:
                method, path = http.split(" ", 1)
            elif isinstance(http, dict):
                method, path = str(http.get("method", "*")), str(http["path"])
            else:
                continue
            method = "ANY" if method == "*" else method.upper()
            routes.append(Route(method, path, str(name), str(spec["handler"]), timeout, memory))
    return routes
