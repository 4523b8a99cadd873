"""The audit trail of image reads and scan deletes: what each row holds, written by the read itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pg8000.core
import pg8000.native
import pytest

from functions.admin.handler import handler as admin
from shared.db import audit
from tests import images
from tests.conftest import ROOT, User
from tests.lambda_client import LambdaClient, Result, multipart

FILENAME = "Doe^Jane-chest.png"
UUID = re.compile(r"^[0-9a-f-]{36}$")


@pytest.fixture
def scan(api: LambdaClient, alice: User) -> dict[str, Any]:
    data = images.png16()
    body, ctype = multipart({"file": (FILENAME, data, "image/png")})
    result = api.request("POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype})
    assert result.status == 201
    return {"id": result.json()["scanId"], "data": data, "etag": result.json().get("etag")}


def trail(pg: pg8000.native.Connection) -> list[dict[str, Any]]:
    rows = pg.run(
        "SELECT user_id, action, scan_id, image_type, via, status, source_ip, request_id FROM audit_events ORDER BY id"
    )
    keys = ("user_id", "action", "scan_id", "image_type", "via", "status", "source_ip", "request_id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def reads(pg: pg8000.native.Connection) -> list[tuple[Any, ...]]:
    return [
        (row["user_id"], row["scan_id"], row["image_type"], row["via"], row["status"])
        for row in trail(pg)
        if row["action"] == "image.read"
    ]


def image(api: LambdaClient, scan_id: str, kind: str = "original", **options: Any) -> Result:
    return api.request("GET", f"/api/v1/scans/image/{scan_id}/{kind}", **options)


def test_a_token_read_is_audited_with_who_what_how_and_from_where(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    assert image(api, scan["id"], token=alice.token).status == 200

    [row] = trail(pg)
    assert row["user_id"] == alice.id and row["action"] == "image.read"
    assert (row["scan_id"], row["image_type"], row["via"], row["status"]) == (scan["id"], "original", "token", 200)
    assert row["source_ip"] == "203.0.113.9"
    assert UUID.match(row["request_id"])


def test_every_kind_of_read_is_audited_with_its_status(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    etag = image(api, scan["id"], token=alice.token).headers["etag"]  # 200 (then from the cache: 200)
    assert image(api, scan["id"], token=alice.token).status == 200
    assert image(api, scan["id"], token=alice.token, headers={"if-none-match": etag}).status == 304
    assert image(api, scan["id"], token=alice.token, headers={"range": "bytes=0-9"}).status == 206
    assert api.request("HEAD", f"/api/v1/scans/image/{scan['id']}/thumbnail", token=alice.token).status == 200

    assert reads(pg) == [
        (alice.id, scan["id"], "original", "token", 200),
        (alice.id, scan["id"], "original", "token", 200),
        (alice.id, scan["id"], "original", "token", 304),
        (alice.id, scan["id"], "original", "token", 206),
        (alice.id, scan["id"], "thumbnail", "token", 200),
    ]


def test_refused_reads_leave_no_read_row(
    api: LambdaClient, alice: User, bob: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    assert image(api, scan["id"], token=bob.token).status == 404  # another owner's
    assert image(api, "scan_AAAAAAAAAAAAAAAAAAAAAA", token=alice.token).status == 404
    assert image(api, scan["id"], token="not-a-token").status == 401
    big = len(scan["data"]) + 10
    assert image(api, scan["id"], token=alice.token, headers={"range": f"bytes={big}-"}).status == 416
    assert reads(pg) == []


def test_a_signed_read_is_audited_as_the_owners_via_signature(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    url = api.request("GET", f"/api/v1/scans/{scan['id']}", token=alice.token).json()["results"]["thumbnailUrl"]
    parts = urlsplit(url)
    assert api.request("GET", parts.path, query=parts.query).status == 200

    [row] = trail(pg)
    assert (row["user_id"], row["via"], row["image_type"], row["status"]) == (alice.id, "signature", "thumbnail", 200)


def test_the_read_and_its_audit_row_are_one_statement_and_one_round_trip(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    image(api, scan["id"], "preview", token=alice.token)  # the container's connection is open and warm
    flushes: list[int] = []
    real_flush = pg8000.core._flush
    monkeypatch.setattr(pg8000.core, "_flush", lambda sock: (flushes.append(1), real_flush(sock)))

    assert image(api, scan["id"], token=alice.token).status == 200

    assert flushes == [1]
    assert len(reads(pg)) == 2


def test_scan_deletes_are_audited_found_or_not(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    assert api.request("DELETE", f"/api/v1/scans/{scan['id']}", token=alice.token).status == 204
    assert api.request("DELETE", f"/api/v1/scans/{scan['id']}", token=alice.token).status == 404
    assert api.request("DELETE", "/api/v1/scans/" + "x" * 200, token=alice.token).status == 404

    deletes = [(r["user_id"], r["scan_id"], r["via"], r["status"]) for r in trail(pg) if r["action"] == "scan.delete"]
    assert deletes == [
        (alice.id, scan["id"], "token", 204),
        (alice.id, scan["id"], "token", 404),
        (alice.id, "x" * 64, "token", 404),
    ]


def test_the_trail_holds_no_token_signature_filename_or_patient_data(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    urls = api.request("GET", f"/api/v1/scans/{scan['id']}", token=alice.token).json()["results"]
    signature = dict(pair.split("=", 1) for pair in urlsplit(urls["imageUrl"]).query.split("&"))["sig"]
    api.request("GET", urlsplit(urls["imageUrl"]).path, query=urlsplit(urls["imageUrl"]).query)
    image(api, scan["id"], token=alice.token)
    api.request("DELETE", f"/api/v1/scans/{scan['id']}", token=alice.token)

    dumped = json.dumps(pg.run("SELECT row_to_json(e)::text FROM audit_events e"))
    assert len(trail(pg)) == 3
    for secret in (alice.token, signature, FILENAME, "Doe", alice.password):
        assert secret not in dumped


def test_recent_lists_newest_first_by_user(
    api: LambdaClient, alice: User, bob: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    image(api, scan["id"], token=alice.token)
    image(api, scan["id"], "thumbnail", token=alice.token)
    image(api, "scan_AAAAAAAAAAAAAAAAAAAAAA", token=bob.token)

    events = pg_call(pg, audit.recent, username="alice", limit=10)
    assert [(e.username, e.action, e.image_type) for e in events] == [
        ("alice", "image.read", "thumbnail"),
        ("alice", "image.read", "original"),
    ]
    assert pg_call(pg, audit.recent, username="bob", limit=10) == []
    assert len(pg_call(pg, audit.recent, limit=1)) == 1


def pg_call(pg: pg8000.native.Connection, fn: Any, **kwargs: Any) -> Any:
    return fn(pg, **kwargs)


def test_the_admin_function_lists_recent_events_and_audits_that(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    image(api, scan["id"], token=alice.token)

    result = admin({"action": "audit", "username": "alice", "limit": 5}, None)

    assert result["ok"] is True
    [event] = result["events"]
    assert event["username"] == "alice" and event["action"] == "image.read" and event["status"] == 200
    assert event["scanId"] == scan["id"] and event["sourceIp"] == "203.0.113.9"
    assert trail(pg)[-1]["action"] == "admin.audit" and trail(pg)[-1]["via"] == "admin"
    assert admin({"action": "audit", "limit": "lots"}, None)["ok"] is False


@pytest.mark.slow
def test_make_audit_prints_recent_events(
    api: LambdaClient, alice: User, scan: dict[str, Any], database_url: str
) -> None:
    image(api, scan["id"], token=alice.token)
    out = subprocess.run(
        [sys.executable, "-m", "scripts.ops.manage", "audit", "--name", "alice"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    ).stdout
    assert "image.read" in out and scan["id"] in out and "alice" in out and "203.0.113.9" in out


def test_listings_a_scans_json_and_uploads_are_not_audited_as_the_readme_and_makefile_say(
    api: LambdaClient, alice: User, scan: dict[str, Any], pg: pg8000.native.Connection
) -> None:
    # Given an upload (the scan fixture), when alice lists her scans, a series and reads a scan's JSON
    assert api.request("GET", "/api/v1/scans", query="limit=5", token=alice.token).status == 200
    assert api.request("GET", "/api/v1/scans", query="seriesInstanceUid=1.2.3&limit=5", token=alice.token).status == 200
    assert api.request("GET", f"/api/v1/scans/{scan['id']}", token=alice.token).status == 200

    # Then the trail holds none of it; an image read is the first row
    assert trail(pg) == []
    assert image(api, scan["id"], token=alice.token).status == 200
    assert [row["action"] for row in trail(pg)] == ["image.read"]

    # And the README and `make audit`'s comment say exactly that, not "reads"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("**Audit trail.**") :].split("\n\n", 1)[0]
    assert "It does not record the REST listings" in paragraph and "a scan's JSON" in paragraph
    assert "uploads (`/analyze`, `/uploads`, `/complete`" in paragraph
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    comment = makefile[makefile.index("# The audit trail, newest first") : makefile.index("\naudit:")]
    assert "not\n# the scan listings, a scan's JSON or uploads" in comment
