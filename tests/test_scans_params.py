"""The scans function is plain Starlette (its cold start); shared.http.plain checks its parameters as
FastAPI's did. Held here against FastAPI itself: each query goes to the real handler through its
Lambda entry point and to FastAPI's own parameter validation for the stub that describes the route in
openapi.json (scripts/build/openapi.py), and the two must agree: the same 422 message, or both accept."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams

from scripts.build import openapi
from tests.conftest import User
from tests.lambda_client import LambdaClient

UID = "1.2.826.0.1.3680043.8.498.1"
STUDY_PATH = "/api/v1/dicomweb/studies/{study}"
INSTANCE_PATH = "/api/v1/dicomweb/studies/{study}/series/{series}/instances/{instance}"

REFUSED = [
    "limit=0",
    "limit=101",
    "limit=-3",
    "limit=abc",
    "limit=",
    "limit=1.5",
    "limit=5&limit=0",  # the last one counts
    "cursor=" + "a" * 401,
    "seriesInstanceUid=abc",
    "seriesInstanceUid=",
    "seriesInstanceUid=" + "1" * 65,
    "studyInstanceUid=1.2.x",
    "dicom=maybe",
    "dicom=",
    "dicom=2",
]
ACCEPTED = [
    "",
    "limit=1",
    "limit=100",
    "limit=+5",
    "limit=%2007%20",
    "limit=0&limit=5",
    "cursor=",
    "dicom=TRUE",
    "dicom=yes",
    "dicom=0",
    "dicom=off",
    "dicom=F",
    f"seriesInstanceUid={UID}",
    f"studyInstanceUid={UID}&limit=3",
    "unknown=ignored",
]


def fastapi_answer(path: str, method: str, *, query: str = "", path_params: dict[str, str] | None = None) -> str | None:
    """What FastAPI's validation of the stub's route says: None when it accepts the request, else its
    422 message as the FastAPI functions word it (shared.http.app)."""
    route = next(
        r for r in openapi.scans_stub().routes if isinstance(r, APIRoute) and r.path == path and method in r.methods
    )
    _, query_errors = request_params_to_args(route.dependant.query_params, QueryParams(query))
    _, path_errors = request_params_to_args(route.dependant.path_params, path_params or {})
    errors: list[dict[str, Any]] = [*path_errors, *query_errors]
    if not errors:
        return None
    return "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors)


@pytest.mark.parametrize("query", REFUSED)
def test_a_listing_parameter_fastapi_refuses_is_refused_with_its_message(
    api: LambdaClient, alice: User, query: str
) -> None:
    expected = fastapi_answer("/api/v1/scans", "GET", query=query)
    assert expected is not None  # the case is one FastAPI refuses
    result = api.request("GET", "/api/v1/scans", token=alice.token, query=query)
    assert result.status == 422
    assert result.json()["error"] == {"code": "invalid_request", "message": expected}


@pytest.mark.parametrize("query", ACCEPTED)
def test_a_listing_fastapi_accepts_is_answered(api: LambdaClient, alice: User, query: str) -> None:
    assert fastapi_answer("/api/v1/scans", "GET", query=query) is None
    result = api.request("GET", "/api/v1/scans", token=alice.token, query=query)
    assert result.status == 200, result.json()
    assert result.json()["items"] == []


@pytest.mark.parametrize(
    "uids",
    [
        {"study": "abc", "series": UID, "instance": UID},
        {"study": UID, "series": UID + "x", "instance": UID},
        {"study": UID, "series": UID, "instance": "1" * 65},
        {"study": UID, "series": UID, "instance": ".1"},
    ],
)
def test_a_dicomweb_delete_of_a_uid_fastapi_refuses_is_refused_with_its_message(
    api: LambdaClient, alice: User, uids: dict[str, str]
) -> None:
    expected = fastapi_answer(INSTANCE_PATH, "DELETE", path_params=uids)
    assert expected is not None
    result = api.request("DELETE", INSTANCE_PATH.format(**uids), token=alice.token)
    assert result.status == 422
    assert result.json()["error"] == {"code": "invalid_request", "message": expected}


def test_a_dicomweb_delete_of_valid_uids_that_are_not_held_is_a_404(api: LambdaClient, alice: User) -> None:
    assert fastapi_answer(STUDY_PATH, "DELETE", path_params={"study": UID}) is None
    result = api.request("DELETE", STUDY_PATH.format(study=UID), token=alice.token)
    assert result.status == 404


def test_the_token_is_checked_before_the_parameters(api: LambdaClient) -> None:
    # As FastAPI resolved the owner dependency before it validated parameters: 401, not 422.
    assert api.request("GET", "/api/v1/scans", query="limit=0").status == 401
    assert api.request("GET", "/api/v1/scans", token="not-a-token", query="limit=0").status == 401
    assert api.request("DELETE", STUDY_PATH.format(study="abc")).status == 401


def test_json_answers_carry_the_security_headers(api: LambdaClient, alice: User) -> None:
    for result in (
        api.request("GET", "/api/v1/scans", token=alice.token),
        api.request("GET", "/api/v1/scans", token=alice.token, query="limit=0"),
        api.request("GET", "/api/v1/scans/scan_doesnotexist0000000", token=alice.token),
    ):
        assert result.headers["x-content-type-options"] == "nosniff"
        assert result.headers["cache-control"] == "no-store"
