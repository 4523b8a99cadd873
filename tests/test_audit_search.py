"""Who searched for this patient? Real QIDO-RS searches through the images function, then the admin
function's audit_search (and `manage.py audit-search`) finds them by the keyed hash of the value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pg8000.native
import pytest

from functions.admin.handler import handler as admin
from scripts.dev import phantom
from shared.auth import query_hash
from shared.auth.signing import parse_keys
from shared.db import audit
from tests.conftest import ROOT, User
from tests.lambda_client import LambdaClient

DICOMWEB = "/api/v1/dicomweb"
NAME, PATIENT_ID, ACCESSION = phantom.PHI["PatientName"], phantom.PHI["PatientID"], phantom.PHI["AccessionNumber"]
BOB_IP = "198.51.100.7"


@pytest.fixture
def doe(api: LambdaClient, alice: User) -> None:
    """Alice holds a small CT series of Doe^Jane, stored through STOW-RS as a scanner would send it."""
    boundary = "auditsearch7781"
    parts = [phantom.dicom_bytes(ds) for ds in phantom.ct_series(2, size=32, seed=47, phi=True)]
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    body += f"--{boundary}--\r\n".encode()
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    stored = api.request("POST", f"{DICOMWEB}/studies", token=alice.token, body=body, headers={"content-type": ctype})
    assert stored.status == 200, stored.body[:300]


def qido(api: LambdaClient, user: User, level: str = "studies", source_ip: str = "203.0.113.9", **keys: str) -> int:
    """A QIDO-RS search through the images function; the number of results."""
    result = api.request(
        "GET",
        f"{DICOMWEB}/{level}",
        token=user.token,
        query="&".join(f"{key}={quote(value)}" for key, value in keys.items()),
        headers={"accept": "application/dicom+json"},
        source_ip=source_ip,
    )
    assert result.status == 200, result.body[:300]
    return len(json.loads(result.body))


def search_request_ids(pg: pg8000.native.Connection) -> list[str]:
    """The request id of every dicomweb.search row, oldest first."""
    return [
        row[0] for row in pg.run("SELECT request_id FROM audit_events WHERE action = 'dicomweb.search' ORDER BY id")
    ]


def audit_search(keyword: Any, value: Any, **event: Any) -> dict[str, Any]:
    return admin({"action": "audit_search", "keyword": keyword, "value": value, **event}, None)


def found(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(username, level, results, form) of each search found, as the admin function answered."""
    assert result["ok"] is True, result
    return [(e["username"], e["level"], e["results"], e["form"]) for e in result["events"]]


def test_a_name_finds_exactly_the_searches_that_sent_it_in_any_case(
    api: LambdaClient, alice: User, bob: User, doe: None, pg: pg8000.native.Connection
) -> None:
    # Given: four searches, two of them for Doe^Jane (written two ways), one by bob, who holds nothing
    assert qido(api, alice, PatientName="DOE^JANE") == 1
    assert qido(api, alice, PatientName="Smith^John") == 0
    assert qido(api, alice, PatientID=PATIENT_ID) == 1
    assert qido(api, bob, "series", source_ip=BOB_IP, PatientName="doe^jane", Modality="CT") == 0
    ids = search_request_ids(pg)

    # When: ops ask who searched for Doe^Jane, written as the file holds it
    result = audit_search("PatientName", NAME)

    # Then: both name searches, newest first, with who, when, what and from where; not the others
    assert found(result) == [("bob", "series", 0, "exact"), ("alice", "study", 1, "exact")]
    newest, oldest = result["events"]
    assert (newest["sourceIp"], newest["requestId"], newest["via"]) == (BOB_IP, ids[3], "token")
    assert (oldest["sourceIp"], oldest["requestId"], oldest["userId"]) == ("203.0.113.9", ids[0], alice.id)
    assert newest["queryKeys"] == ["Modality", "PatientName"] and oldest["queryKeys"] == ["PatientName"]
    assert newest["at"] >= oldest["at"]
    assert result["keyword"] == "PatientName"
    assert result["searchedFor"] == {"exact": "DOE^JANE", "wildcard": "*DOE^JANE*"}
    # The keyword is part of what is hashed, and its tag names it as a search would take it.
    assert found(audit_search("PatientID", PATIENT_ID)) == [("alice", "study", 1, "exact")]
    assert found(audit_search("00100010", "doe^jane ")) == found(result)
    assert found(audit_search("PatientName", "Roe^Richard")) == []
    assert found(audit_search("PatientID", NAME)) == []
    assert found(audit_search("PatientName", NAME, limit=1)) == [("bob", "series", 0, "exact")]


