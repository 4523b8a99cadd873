"""Plain Starlette for the JSON functions whose cold start FastAPI would double (scans, auth): the app
factory with our error map and security headers, the owner of a bearer token, and the checks FastAPI
made of parameters and of a JSON body of text fields (a Pydantic model with extra="forbid"), with its
messages ("query.limit: Input should be ...", "username: Field required"; 422 invalid_request).

Imports no FastAPI and no Pydantic (an import-linter contract in pyproject.toml holds it so). What
each route takes is described for openapi.json by a FastAPI stub (scripts/build/openapi.py) that
states the same limits; tests/test_scans_params.py and tests/test_auth_body.py hold each check to
FastAPI's own for that stub.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import auth, db
from shared.core.errors import DomainError, InvalidParameter
from shared.http.errors import domain_error, http_error, unexpected_error


class SecurityHeaders:
    """ASGI middleware: nosniff on every response; JSON (scan data, tokens) is never stored by caches."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if headers.get("content-type", "").startswith("application/json"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_plain_app(routes: Sequence[BaseRoute]) -> Starlette:
    """A Starlette app answering as the FastAPI ones do: our JSON errors, the security headers."""
    app = Starlette(
        routes=list(routes),
        exception_handlers={DomainError: domain_error, HTTPException: http_error, Exception: unexpected_error},
    )
    app.add_middleware(SecurityHeaders)
    return app


def request_owner(request: Request) -> db.Owner:
    """The owner of the request's bearer token; NotAuthenticated (401) otherwise. Called first, as
    FastAPI resolves the owner dependency before it checks parameters."""
    return db.call(auth.authenticate, token=auth.parse_bearer(request.headers.get("authorization")))


# pydantic's lax booleans from text, which FastAPI's bool parameters accept (any case).
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INTEGER = re.compile(r"[+-]?[0-9]+")


def query_int(request: Request, name: str, *, default: int, ge: int, le: int) -> int:
    """An integer query parameter within [ge, le], `default` when absent (the last one when repeated)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw.strip()):
        raise _invalid("query", name, "Input should be a valid integer, unable to parse string as an integer")
    value = int(raw)
    if value < ge:
        raise _invalid("query", name, f"Input should be greater than or equal to {ge}")
    if value > le:
        raise _invalid("query", name, f"Input should be less than or equal to {le}")
    return value


def query_text(request: Request, name: str, *, max_length: int | None = None, pattern: str | None = None) -> str | None:
    """A text query parameter, None when absent; at most max_length characters, matching pattern."""
    raw = request.query_params.get(name)
    return None if raw is None else _text("query", name, raw, max_length=max_length, pattern=pattern)


def query_bool(request: Request, name: str) -> bool | None:
    """A boolean query parameter (true/false, 1/0, yes/no, on/off, t/f, y/n: any case), None when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _invalid("query", name, "Input should be a valid boolean, unable to interpret input")


def path_text(request: Request, name: str, *, pattern: str) -> str:
    """A path parameter that must match pattern."""
    return _text("path", name, request.path_params[name], max_length=None, pattern=pattern)


def _text(where: str, name: str, value: str, *, max_length: int | None, pattern: str | None) -> str:
    if max_length is not None and len(value) > max_length:
        raise _invalid(where, name, f"String should have at most {max_length} characters")
    if pattern is not None and re.search(pattern, value) is None:
        raise _invalid(where, name, f"String should match pattern '{pattern}'")
    return value


def _invalid(where: str, name: str, message: str) -> InvalidParameter:
    return InvalidParameter(f"{where}.{name}: {message}")


@dataclass(frozen=True)
class TextField:
    """A string member of a JSON body: its key, and its length in characters."""

    key: str
    min_length: int
    max_length: int


_NO_BODY = object()


async def json_body(request: Request) -> Any:
    """The request's JSON body as FastAPI read one for a body model: parsed when it is declared JSON
    (application/json or application/*+json), its bytes when it is anything else or undeclared,
    _NO_BODY when empty; a JSON decode error is a 422 at the error's position."""
    body = await request.body()
    if not body:
        return _NO_BODY
    # email.message's rules: the type before any parameter, lower-cased; anything but one slash is text/plain.
    declared = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    maintype, _, subtype = declared.partition("/") if declared.count("/") == 1 else ("text", "/", "plain")
    if maintype != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return body
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidParameter(f"{exc.pos}: JSON decode error") from None
    except Exception:  # not UTF-8, nested past the recursion limit: FastAPI's 400 for these
        raise HTTPException(400, "There was an error parsing the body") from None


def text_fields(body: Any, fields: Sequence[TextField]) -> dict[str, str]:
    """A body read by json_body as an object of these text fields and no others, with the messages
    Pydantic gives for such a model (extra="forbid"): every problem, fields first, then extra keys."""
    if body is _NO_BODY:
        raise InvalidParameter("request: Field required")
    if not isinstance(body, dict):
        raise InvalidParameter("request: Input should be a valid dictionary or object to extract fields from")
    problems: list[str] = []
    for field in fields:
        if field.key not in body:
            problems.append(f"{field.key}: Field required")
            continue
        value = body[field.key]
        if not isinstance(value, str):
            problems.append(f"{field.key}: Input should be a valid string")
        elif len(value) < field.min_length:
            problems.append(f"{field.key}: String should have at least {_characters(field.min_length)}")
        elif len(value) > field.max_length:
            problems.append(f"{field.key}: String should have at most {_characters(field.max_length)}")
    known = {field.key for field in fields}
    problems += [f"{key}: Extra inputs are not permitted" for key in body if key not in known]
    if problems:
        raise InvalidParameter("; ".join(problems))
    return {field.key: body[field.key] for field in fields}


def _characters(count: int) -> str:
    return f"{count} character" if count == 1 else f"{count} characters"
