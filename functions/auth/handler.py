"""Sessions: log in with a username and password for a bearer token; log out here or everywhere;
change the password; mint a viewer's read-only token.

A plain Starlette app, as images and scans are: FastAPI and Pydantic were most of this function's
import, paid by the first login after an idle spell. shared.http.plain reads and checks the JSON
bodies as FastAPI checked its Pydantic models, with their messages; openapi.json describes these
routes from a FastAPI stub with those models (scripts/build/openapi.py, shared/http/schemas.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from functions.auth.limits import CURRENT_SESSION, LOGIN, PASSWORD, PASSWORD_CHANGE, SESSIONS, VIEWER_TOKENS
from shared import auth, db
from shared.core.config import get_settings
from shared.db.audit import Origin
from shared.http.entry import lambda_handler
from shared.http.plain import create_plain_app, json_body, request_owner, text_fields
from shared.scans import iso


def session_json(session: auth.IssuedSession) -> dict[str, Any]:
    return {"token": session.token, "expiresAt": iso(session.expires_at)}


async def create_session(request: Request) -> Response:
    """Log in: a bearer token for a username and password."""
    credentials = text_fields(await json_body(request), LOGIN)
    session = db.call(
        auth.log_in,
        username=credentials["username"],
        password=credentials["password"],
        ttl_seconds=get_settings().session_ttl_seconds,
        origin=Origin.of_scope(request.scope),
    )
    return JSONResponse(session_json(session), status_code=201)


async def delete_session(request: Request) -> Response:
    """Log out: end this token's session."""
    owner = request_owner(request)
    token = auth.parse_bearer(request.headers.get("authorization"))
    db.call(auth.log_out, owner=owner, token=token, origin=Origin.of_scope(request.scope))
    return Response(status_code=204)


async def delete_all_sessions(request: Request) -> Response:
    """Log out everywhere: end every session of this token's user."""
    owner = request_owner(request)
    db.call(auth.log_out_everywhere, owner=owner, origin=Origin.of_scope(request.scope))
    return Response(status_code=204)


async def change_password(request: Request) -> Response:
    """Change the password: ends every session of the user and answers a new one."""
    # In FastAPI's order: a body that is not JSON is refused before the token is looked at, the
    # body's members after.
    body = await json_body(request)
    owner = request_owner(request)
    change = text_fields(body, PASSWORD_CHANGE)
    session = db.call(
        auth.change_password,
        owner=owner,
        current_password=change["currentPassword"],
        new_password=change["newPassword"],
        ttl_seconds=get_settings().session_ttl_seconds,
        origin=Origin.of_scope(request.scope),
    )
    return JSONResponse(session_json(session), status_code=201)


async def create_viewer_token(request: Request) -> Response:
    """A read-only token for a DICOMweb viewer (OHIF's ?token=): DICOMweb GETs only, ends with this session."""
    owner = request_owner(request)
    token = auth.parse_bearer(request.headers.get("authorization"))
    issued = db.call(auth.issue_viewer_token, owner=owner, session_token=token, origin=Origin.of_scope(request.scope))
    return JSONResponse(session_json(issued), status_code=201)


app = create_plain_app(
    [
        Route(SESSIONS, create_session, methods=["POST"]),
        Route(CURRENT_SESSION, delete_session, methods=["DELETE"]),
        Route(SESSIONS, delete_all_sessions, methods=["DELETE"]),
        Route(PASSWORD, change_password, methods=["POST"]),
        Route(VIEWER_TOKENS, create_viewer_token, methods=["POST"]),
    ]
)
handler = lambda_handler(app)