def test_the_wildcard_form_a_viewer_sends_is_found_and_named(
    api: LambdaClient, alice: User, doe: None, pg: pg8000.native.Connection
) -> None:
    # Given: OHIF's study list, which wraps what is typed in * (supportsWildcard), and one exact search
    assert qido(api, alice, PatientName=f"*{NAME}*", limit="101", offset="0", fuzzymatching="false") == 1
    assert qido(api, alice, AccessionNumber=f"*{ACCESSION}*", StudyDescription="*chest*") == 1
    assert qido(api, alice, AccessionNumber=ACCESSION) == 1

    # Then: the value as typed finds the wrapped searches too, and says which form each sent
    assert found(audit_search("PatientName", "doe^JANE")) == [("alice", "study", 1, "wildcard")]
    assert found(audit_search("AccessionNumber", ACCESSION)) == [
        ("alice", "study", 1, "exact"),
        ("alice", "study", 1, "wildcard"),
    ]
    assert found(audit_search("StudyDescription", "chest")) == [("alice", "study", 1, "wildcard")]
    # Asking for the pattern itself finds it as sent; a narrower value finds nothing.
    assert found(audit_search("PatientName", "*Doe^Jane*")) == [("alice", "study", 1, "exact")]
    assert audit_search("PatientName", "*Doe^Jane*")["searchedFor"] == {"exact": "*DOE^JANE*"}
    assert found(audit_search("PatientName", "Doe")) == []
    # UIDs and dates are never wildcard searches: only the exact form is looked for.
    assert audit_search("StudyDate", "20240101")["searchedFor"] == {"exact": "20240101"}


def test_searches_hashed_before_a_key_rotation_are_still_found(
    api: LambdaClient,
    alice: User,
    doe: None,
    pg: pg8000.native.Connection,
    settings_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given: a key file of this test's own, and a search hashed with its one key
    key_file = tmp_path / "audit-query-key.json"
    settings_env.setenv("AUDIT_KEY_FILE", str(key_file))
    query_hash.clear_cache()
    try:
        assert qido(api, alice, PatientName=NAME) == 1
        (old,) = parse_keys(key_file.read_text())
        assert query_hash.current_audit_keys() == (old,)

        # When: a new key is put in front, the old one kept (as secrets.yml says), and searches go on
        document = json.loads(key_file.read_text())
        key_file.write_text(json.dumps({"keys": [{"secret": "n" * 48}, *document["keys"]]}))
        new = parse_keys(key_file.read_text())[0]
        # An audit search reads the keys as they are now; a warm container's cache still has the old.
        assert query_hash.current_audit_keys() == (new, old) and query_hash.audit_keys() == (old,)
        query_hash.clear_cache()  # the images function's next container
        assert qido(api, alice, "series", PatientName=NAME) == 1

        # Then: both searches are found, each by the key it was hashed with
        result = audit_search("PatientName", NAME)
        assert found(result) == [("alice", "series", 1, "exact"), ("alice", "study", 1, "exact")]
        assert [e["kid"] for e in result["events"]] == [new.kid, old.kid]
        # A key put in front after the last search is used at once by the lookup, not cached away.
        key_file.write_text(json.dumps({"keys": [{"secret": "m" * 48}, *json.loads(key_file.read_text())["keys"]]}))
        newest = parse_keys(key_file.read_text())[0]
        assert len(audit_search("PatientName", NAME)["events"]) == 2
        kids = pg.run("SELECT details ->> 'kid' FROM audit_events WHERE action = 'admin.audit_search' ORDER BY id")
        assert [row[0] for row in kids] == [new.kid, newest.kid]
        # Without the old key, the older search can no longer be answered (the reason to keep it).
        key_file.write_text(json.dumps({"keys": [{"secret": "n" * 48}]}))
        assert found(audit_search("PatientName", NAME)) == [("alice", "series", 1, "exact")]
    finally:
        query_hash.clear_cache()


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"keyword": "PatientNme", "value": NAME}, "not a QIDO-RS matching key"),
        ({"keyword": "patientname", "value": NAME}, "not a QIDO-RS matching key"),
        ({"keyword": "InstitutionName", "value": "PHI General Clinic"}, "PatientName"),
        ({"keyword": "PatientName"}, "'value'"),
        ({"value": NAME}, "'keyword'"),
        ({"keyword": "PatientName", "value": 42}, "'value'"),
        ({"keyword": "PatientName", "value": "  "}, "Give a value"),
        ({"keyword": "PatientName", "value": "*"}, "Give a value"),
        ({"keyword": "PatientName", "value": "D" * 257}, "at most 256"),
        ({"keyword": "PatientName", "value": NAME, "limit": 0}, "limit"),
        ({"keyword": "PatientName", "value": NAME, "limit": 1001}, "limit"),
        ({"keyword": "PatientName", "value": NAME, "limit": "50"}, "limit"),
        ({"keyword": "PatientName", "value": NAME, "limit": True}, "limit"),
    ],
)
def test_bad_audit_searches_say_why_and_read_nothing(
    alice: User, pg: pg8000.native.Connection, event: dict[str, Any], error: str
) -> None:
    result = admin({"action": "audit_search", **event}, None)

    assert result["ok"] is False and error in result["error"], result
    assert pg.run("SELECT count(*) FROM audit_events")[0][0] == 0


