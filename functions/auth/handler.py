"""Sessions: log in with a username and password for a bearer token; log out here or everywhere; change the password."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shared import auth, db
from shared.core.config import get_settings
from shared.db.audit import Origin
from shared.http.app import Owner, bearer_token, create_app, lambda_handler
from shared.http.schemas import SessionCreated, error_responses
from shared.scans import iso

app = create_app("auth")


class SessionCreate(BaseModel):
    """Login credentials."""

    # A request body: built as the class is defined (not deferred, shared/http/deferred_models.py), so
    # that FastAPI's validation of it, under its parameter's alias, warns of nothing on the first request.
    model_config = ConfigDict(extra="forbid", defer_build=False)
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class PasswordChange(BaseModel):
    """The current password and the new one."""

    model_config = ConfigDict(extra="forbid", defer_build=False)  # a request body, as SessionCreate
    current_password: str = Field(alias="currentPassword", min_length=1, max_length=1024)
    new_password: str = Field(alias="newPassword", min_length=auth.MIN_PASSWORD_LENGTH, max_length=1024)


def session_json(session: auth.IssuedSession) -> dict[str, Any]:
    return {"token": session.token, "expiresAt": iso(session.expires_at)}


@app.post(
    "/api/v1/auth/sessions",
    status_code=201,
    response_model=None,
    responses={201: {"model": SessionCreated}, **error_responses(400, 401, 422, 429, 503)},
    summary="Log in: a bearer token for a username and password",
)
async def create_session(credentials: SessionCreate, request: Request) -> dict[str, Any]:
    session = db.call(
        auth.log_in,
        username=credentials.username,
        password=credentials.password,
        ttl_seconds=get_settings().session_ttl_seconds,
        origin=Origin.of_scope(request.scope),
    )
    return session_json(session)


@app.delete(
    "/api/v1/auth/sessions/current",
    status_code=204,
    response_model=None,
    responses=error_responses(401, 503),
    summary="Log out: end this token's session",
)
async def delete_session(owner: Owner, request: Request, token: str = Depends(bearer_token)) -> Response:
    db.call(auth.log_out, owner=owner, token=token, origin=Origin.of_scope(request.scope))
    return Response(status_code=204)


@app.delete(
    "/api/v1/auth/sessions",
    status_code=204,
    response_model=None,
    responses=error_responses(401, 503),
    summary="Log out everywhere: end every session of this token's user",
)
async def delete_all_sessions(owner: Owner, request: Request) -> Response:
    db.call(auth.log_out_everywhere, owner=owner, origin=Origin.of_scope(request.scope))
    return Response(status_code=204)


@app.post(
    "/api/v1/auth/password",
    status_code=201,
    response_model=None,
    responses={201: {"model": SessionCreated}, **error_responses(400, 401, 422, 429, 503)},
    summary="Change the password: ends every session of the user and answers a new one",
)
async def change_password(change: PasswordChange, owner: Owner, request: Request) -> dict[str, Any]:
    session = db.call(
        auth.change_password,
        owner=owner,
        current_password=change.current_password,
        new_password=change.new_password,
        ttl_seconds=get_settings().session_ttl_seconds,
        origin=Origin.of_scope(request.scope),
    )
    return session_json(session)


@app.post(
    "/api/v1/auth/viewer-tokens",
    status_code=201,
    response_model=None,
    responses={201: {"model": SessionCreated}, **error_responses(401, 503)},
    summary="A read-only token for a DICOMweb viewer (OHIF's ?token=): DICOMweb GETs only, ends with this session",
)
async def create_viewer_token(owner: Owner, request: Request, token: str = Depends(bearer_token)) -> dict[str, Any]:
    issued = db.call(auth.issue_viewer_token, owner=owner, session_token=token, origin=Origin.of_scope(request.scope))
    return session_json(issued)


handler = lambda_handler(app)
