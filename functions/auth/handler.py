"""Sessions: log in with a username and password for a bearer token; log out."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from shared import auth, db
from shared.config import get_settings
from shared.http import Owner, bearer_token, create_app, lambda_handler
from shared.scans import iso
from shared.schemas import SessionCreated, error_responses

app = create_app("auth")


class SessionCreate(BaseModel):
    """Login credentials."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


@app.post(
    "/api/v1/auth/sessions",
    status_code=201,
    response_model=None,
    responses={201: {"model": SessionCreated}, **error_responses(400, 401, 422, 503)},
    summary="Log in: a bearer token for a username and password",
)
async def create_session(credentials: SessionCreate) -> dict[str, Any]:
    session = db.call(
        auth.log_in,
        username=credentials.username,
        password=credentials.password,
        ttl_seconds=get_settings().session_ttl_seconds,
    )
    return {"token": session.token, "expiresAt": iso(session.expires_at)}


@app.delete(
    "/api/v1/auth/sessions/current",
    status_code=204,
    response_model=None,
    responses=error_responses(401, 503),
    summary="Log out: end this token's session",
)
async def delete_session(owner: Owner, token: str = Depends(bearer_token)) -> Response:
    db.call(db.delete_session, token_hash=auth.hash_token(token))
    return Response(status_code=204)


handler = lambda_handler(app)