def test_the_lookup_is_audited_with_the_values_hash_never_the_value(
    api: LambdaClient, alice: User, doe: None, pg: pg8000.native.Connection
) -> None:
    qido(api, alice, PatientName=NAME)
    context = SimpleNamespace(aws_request_id="8f5e6c1a-0000-4000-8000-00000000a5e4")

    assert len(admin({"action": "audit_search", "keyword": "PatientName", "value": NAME}, context)["events"]) == 1

    [(user_id, via, status, source_ip, request_id, details)] = pg.run(
        "SELECT user_id, via, status, source_ip, request_id, details::text FROM audit_events"
        " WHERE action = 'admin.audit_search'"
    )
    assert (user_id, via, status, source_ip, request_id) == (None, "admin", 200, None, context.aws_request_id)
    # The same hash a search for the name leaves: "who looked this patient up" is answered alike.
    [search_details] = pg.run("SELECT details::text FROM audit_events WHERE action = 'dicomweb.search'")[0]
    key = query_hash.current_audit_keys()[0]
    assert json.loads(details) == {
        "kid": key.kid,
        "keys": {"PatientName": json.loads(search_details)["keys"]["PatientName"]},
        "results": 1,
    }
    trail = json.dumps(pg.run("SELECT * FROM audit_events", types=None), default=str)
    assert not any(secret in trail for secret in phantom.PHI_STRINGS)
    assert "DOE" not in trail.upper().replace("DOES", "")


@pytest.mark.slow
def test_manage_audit_search_prints_the_searches(
    api: LambdaClient, alice: User, doe: None, database_url: str, pg: pg8000.native.Connection
) -> None:
    qido(api, alice, PatientName=f"*{NAME}*")
    qido(api, alice, PatientName="Roe^Richard")
    env = {"DATABASE_URL": database_url, "AUDIT_KEY_FILE": os.environ["AUDIT_KEY_FILE"], "PATH": "/usr/bin:/bin"}

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scripts.ops.manage", "audit-search", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    out = manage("--keyword", "PatientName", "--value", "doe^jane").stdout
    header, columns, row, *rest = out.splitlines()
    assert "PatientName" in header and "'*DOE^JANE*'" in header
    assert columns.split()[:5] == ["at", "user", "level", "results", "form"]
    assert row.split()[1:6] == ["alice", "study", "1", "wildcard", "PatientName"]
    assert "203.0.113.9" in row and search_request_ids(pg)[0] in row
    assert rest == []
    assert manage("--keyword", "PatientName", "--value", "Poe^Edgar").stdout.splitlines()[-1] == "(no searches)"
    refused = manage("--keyword", "Nobody", "--value", "x")
    assert refused.returncode == 2 and "not a QIDO-RS matching key" in refused.stderr
    assert pg.run("SELECT count(*) FROM audit_events WHERE action = 'admin.audit_search'")[0][0] == 2


def test_the_lookup_is_an_index_probe_not_a_walk_of_the_trail(pg: pg8000.native.Connection) -> None:
    # A real trail holds millions of rows: the lookup must be able to use migration 010's index on the
    # searches' hashes (with sequential scans priced out, the planner takes it when it can).
    pg.run("SET enable_seqscan = off")
    plan = pg.run(
        "EXPLAIN " + audit.SELECT_SEARCHES_BY_HASH,
        kids=["0123abcd", "0123abcd"],
        digests=["0" * 64, "1" * 64],
        keyword="PatientName",
        limit=50,
    )
    assert "audit_events_search_keys_idx" in "\n".join(row[0] for row in plan)
