"""DICOMweb (PS3.18) proven with a client someone else wrote: dicomweb-client 0.61.2 against the local
gateway over HTTP (the real serverless.yml routes, AWS-exact events, the real handlers), on the test
database. STOW a study, search it at every level, retrieve instances, metadata, frames (every stored
syntax) and bulk data, thumbnails; owners, viewer tokens, duplicates, bad requests and the audit trail.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pg8000.native
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from scripts.dev import phantom
from scripts.dev.localgw.server import make_server
from shared.dicom import describe as describe_module
from shared.http import image_cache
from tests.conftest import ROOT, User
from tests.lambda_client import LambdaClient

ROOT_PATH = "/api/v1/dicomweb"


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[str]:
    """The local gateway over HTTP on the real serverless.yml, in a thread; its base URL."""
    server = make_server("127.0.0.1", 0, serverless_yml=ROOT / "serverless.yml", containers=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def client_for(gateway: str, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=gateway + ROOT_PATH, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def alice_web(gateway: str, alice: User) -> DICOMwebClient:
    return client_for(gateway, alice.token)


@pytest.fixture
def bob_web(gateway: str, bob: User) -> DICOMwebClient:
    return client_for(gateway, bob.token)


def series(n: int = 4, *, seed: int = 21, size: int = 64) -> list[Dataset]:
    """A small CT series with patient data in it, as a scanner exports it."""
    return phantom.ct_series(n, size=size, seed=seed, phi=True)


def encoded(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    return phantom.dicom_bytes(ds, syntax)


def value(dataset: dict[str, Any], tag: str) -> Any:
    element = dataset.get(tag, {})
    values = element.get("Value", [])
    return values[0] if values else None


def stow(web: DICOMwebClient, datasets: list[Dataset]) -> Dataset:
    response: Dataset = web.store_instances(datasets)
    return response


# ---------------------------------------------------------------- STOW-RS


def test_stow_stores_a_series_in_one_request_and_the_rest_api_lists_its_images(
    alice_web: DICOMwebClient, gateway: str, alice: User
) -> None:
    slices = series(4)
    answer = stow(alice_web, slices)
    stored = answer.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in stored] == [ds.SOPInstanceUID for ds in slices]
    assert "FailedSOPSequence" not in answer
    assert answer.RetrieveURL.endswith(f"{ROOT_PATH}/studies/{slices[0].StudyInstanceUID}")
    # The images are scans of the REST API, as /analyze would have stored them, without patient data.
    listing = requests.get(
        f"{gateway}/api/v1/scans", headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
    ).json()
    assert len(listing["items"]) == 4
    text = json.dumps(listing)
    assert not any(secret in text for secret in phantom.PHI_STRINGS)


def test_stow_answers_exactly_application_dicom_json(gateway: str, alice: User) -> None:
    content_type, body = multipart([encoded(series(1, seed=5)[0])])
    reply = requests.post(
        f"{gateway}{ROOT_PATH}/studies",
        data=body,
        headers={"Authorization": f"Bearer {alice.token}", "Content-Type": content_type},
        timeout=30,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/dicom+json"


def test_mangum_passes_dicom_json_as_text(api: LambdaClient, alice: User) -> None:
    # The upload function's entry point: Mangum's text types do not match application/dicom+json by
    # themselves, and a base64 body would cost a third more bytes and a decode in API Gateway.
    content_type, body = multipart([encoded(series(1, seed=7)[0])])
    stored = api.request(
        "POST", f"{ROOT_PATH}/studies", token=alice.token, headers={"content-type": content_type}, body=body
    )
    assert stored.status == 200 and stored.headers["content-type"] == "application/dicom+json"
    assert stored.raw["isBase64Encoded"] is False and json.loads(stored.raw["body"])["00081190"]


def test_stow_reads_each_instance_header_once(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # STOW-RS describes each part before it stores it; the upload it then makes takes that
    # description instead of reading the file's header a second time.
    reads: list[int] = []
    real = describe_module.describe_instance

    def counted(data: bytes) -> Any:
        reads.append(len(data))
        return real(data)

    monkeypatch.setattr("shared.dicomweb.store.describe_instance", counted)
    monkeypatch.setattr("shared.scans.instances.describe_instance", counted)
    slices = series(3, seed=9)
    content_type, body = multipart([encoded(ds) for ds in slices])
    stored = api.request(
        "POST", f"{ROOT_PATH}/studies", token=alice.token, headers={"content-type": content_type}, body=body
    )
    assert stored.status == 200, stored.body
    assert len(reads) == 3
    rows = pg.run(
        "SELECT sop_instance_uid, scan_id IS NOT NULL FROM dicom_instances WHERE owner_id = :owner ORDER BY 1",
        owner=alice.id,
    )
    assert rows == sorted([ds.SOPInstanceUID, True] for ds in slices)


def stow_in_process(api: LambdaClient, user: User, files: list[bytes]) -> tuple[int, dict[str, Any]]:
    content_type, body = multipart(files)
    answer = api.request(
        "POST", f"{ROOT_PATH}/studies", token=user.token, headers={"content-type": content_type}, body=body
    )
    return answer.status, json.loads(answer.body)


def test_stow_analyses_each_image_while_the_one_before_is_written(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each image's INSERT goes out without waiting (Connection.send), and the next image is
    # analysed while the database writes it: the database connection has a statement on its way
    # whenever an image after the first is analysed.
    from shared import imaging
    from shared.db import connection

    real = imaging.analyze_upload
    in_flight: list[bool] = []

    def watched(data: bytes, **options: Any) -> Any:
        con = connection._holder.con
        in_flight.append(con is not None and con._pending is not None)
        return real(data, **options)

    monkeypatch.setattr(imaging, "analyze_upload", watched)
    slices = series(4, seed=17)
    status, answer = stow_in_process(api, alice, [encoded(ds) for ds in slices])
    assert status == 200, answer
    assert in_flight == [False, True, True, True]
    stored = [value(item, "00081155") for item in answer["00081199"]["Value"]]
    assert stored == [ds.SOPInstanceUID for ds in slices]
    rows = pg.run(
        "SELECT i.sop_instance_uid FROM scans s JOIN dicom_instances i ON i.scan_id = s.id WHERE s.owner_id = :o",
        o=alice.id,
    )
    assert sorted(row[0] for row in rows) == sorted(ds.SOPInstanceUID for ds in slices)


def test_stow_written_ahead_still_fails_a_duplicate_sop_alone_and_takes_a_repeated_file_once(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    first, second, third = series(3, seed=19)
    assert stow_in_process(api, alice, [encoded(first)])[0] == 200
    other_bytes = copy.deepcopy(first)
    other_bytes.InstanceNumber = 99  # the same SOP Instance UID in other bytes: 0x0111
    status, answer = stow_in_process(
        api, alice, [encoded(second), encoded(other_bytes), encoded(third), encoded(third), encoded(first)]
    )
    assert status == 202, answer
    failed = answer["00081198"]["Value"]
    assert [(value(f, "00081155"), value(f, "00081197")) for f in failed] == [(first.SOPInstanceUID, 0x0111)]
    stored = [value(item, "00081155") for item in answer["00081199"]["Value"]]
    assert stored == [second.SOPInstanceUID, third.SOPInstanceUID, third.SOPInstanceUID, first.SOPInstanceUID]
    counts = pg.run(
        "SELECT i.sop_instance_uid, count(*) FROM scans s JOIN dicom_instances i ON i.scan_id = s.id "
        "WHERE s.owner_id = :o GROUP BY 1",
        o=alice.id,
    )
    assert dict((uid, n) for uid, n in counts) == {ds.SOPInstanceUID: 1 for ds in (first, second, third)}


def test_stow_rewrites_an_image_whose_insert_lost_its_connection(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection breaks with an INSERT on its way (committed or not, the client cannot tell):
    # the image is written again as a single upload is, which its own scan id makes safe, and is
    # stored once.
    from shared.db import instances

    real = instances.send_scan_with_instance
    broken: list[str] = []

    def send_then_break(con: Any, **kwargs: Any) -> Any:
        sent = real(con, **kwargs)
        if not broken:
            broken.append(kwargs["scan"].id)
            con._usock.shutdown(socket.SHUT_RDWR)
        return sent

    monkeypatch.setattr(instances, "send_scan_with_instance", send_then_break)
    slices = series(3, seed=23)
    status, answer = stow_in_process(api, alice, [encoded(ds) for ds in slices])
    assert status == 200, answer
    assert len(broken) == 1
    rows = pg.run("SELECT s.id, i.sop_instance_uid FROM scans s JOIN dicom_instances i ON i.scan_id = s.id")
    assert sorted(uid for _, uid in rows) == sorted(ds.SOPInstanceUID for ds in slices)
    assert broken[0] in {scan_id for scan_id, _ in rows}


def test_a_stow_request_over_the_size_limit_is_413_with_advice_and_stores_nothing(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("MAX_UPLOAD_BYTES", "100000")
    content_type, body = multipart([encoded(ds) for ds in series(12, seed=9, size=64)])
    assert len(body) > 100_000
    refused = api.request(
        "POST", f"{ROOT_PATH}/studies", token=alice.token, headers={"content-type": content_type}, body=body
    )
    assert refused.status == 413 and refused.error_code == "upload_too_large"
    message = refused.json()["error"]["message"]
    assert "several requests" in message and "/api/v1/scans/uploads" in message
    assert pg.run("SELECT count(*) FROM dicom_instances WHERE owner_id = :o", o=alice.id) == [[0]]
    assert pg.run("SELECT count(*) FROM scans WHERE owner_id = :o", o=alice.id) == [[0]]


def test_the_same_file_again_is_a_success_and_stores_nothing_new(
    alice_web: DICOMwebClient, pg: pg8000.native.Connection
) -> None:
    slices = series(2, seed=31)
    stow(alice_web, slices)
    again = stow(alice_web, slices)
    assert len(again.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in again
    assert pg.run("SELECT count(*) FROM dicom_instances")[0][0] == 2
    assert pg.run("SELECT count(*) FROM scans")[0][0] == 2


def test_a_second_file_with_a_stored_sop_instance_uid_fails_with_0x0111_and_keeps_the_first(
    alice_web: DICOMwebClient, gateway: str, alice: User, pg: pg8000.native.Connection
) -> None:
    original = series(1, seed=41)[0]
    stow(alice_web, [original])
    changed = copy.deepcopy(original)
    changed.AccessionNumber = "FIXED-1"
    with pytest.raises(requests.HTTPError) as refused:
        stow(alice_web, [changed])
    assert refused.value.response.status_code == 409
    failed = json.loads(refused.value.response.content)["00081198"]["Value"][0]
    assert value(failed, "00081197") == 0x0111
    assert value(failed, "00081155") == original.SOPInstanceUID
    found = alice_web.search_for_instances(search_filters={"SOPInstanceUID": original.SOPInstanceUID})
    assert len(found) == 1
    assert pg.run("SELECT accession_number FROM dicom_instances")[0][0] == original.AccessionNumber
    # The same rule on the REST upload path: 409 duplicate_sop_instance naming the stored scan, and
    # nothing written (the INSERT's unique index refuses it: no lookup before it under `reject`).
    stored_before = pg.run("SELECT (SELECT count(*) FROM scans), (SELECT count(*) FROM dicom_instances)")
    content_type, body = form(encoded(changed))
    reply = requests.post(
        f"{gateway}/api/v1/scans/analyze",
        data=body,
        headers={"Authorization": f"Bearer {alice.token}", "Content-Type": content_type},
        timeout=30,
    )
    assert reply.status_code == 409 and reply.json()["error"]["code"] == "duplicate_sop_instance"
    assert pg.run("SELECT scan_id FROM dicom_instances")[0][0] in reply.json()["error"]["message"]
    assert pg.run("SELECT (SELECT count(*) FROM scans), (SELECT count(*) FROM dicom_instances)") == stored_before


def test_overwrite_policy_replaces_the_stored_instance_and_audits_it(
    gateway: str, alice: User, pg: pg8000.native.Connection, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("DUPLICATE_SOP_POLICY", "overwrite")
    web = client_for(gateway, alice.token)
    original = series(1, seed=43)[0]
    stow(web, [original])
    changed = copy.deepcopy(original)
    changed.AccessionNumber = "FIXED-2"
    answer = stow(web, [changed])
    assert len(answer.ReferencedSOPSequence) == 1
    assert pg.run("SELECT accession_number FROM dicom_instances")[0][0] == "FIXED-2"
    assert pg.run("SELECT count(*) FROM scans")[0][0] == 1
    assert pg.run("SELECT count(*) FROM audit_events WHERE action = 'dicomweb.replace'")[0][0] == 1


def test_parts_that_are_not_dicom_or_of_another_study_fail_and_the_rest_is_stored(gateway: str, alice: User) -> None:
    good = series(1, seed=51)[0]
    other_study = series(1, seed=52)[0]
    content_type, body = multipart([encoded(good), b"not a DICOM file at all", encoded(other_study)])
    reply = requests.post(
        f"{gateway}{ROOT_PATH}/studies/{good.StudyInstanceUID}",
        data=body,
        headers={"Authorization": f"Bearer {alice.token}", "Content-Type": content_type},
        timeout=30,
    )
    assert reply.status_code == 202
    answer = reply.json()
    assert [value(item, "00081155") for item in answer["00081199"]["Value"]] == [good.SOPInstanceUID]
    reasons = [value(item, "00081197") for item in answer["00081198"]["Value"]]
    assert reasons == [0xC000, 0xA900]


def test_a_study_with_a_dose_report_is_stored_whole(alice_web: DICOMwebClient, gateway: str, alice: User) -> None:
    slices = series(2, seed=61)
    report = sr_document(slices[0])
    answer = stow(alice_web, [*slices, report])
    assert len(answer.ReferencedSOPSequence) == 3
    found = alice_web.search_for_instances(study_instance_uid=slices[0].StudyInstanceUID)
    assert {value(item, "00080018") for item in found} == {ds.SOPInstanceUID for ds in [*slices, report]}
    # Retrievable byte for byte, with its content tree in its metadata; never a REST scan.
    got = alice_web.retrieve_instance(report.StudyInstanceUID, report.SeriesInstanceUID, report.SOPInstanceUID)
    assert got.SOPInstanceUID == report.SOPInstanceUID and got.ContentSequence[0].TextValue == "DLP 412 mGy.cm"
    metadata = alice_web.retrieve_instance_metadata(
        report.StudyInstanceUID, report.SeriesInstanceUID, report.SOPInstanceUID
    )
    assert "0040A730" in metadata
    listing = requests.get(
        f"{gateway}/api/v1/scans", headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
    ).json()
    assert len(listing["items"]) == 2


# ---------------------------------------------------------------- QIDO-RS


def test_search_each_level_and_match_as_ohif_asks(alice_web: DICOMwebClient) -> None:
    slices = series(3, seed=71)
    stow(alice_web, slices)
    study, series_uid = slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID
    studies = alice_web.search_for_studies(search_filters={"PatientName": "*doe*"})
    assert [value(s, "0020000D") for s in studies] == [study]
    found = studies[0]
    assert value(found, "00100010") == {"Alphabetic": "Doe^Jane"}
    assert value(found, "00100020") == "MRN-PHI-0042"
    assert value(found, "00080061") == "CT"
    assert value(found, "00201206") == 1 and value(found, "00201208") == 3
    assert value(found, "00080005") == "ISO_IR 192"
    assert alice_web.search_for_studies(search_filters={"PatientName": "*smith*"}) == []
    assert len(alice_web.search_for_studies(search_filters={"StudyDate": "20240101-20241231"})) == 1
    assert alice_web.search_for_studies(search_filters={"StudyDate": "20250101-"}) == []
    assert len(alice_web.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})) == 1
    assert len(alice_web.search_for_studies(search_filters={"AccessionNumber": "*PHI*"})) == 1
    assert len(alice_web.search_for_studies(search_filters={"00100020": "MRN-PHI-0042"})) == 1
    all_series = alice_web.search_for_series(study_instance_uid=study)
    assert [value(s, "0020000E") for s in all_series] == [series_uid]
    assert value(all_series[0], "00201209") == 3
    instances = alice_web.search_for_instances(study_instance_uid=study, series_instance_uid=series_uid)
    assert [value(i, "00200013") for i in instances] == [1, 2, 3]
    assert value(instances[0], "00081190").endswith(f"/instances/{slices[0].SOPInstanceUID}")


def test_search_results_are_gzipped_when_the_client_takes_it(
    alice_web: DICOMwebClient, gateway: str, alice: User
) -> None:
    stow(alice_web, series(6, seed=77))
    url = f"{gateway}{ROOT_PATH}/instances?includefield=all"
    auth = {"Authorization": f"Bearer {alice.token}"}
    zipped = requests.get(url, headers={**auth, "Accept-Encoding": "gzip"}, timeout=30, stream=True)
    raw = zipped.raw.read(decode_content=False)
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["cache-control"] == "no-store"
    plain = requests.get(url, headers={**auth, "Accept-Encoding": "identity"}, timeout=30)
    assert "content-encoding" not in plain.headers
    assert json.loads(gzip.decompress(raw)) == plain.json() and len(plain.json()) == 6
    assert len(raw) < len(plain.content) / 3


def test_a_gzipped_answer_is_one_gzip_member_the_same_for_the_same_json() -> None:
    """ISA-L writes the gzip (wado.gzip_body): a stream any gzip reader takes whole (zlib's, as
    browsers, urllib3 and dicomweb-client read it), one member, MTIME 0, so equal JSON is equal bytes."""
    from shared.dicomweb import wado

    body = json.dumps(
        [
            {"00080018": {"vr": "UI", "Value": [f"1.2.826.0.1.{i}"]}, "00200013": {"vr": "IS", "Value": [i]}}
            for i in range(300)
        ]
    ).encode()
    zipped = wado.gzip_body(body)
    assert zipped[:4] == b"\x1f\x8b\x08\x00" and zipped[4:8] == bytes(4)  # gzip, deflate, no flags, MTIME 0
    reader = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    assert reader.decompress(zipped) == body and reader.eof and reader.unused_data == b""
    assert gzip.decompress(zipped) == body and wado.gzip_body(body) == zipped
    assert len(zipped) < len(body) / 10


def test_search_pages_with_limit_and_offset_until_an_empty_page(alice_web: DICOMwebClient) -> None:
    slices = series(5, seed=81)
    stow(alice_web, slices)
    study, series_uid = slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID
    first = alice_web.search_for_instances(study, series_uid, limit=2)
    second = alice_web.search_for_instances(study, series_uid, limit=2, offset=2)
    assert [value(i, "00200013") for i in first + second] == [1, 2, 3, 4]
    everything = alice_web.search_for_instances(study, series_uid, limit=2, get_remaining=True)
    assert [value(i, "00200013") for i in everything] == [1, 2, 3, 4, 5]


def test_an_unsupported_key_is_ignored_with_a_warning_and_malformed_values_are_400(
    gateway: str, alice: User, alice_web: DICOMwebClient
) -> None:
    stow(alice_web, series(1, seed=91))
    auth = {"Authorization": f"Bearer {alice.token}", "Accept": "application/dicom+json"}
    reply = requests.get(f"{gateway}{ROOT_PATH}/studies?InstitutionName=x", headers=auth, timeout=30)
    assert reply.status_code == 200 and len(reply.json()) == 1
    assert reply.headers["warning"].startswith("299 ")
    assert reply.headers["content-type"] == "application/dicom+json"
    assert reply.headers["cache-control"] == "no-store"
    for query in ("limit=-1", "StudyDate=20240301-20240101", "StudyDate=2024", "offset=x", "InstanceNumber=one"):
        bad = requests.get(f"{gateway}{ROOT_PATH}/instances?{query}", headers=auth, timeout=30)
        assert bad.status_code == 400, query
        assert bad.json()["error"]["code"] == "invalid_request"


def test_another_owners_study_is_not_found_and_searches_come_back_empty(
    alice_web: DICOMwebClient, bob_web: DICOMwebClient
) -> None:
    slices = series(1, seed=101)
    stow(alice_web, slices)
    ds = slices[0]
    assert bob_web.search_for_studies() == []
    assert bob_web.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID}) == []
    for call in (
        lambda: bob_web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
        lambda: bob_web.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID),
        lambda: bob_web.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1]),
    ):
        with pytest.raises(requests.HTTPError) as missing:
            call()
        assert missing.value.response.status_code == 404


# ---------------------------------------------------------------- WADO-RS


def test_retrieve_instance_series_and_study_give_the_stored_bytes(alice_web: DICOMwebClient) -> None:
    slices = series(3, seed=111)
    stow(alice_web, slices)
    ds = slices[1]
    got = alice_web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PatientName == "Doe^Jane"
    assert got.PixelData == ds.PixelData
    whole = alice_web.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert sorted(i.SOPInstanceUID for i in whole) == sorted(s.SOPInstanceUID for s in slices)
    assert len(alice_web.retrieve_study(ds.StudyInstanceUID)) == 3


def test_series_metadata_is_one_dicom_json_array_without_bulk_data_inline(
    alice_web: DICOMwebClient, gateway: str, alice: User
) -> None:
    slices = series(3, seed=121)
    stow(alice_web, slices)
    study, series_uid = slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID
    metadata = alice_web.retrieve_series_metadata(study, series_uid)
    assert [value(m, "00200013") for m in metadata] == [1, 2, 3]
    first = metadata[0]
    assert value(first, "00100010") == {"Alphabetic": "Doe^Jane"}
    assert "Value" not in first["7FE00010"] and "InlineBinary" not in first["7FE00010"]
    uri = first["7FE00010"]["BulkDataURI"]
    assert uri.startswith("instances/")  # relative to the series, as OHIF resolves it
    assert value(first, "00281052") == -1024  # the rescale, for the viewer
    # Revalidation: the ETag comes back, a client holding it gets 304; gzip when asked.
    url = f"{gateway}{ROOT_PATH}/studies/{study}/series/{series_uid}/metadata"
    auth = {"Authorization": f"Bearer {alice.token}"}
    reply = requests.get(url, headers={**auth, "Accept-Encoding": "gzip"}, timeout=30, stream=True)
    raw = reply.raw.read()
    assert reply.headers["content-encoding"] == "gzip" and json.loads(gzip.decompress(raw)) == metadata
    assert reply.headers["cache-control"] == "private, no-cache"
    again = requests.get(url, headers={**auth, "If-None-Match": reply.headers["etag"]}, timeout=30)
    assert again.status_code == 304
    # A new instance changes the series, and its ETag.
    stow(alice_web, series(4, seed=121)[3:])
    changed = requests.get(url, headers={**auth, "If-None-Match": reply.headers["etag"]}, timeout=30)
    assert changed.status_code == 200 and len(changed.json()) == 4


def test_the_metadata_of_a_1000_slice_series_fits_one_response(
    alice_web: DICOMwebClient, gateway: str, alice: User, pg: pg8000.native.Connection
) -> None:
    # CT_small's description (11 KB, private tags and all) stands for a scanner's slice; its copies
    # under new SOP UIDs make a 1000-instance series, inserted directly (storing 1000 files is the bench's).
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(str(path))
    stow(alice_web, [ds])
    pg.run(
        """
        INSERT INTO dicom_instances (owner_id, object_data, object_hash, object_size, study_instance_uid,
            series_instance_uid, sop_instance_uid, sop_class_uid, transfer_syntax_uid, instance_number,
            number_of_frames, metadata)
        SELECT owner_id, '\\x00', repeat('0', 64), 1, study_instance_uid, series_instance_uid,
               sop_instance_uid || '.' || n, sop_class_uid, transfer_syntax_uid, n, number_of_frames,
               replace(metadata, sop_instance_uid, sop_instance_uid || '.' || n)
        FROM dicom_instances, generate_series(2, 1000) n
        WHERE owner_id = :owner AND sop_instance_uid = :sop
        """,
        owner=alice.id,
        sop=ds.SOPInstanceUID,
    )
    url = f"{gateway}{ROOT_PATH}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    auth = {"Authorization": f"Bearer {alice.token}"}
    reply = requests.get(url, headers={**auth, "Accept-Encoding": "gzip"}, timeout=60, stream=True)
    compressed = reply.raw.read(decode_content=False)
    assert reply.status_code == 200 and reply.headers["content-encoding"] == "gzip"
    assert len(compressed) < 4_400_000  # what a Lambda response carries (base64 within 6 MB)
    instances = json.loads(gzip.decompress(compressed))
    assert len(instances) == 1000 and len(json.dumps(instances)) > 10_000_000
    sop = ds.SOPInstanceUID
    assert [value(i, "00080018") for i in instances] == [sop, *(f"{sop}.{n}" for n in range(2, 1001))]
    assert len(alice_web.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)) == 1000
    # A client that refuses gzip: what cannot fit is a clear 400, never a truncated array or a 502.
    refused = requests.get(url, headers={**auth, "Accept-Encoding": "identity"}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "response_too_large"
    assert "Accept-Encoding: gzip" in refused.json()["error"]["message"]


def test_bulk_data_uri_of_the_metadata_gives_the_pixel_data(alice_web: DICOMwebClient, gateway: str) -> None:
    ds = series(1, seed=131)[0]
    stow(alice_web, [ds])
    metadata = alice_web.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    uri = metadata["7FE00010"]["BulkDataURI"]
    absolute = f"{gateway}{ROOT_PATH}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/{uri}"
    assert alice_web.retrieve_bulkdata(absolute) == [ds.PixelData]


STORED_SYNTAXES = {
    "uncompressed": "CT_small.dcm",
    "jpeg_baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg2000": "JPEG2000.dcm",
    "jpeg_ls": "emri_small_jpeg_ls_lossless.dcm",
    "rle": "MR_small_RLE.dcm",
    "enhanced_multiframe_ct": "eCT_Supplemental.dcm",
}


@pytest.mark.parametrize("name", sorted(STORED_SYNTAXES))
def test_frames_come_back_as_stored_for_every_syntax(alice_web: DICOMwebClient, name: str) -> None:
    path = get_testdata_file(STORED_SYNTAXES[name])
    assert path is not None, STORED_SYNTAXES[name]
    data = Path(str(path)).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    answer = stow(alice_web, [ds])
    assert "FailedSOPSequence" not in answer, name
    count = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    else:
        length = len(ds.PixelData) // count
        expected = [ds.PixelData[i * length : (i + 1) * length] for i in range(count)]
    numbers = list(range(1, count + 1))
    got = alice_web.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        numbers,
        media_types=(("application/octet-stream", "*"),),
    )
    assert [bytes(frame) for frame in got] == [bytes(frame) for frame in expected]


def test_frames_as_ohif_asks_for_them_name_their_transfer_syntax(
    alice_web: DICOMwebClient, gateway: str, alice: User
) -> None:
    ds = series(1, seed=141)[0]
    stow(alice_web, [ds])
    url = (
        f"{gateway}{ROOT_PATH}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    reply = requests.get(
        url,
        headers={
            "Authorization": f"Bearer {alice.token}",
            "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*",
        },
        timeout=30,
    )
    assert reply.status_code == 200
    boundary = reply.headers["content-type"].split("boundary=")[1].strip('"')
    assert reply.content.startswith(f"--{boundary}\r\n".encode())
    assert b"Content-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1\r\n" in reply.content
    assert reply.headers["cache-control"] == "private, max-age=31536000, immutable"
    for missing in ("frames/0", "frames/2", "frames/x"):
        bad = requests.get(
            url.replace("frames/1", missing), headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
        )
        assert bad.status_code in (400, 404), missing


def test_a_warm_container_sends_frames_it_holds_without_reading_them_again(
    alice_web: DICOMwebClient, bob_web: DICOMwebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.db import instances

    reads: list[tuple[str | None, bool]] = []
    real = instances.read_frames

    def spy(con: Any, **kwargs: Any) -> instances.FramesRead:
        found = real(con, **kwargs)
        reads.append((kwargs["known_sha256"], all(frame.data is not None for frame in found.frames)))
        return found

    monkeypatch.setattr(instances, "read_frames", spy)
    image_cache.reset()  # nothing held from another test
    ds = series(1, seed=143)[0]
    stow(alice_web, [ds])
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    wanted = (("application/octet-stream", "*"),)
    first = alice_web.retrieve_instance_frames(*uids, [1], media_types=wanted)
    again = alice_web.retrieve_instance_frames(*uids, [1], media_types=wanted)
    assert [bytes(f) for f in first] == [bytes(f) for f in again] == [ds.PixelData]
    assert reads[0] == (None, True)
    assert reads[1][0] is not None and reads[1][1] is False  # held: the database sent no bytes
    # The database still decides: another owner asking for the same UID gets a 404, not the held frame.
    with pytest.raises(requests.HTTPError) as refused:
        bob_web.retrieve_instance_frames(*uids, [1], media_types=wanted)
    assert refused.value.response.status_code == 404


def test_a_warm_container_sends_metadata_it_holds_until_the_series_changes(
    alice_web: DICOMwebClient, gateway: str, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.db import instances

    sent: list[bool] = []
    real = instances.read_metadata

    def spy(con: Any, **kwargs: Any) -> instances.Metadata:
        found = real(con, **kwargs)
        sent.append(found.json is not None)
        return found

    monkeypatch.setattr(instances, "read_metadata", spy)
    image_cache.reset()
    slices = series(3, seed=147)
    stow(alice_web, slices[:2])
    ds = slices[0]
    url = f"{gateway}{ROOT_PATH}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    auth = {"Authorization": f"Bearer {alice.token}", "Accept-Encoding": "gzip"}
    first, again = (requests.get(url, headers=auth, timeout=30) for _ in range(2))
    assert first.headers["content-encoding"] == again.headers["content-encoding"] == "gzip"
    assert first.json() == again.json() and len(again.json()) == 2
    assert first.headers["etag"] == again.headers["etag"]
    assert sent == [True, False]  # the second time the database vouched for the tag and sent no JSON
    stow(alice_web, slices[2:])  # the series changes: its tag too, and the JSON is read again
    grown = requests.get(url, headers=auth, timeout=30)
    assert len(grown.json()) == 3 and grown.headers["etag"] != first.headers["etag"] and sent[-1] is True


def test_thumbnails_of_instance_series_and_study_are_jpeg(alice_web: DICOMwebClient, gateway: str, alice: User) -> None:
    slices = series(3, seed=151)
    stow(alice_web, slices)
    ds = slices[0]
    study = f"{gateway}{ROOT_PATH}/studies/{ds.StudyInstanceUID}"
    auth = {"Authorization": f"Bearer {alice.token}", "Accept": "image/jpeg"}
    for url in (
        f"{study}/thumbnail",
        f"{study}/series/{ds.SeriesInstanceUID}/thumbnail",
        f"{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/thumbnail",
    ):
        reply = requests.get(url, headers=auth, timeout=30)
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg", url
        assert reply.content[:2] == b"\xff\xd8"
    png_only = requests.get(f"{study}/thumbnail", headers={**auth, "Accept": "image/png"}, timeout=30)
    assert png_only.status_code == 406


# ---------------------------------------------------------------- rendered and decoded


def instance_url(gateway: str, ds: Dataset) -> str:
    return (
        f"{gateway}{ROOT_PATH}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR to 8 bits, written out here rather than taken from the server's code."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(values <= low, 0, np.where(values > high, 255, out))
    return np.rint(out).astype(np.uint8)


def hounsfield(ds: Dataset, frame: int = 0) -> np.ndarray:
    """A frame's values in HU: the rescale of the dataset, or of an enhanced CT's functional groups."""
    pixels = ds.pixel_array if int(getattr(ds, "NumberOfFrames", 1) or 1) == 1 else ds.pixel_array[frame]
    rescale = ds
    if "RescaleSlope" not in ds:
        per_frame = ds.PerFrameFunctionalGroupsSequence[frame]
        groups = per_frame if "PixelValueTransformationSequence" in per_frame else ds.SharedFunctionalGroupsSequence[0]
        rescale = groups.PixelValueTransformationSequence[0]
    return pixels.astype(np.float64) * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)


def test_rendered_instance_is_windowed_as_asked_and_png_is_exact(alice_web: DICOMwebClient) -> None:
    ds = series(1, seed=163, size=64)[0]
    stow(alice_web, [ds])
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    png = alice_web.retrieve_instance_rendered(*uids, media_types=("image/png",), params={"window": "300,1500,linear"})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    shown = np.asarray(Image.open(io.BytesIO(png)))
    assert shown.shape == (64, 64)
    np.testing.assert_array_equal(shown, linear_window(hounsfield(ds), 300, 1500))
    soft = alice_web.retrieve_instance_rendered(*uids, media_types=("image/png",), params={"window": "40,400"})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(soft))), linear_window(hounsfield(ds), 40, 400))
    assert soft != png
    jpeg = alice_web.retrieve_instance_rendered(*uids, media_types=("image/jpeg",), params={"quality": "70"})
    assert jpeg[:2] == b"\xff\xd8"
    # Without a window: the file's own (the phantom writes 40/400), as a viewer would open it.
    default = alice_web.retrieve_instance_rendered(*uids, media_types=("image/png",))
    assert default == soft


def test_a_rendered_frame_of_a_multiframe_ct_is_that_frame(alice_web: DICOMwebClient) -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    assert path is not None
    ds = pydicom.dcmread(str(path))
    stow(alice_web, [ds])
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    frames = [
        np.asarray(
            Image.open(
                io.BytesIO(
                    alice_web.retrieve_instance_frames_rendered(
                        *uids, [n], media_types=("image/png",), params={"window": "100,800,linear"}
                    )
                )
            )
        )
        for n in (1, 2)
    ]
    for index, shown in enumerate(frames):
        np.testing.assert_array_equal(shown, linear_window(hounsfield(ds, index), 100, 800))
    assert not np.array_equal(frames[0], frames[1])


def test_viewport_scales_crops_and_mirrors(alice_web: DICOMwebClient) -> None:
    ds = series(1, seed=173, size=64)[0]
    stow(alice_web, [ds])
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    def shown(viewport: str) -> np.ndarray:
        png = alice_web.retrieve_instance_rendered(
            *uids, media_types=("image/png",), params={"window": "40,400", "viewport": viewport}
        )
        return np.asarray(Image.open(io.BytesIO(png)))

    whole = linear_window(hounsfield(ds), 40, 400)
    assert shown("64,32").shape == (32, 32)  # aspect ratio kept: fitted into the smaller side
    assert shown("256,256").shape == (256, 256)
    np.testing.assert_array_equal(shown("16,16,8,4,16,16"), whole[4:20, 8:24])
    np.testing.assert_array_equal(shown("16,16,8,4,-16,16"), whole[4:20, 8:24][:, ::-1])
    np.testing.assert_array_equal(shown("16,16,8,4,16,-16"), whole[4:20, 8:24][::-1, :])


def test_bad_rendering_parameters_are_400_and_other_types_406(
    alice_web: DICOMwebClient, gateway: str, alice: User, bob: User
) -> None:
    ds = series(1, seed=183, size=32)[0]
    stow(alice_web, [ds])
    url = instance_url(gateway, ds)
    auth = {"Authorization": f"Bearer {alice.token}"}
    for query in (
        "window=40",
        "window=40,0,linear",
        "window=40,400,cubic",
        "window=abc,400",
        "window=40,nan",
        "quality=0",
        "quality=101",
        "quality=high",
        "viewport=0,10",
        "viewport=10,10,0,0,33,10",
        "viewport=10,10,0,0,0,10",
        "viewport=10,10,1",
        "viewport=5000,10",
        "window=40,400&window=50,400",
    ):
        reply = requests.get(f"{url}/rendered?{query}", headers=auth, timeout=30)
        assert reply.status_code == 400, query
        assert reply.json()["error"]["code"] == "invalid_request", query
    frames = requests.get(f"{url}/frames/1,2/rendered", headers=auth, timeout=30)
    assert frames.status_code == 400
    assert requests.get(f"{url}/frames/2/rendered", headers=auth, timeout=30).status_code == 404
    gif = requests.get(f"{url}/rendered", headers={**auth, "Accept": "image/gif"}, timeout=30)
    assert gif.status_code == 406
    by_parameter = requests.get(f"{url}/rendered?accept=image/png", headers={**auth, "Accept": "image/gif"}, timeout=30)
    assert by_parameter.status_code == 200 and by_parameter.headers["content-type"] == "image/png"
    annotated = requests.get(f"{url}/rendered?annotation=patient", headers=auth, timeout=30)
    assert annotated.status_code == 200 and annotated.headers["content-type"] == "image/jpeg"
    assert "annotation" in annotated.headers["warning"]
    assert annotated.headers["cache-control"] == "private, max-age=31536000, immutable"
    others = requests.get(f"{url}/rendered", headers={"Authorization": f"Bearer {bob.token}"}, timeout=30)
    assert others.status_code == 404
    assert requests.get(f"{url}/rendered", timeout=30).status_code == 401


COMPRESSED = ["jpeg_baseline", "jpeg2000", "jpeg_ls", "rle", "enhanced_multiframe_ct"]


@pytest.mark.parametrize("name", COMPRESSED)
def test_decoded_frames_are_the_pixels_pydicom_decodes(alice_web: DICOMwebClient, name: str) -> None:
    path = get_testdata_file(STORED_SYNTAXES[name])
    assert path is not None
    ds = pydicom.dcmread(str(path))
    stow(alice_web, [ds])
    count = int(getattr(ds, "NumberOfFrames", 1) or 1)
    expected = ds.pixel_array if count > 1 else ds.pixel_array[np.newaxis]
    got = alice_web.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        list(range(1, count + 1)),
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),),
    )
    assert len(got) == count
    for frame, pixels in zip(got, expected, strict=True):
        assert bytes(frame) == pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_frames_that_are_not_byte_ranges_come_decoded(
    alice_web: DICOMwebClient, gateway: str, alice: User, syntax: str
) -> None:
    ds = series(1, seed=191 + len(syntax), size=32)[0]
    stored = pydicom.dcmread(io.BytesIO(encoded(ds, syntax)))
    stow(alice_web, [stored])
    got = alice_web.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        [1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert [bytes(frame) for frame in got] == [ds.pixel_array.astype("<i2").tobytes()]


def test_a_request_for_decoded_frames_is_redirected_to_the_render_function(gateway: str, alice: User) -> None:
    path = get_testdata_file("JPEG2000.dcm")
    assert path is not None
    ds = pydicom.dcmread(str(path))
    web = client_for(gateway, alice.token)
    stow(web, [ds])
    url = f"{instance_url(gateway, ds)}/frames/1"
    decoded = f'multipart/related; type="application/octet-stream"; transfer-syntax={ExplicitVRLittleEndian}'
    auth = {"Authorization": f"Bearer {alice.token}", "Accept": decoded}
    first = requests.get(url + "?x=1", headers=auth, timeout=30, allow_redirects=False)
    assert first.status_code == 307
    assert first.headers["location"] == f"{ROOT_PATH}/decoded{url.removeprefix(gateway + ROOT_PATH)}?x=1"
    followed = requests.get(url, headers=auth, timeout=30)
    assert followed.status_code == 200 and followed.history[0].status_code == 307
    assert b"transfer-syntax=1.2.840.10008.1.2.1" in followed.content
    stored_form = requests.get(
        url,
        headers={**auth, "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
        timeout=30,
        allow_redirects=False,
    )
    assert stored_form.status_code == 200  # the stored codestream, from the images function
    bad = requests.get(url.replace("/frames/1", "/frames/2"), headers=auth, timeout=30)
    assert bad.status_code == 404
    viewer = requests.get(url, headers={**auth, "Authorization": "Bearer nope"}, timeout=30)
    assert viewer.status_code == 401


# ---------------------------------------------------------------- tokens, deletes, audit


def test_a_viewer_token_reads_through_dicomweb_only_and_ends_with_its_session(
    gateway: str, alice: User, alice_web: DICOMwebClient
) -> None:
    slices = series(1, seed=161)
    stow(alice_web, slices)
    auth = {"Authorization": f"Bearer {alice.token}"}
    minted = requests.post(f"{gateway}/api/v1/auth/viewer-tokens", headers=auth, timeout=30)
    assert minted.status_code == 201
    viewer = client_for(gateway, minted.json()["token"])
    assert len(viewer.search_for_studies()) == 1
    viewer_auth = {"Authorization": f"Bearer {minted.json()['token']}"}
    assert requests.get(f"{gateway}/api/v1/scans", headers=viewer_auth, timeout=30).status_code == 401
    with pytest.raises(requests.HTTPError) as refused:
        viewer.store_instances(series(1, seed=162))
    assert refused.value.response.status_code == 401
    # A viewer token cannot mint more viewer tokens, nor outlive its session.
    assert requests.post(f"{gateway}/api/v1/auth/viewer-tokens", headers=viewer_auth, timeout=30).status_code == 401
    assert requests.delete(f"{gateway}/api/v1/auth/sessions/current", headers=auth, timeout=30).status_code == 204
    with pytest.raises(requests.HTTPError) as ended:
        viewer.search_for_studies()
    assert ended.value.response.status_code == 401


def test_deleting_a_scan_removes_it_from_dicomweb(alice_web: DICOMwebClient, gateway: str, alice: User) -> None:
    slices = series(2, seed=171)
    answer = stow(alice_web, slices)
    assert len(answer.ReferencedSOPSequence) == 2
    auth = {"Authorization": f"Bearer {alice.token}"}
    scan_id = requests.get(f"{gateway}/api/v1/scans", headers=auth, timeout=30).json()["items"][0]["scanId"]
    assert requests.delete(f"{gateway}/api/v1/scans/{scan_id}", headers=auth, timeout=30).status_code == 204
    assert len(alice_web.search_for_instances()) == 1


def test_delete_a_study_series_or_instance_through_dicomweb(
    alice_web: DICOMwebClient, bob_web: DICOMwebClient, gateway: str, alice: User, pg: pg8000.native.Connection
) -> None:
    slices = series(3, seed=201)
    report = sr_document(slices[0])
    stow(alice_web, [*slices, report])
    study, series_uid = slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID
    bob_copy = series(1, seed=201)  # bob holds the same study UID: never touched by alice's deletes
    stow(bob_web, bob_copy)
    with pytest.raises(requests.HTTPError) as others:
        bob_web.delete_instance(study, series_uid, slices[1].SOPInstanceUID)
    assert others.value.response.status_code == 404

    alice_web.delete_instance(study, series_uid, slices[0].SOPInstanceUID)
    assert {value(r, "00080018") for r in alice_web.search_for_instances(study)} == {
        slices[1].SOPInstanceUID,
        slices[2].SOPInstanceUID,
        report.SOPInstanceUID,
    }
    alice_web.delete_series(study, series_uid)
    assert [value(r, "00080018") for r in alice_web.search_for_instances(study)] == [report.SOPInstanceUID]
    auth = {"Authorization": f"Bearer {alice.token}"}
    assert requests.get(f"{gateway}/api/v1/scans", headers=auth, timeout=30).json()["items"] == []
    alice_web.delete_study(study)
    assert alice_web.search_for_studies() == []
    with pytest.raises(requests.HTTPError) as gone:
        alice_web.delete_study(study)
    assert gone.value.response.status_code == 404
    assert len(bob_web.search_for_instances(study)) == 1

    viewer = requests.post(f"{gateway}/api/v1/auth/viewer-tokens", headers=auth, timeout=30).json()["token"]
    refused = requests.delete(
        f"{gateway}{ROOT_PATH}/studies/{study}", headers={"Authorization": f"Bearer {viewer}"}, timeout=30
    )
    assert refused.status_code == 401
    rows = pg.run(
        "SELECT status, details->>'level', (details->>'instances')::int FROM audit_events"
        " WHERE user_id = :user AND action = 'dicomweb.delete' ORDER BY id",
        user=alice.id,
    )
    assert rows == [[204, "instance", 1], [204, "series", 2], [204, "study", 1], [404, "study", 0]]


def test_searches_are_audited_with_keyed_hashes_never_the_values(
    alice_web: DICOMwebClient, pg: pg8000.native.Connection
) -> None:
    slices = series(1, seed=181)
    stow(alice_web, slices)
    alice_web.search_for_studies(search_filters={"PatientName": "Doe^Jane"})
    alice_web.retrieve_series_metadata(slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID)
    rows = pg.run("SELECT action, details::text FROM audit_events WHERE action LIKE 'dicomweb.%' ORDER BY id")
    actions = [row[0] for row in rows]
    assert actions == ["dicomweb.store", "dicomweb.search", "dicomweb.retrieve"]
    search = json.loads(rows[1][1])
    assert search["level"] == "study" and search["results"] == 1
    assert len(search["keys"]["PatientName"]) == 64
    trail = json.dumps(pg.run("SELECT * FROM audit_events", types=None), default=str)
    assert not any(secret in trail for secret in phantom.PHI_STRINGS)
    assert "DOE" not in trail.upper().replace("DOES", "")


# ---------------------------------------------------------------- helpers


def multipart(files: list[bytes]) -> tuple[str, bytes]:
    boundary = "stowboundary7781"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def form(data: bytes) -> tuple[str, bytes]:
    boundary = "formboundary7781"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n'
            "Content-Type: application/dicom\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f"multipart/form-data; boundary={boundary}", body


def sr_document(image: Dataset) -> Dataset:
    """A minimal dose report in the image's study: no pixel data, a content tree."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = image.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientName = image.PatientName
    ds.PatientID = image.PatientID
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.TextValue = "DLP 412 mGy.cm"
    ds.ContentSequence = [item]
    return ds


def test_stow_of_a_deflated_header_that_inflates_to_1000_mib_fails_and_stores_nothing(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    from scripts.bench import hostile

    content_type, body = multipart([hostile.deflate_bomb()])
    refused = api.request(
        "POST", f"{ROOT_PATH}/studies", token=alice.token, headers={"content-type": content_type}, body=body
    )
    assert refused.status == 409, refused.body
    assert pg.run("SELECT count(*) FROM dicom_instances") == [[0]]
    assert pg.run("SELECT count(*) FROM scans") == [[0]]
