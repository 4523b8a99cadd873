"""GET /api/v1/scans, GET and DELETE /api/v1/scans/{scan_id}."""

from __future__ import annotations

import pg8000.native
import pytest

from shared.db.scans import SELECT_SCAN, SELECT_SCANS_FIRST_PAGE, SELECT_SCANS_NEXT_PAGE
from tests import images
from tests.conftest import User
from tests.lambda_client import LambdaClient, multipart


def upload(api: LambdaClient, user: User, seed: int) -> str:
    body, ctype = multipart({"file": (f"scan-{seed}.png", images.png8(size=96, regions=(), seed=seed), "image/png")})
    result = api.request("POST", "/api/v1/scans/analyze", token=user.token, body=body, headers={"content-type": ctype})
    assert result.status == 201, result.body
    scan_id: str = result.json()["scanId"]
    return scan_id


def test_list_is_newest_first_and_paginates_with_a_cursor(api: LambdaClient, alice: User, bob: User) -> None:
    ids = [upload(api, alice, seed) for seed in range(5)]
    upload(api, bob, 99)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.request("GET", "/api/v1/scans", token=alice.token, query=query).json()
        pages += 1
        seen += [item["scanId"] for item in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break

    assert seen == list(reversed(ids))
    assert pages == 3


def test_list_filters_dicom_files_or_png_and_jpeg_and_pages_within_the_filter(api: LambdaClient, alice: User) -> None:
    from scripts.dev import phantom

    pngs = [upload(api, alice, seed) for seed in range(3)]
    dicoms = []
    for index, ds in enumerate(phantom.ct_series(2, size=64, seed=301)):
        body, ctype = multipart({"file": (f"slice-{index}.dcm", phantom.dicom_bytes(ds), "application/dicom")})
        result = api.request(
            "POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype}
        )
        assert result.status == 201, result.body
        dicoms.append(result.json()["scanId"])

    def listed(kind: str) -> list[str]:
        seen, cursor = [], None
        while True:
            query = f"limit=2&dicom={kind}" + (f"&cursor={cursor}" if cursor else "")
            page = api.request("GET", "/api/v1/scans", token=alice.token, query=query).json()
            seen += [item["scanId"] for item in page["items"]]
            if not (cursor := page["nextCursor"]):
                return seen

    assert listed("false") == list(reversed(pngs))
    assert listed("true") == list(reversed(dicoms))
    everything = api.request("GET", "/api/v1/scans", token=alice.token, query="limit=100").json()["items"]
    assert len(everything) == 5
    assert api.request("GET", "/api/v1/scans", token=alice.token, query="dicom=maybe").status == 422


def test_list_items_carry_metadata_and_urls(api: LambdaClient, alice: User) -> None:
    scan_id = upload(api, alice, 1)
    item = api.request("GET", "/api/v1/scans", token=alice.token).json()["items"][0]
    assert item["scanId"] == scan_id
    assert item["filename"] == "scan-1.png"
    assert (item["width"], item["height"]) == (96, 96)
    assert item["findingsCount"] == 0
    original = api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=alice.token).body
    assert item["fileSize"] == len(original)
    assert api.request("GET", f"/api/v1/scans/{scan_id}", token=alice.token).json()["fileSize"] == len(original)
    url, _, query = item["thumbnailUrl"].partition("?")
    assert url.endswith(f"/api/v1/scans/image/{scan_id}/thumbnail")
    assert query.startswith("exp=") and "&kid=" in query and "&sig=" in query


def test_image_urls_are_signed_and_identical_across_listings_and_get_one(api: LambdaClient, alice: User) -> None:
    scan_id = upload(api, alice, 1)
    first = api.request("GET", "/api/v1/scans", token=alice.token).json()["items"][0]
    second = api.request("GET", "/api/v1/scans", token=alice.token).json()["items"][0]
    one = api.request("GET", f"/api/v1/scans/{scan_id}", token=alice.token).json()["results"]

    keys = ("imageUrl", "previewUrl", "annotatedImageUrl", "thumbnailUrl")
    # Byte-identical within the expiry bucket, so browser caches keep working.
    assert [first[k] for k in keys] == [second[k] for k in keys] == [one[k] for k in keys]
    path, _, query = first["imageUrl"].partition("?")
    result = api.request("GET", path.removeprefix("https://api.example.test"), query=query)
    assert result.status == 200  # no token: the signature is enough


def test_list_queries_never_read_image_columns() -> None:
    # octet_length() of a TOAST-ed value reads its pointer, not its bytes: the one use allowed.
    for sql in (SELECT_SCANS_FIRST_PAGE, SELECT_SCANS_NEXT_PAGE, SELECT_SCAN):
        assert "image_data" not in sql.replace("octet_length(original_image_data)", "")


@pytest.mark.parametrize(
    ("query", "status"),
    [("limit=0", 422), ("limit=101", 422), ("limit=abc", 422), ("cursor=bm90LWEtY3Vyc29y", 422), ("cursor=%%%", 422)],
)
def test_list_bad_parameters_are_4xx(api: LambdaClient, alice: User, query: str, status: int) -> None:
    result = api.request("GET", "/api/v1/scans", token=alice.token, query=query)
    assert result.status == status
    assert result.json()["error"]["message"]


def test_get_one_scan_returns_metadata_and_results(api: LambdaClient, alice: User, bob: User) -> None:
    scan_id = upload(api, alice, 2)

    mine = api.request("GET", f"/api/v1/scans/{scan_id}", token=alice.token)
    theirs = api.request("GET", f"/api/v1/scans/{scan_id}", token=bob.token)

    assert mine.status == 200
    assert mine.json()["scanId"] == scan_id
    assert mine.json()["results"]["findings"] == []
    assert theirs.status == 404


def test_delete_removes_the_scan_and_its_images(
    api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection
) -> None:
    scan_id = upload(api, alice, 3)

    assert api.request("DELETE", f"/api/v1/scans/{scan_id}", token=bob.token).status == 404
    assert pg.run("SELECT count(*) FROM scans")[0][0] == 1

    deleted = api.request("DELETE", f"/api/v1/scans/{scan_id}", token=alice.token)
    assert deleted.status == 204
    assert deleted.body == b""
    assert api.request("GET", f"/api/v1/scans/{scan_id}", token=alice.token).status == 404
    assert api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=alice.token).status == 404
    assert api.request("DELETE", f"/api/v1/scans/{scan_id}", token=alice.token).status == 404
    assert pg.run("SELECT count(*) FROM scans")[0][0] == 0


def test_scan_routes_require_a_token(api: LambdaClient, alice: User) -> None:
    scan_id = upload(api, alice, 4)
    for method, route in (
        ("GET", "/api/v1/scans"),
        ("GET", f"/api/v1/scans/{scan_id}"),
        ("DELETE", f"/api/v1/scans/{scan_id}"),
    ):
        result = api.request(method, route)
        assert result.status == 401, route
        assert result.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "/api/v1/scans/scan_%00abcdefghijklmnop"),
        ("DELETE", "/api/v1/scans/scan_%00abcdefghijklmnop"),
        ("GET", "/api/v1/scans/image/scan_%00abcdefghijklmnop/original"),
    ],
)
def test_nul_in_an_id_is_a_400_not_a_500(api: LambdaClient, alice: User, method: str, route: str) -> None:
    result = api.request(method, route, token=alice.token)
    assert result.status == 400
    assert result.error_code == "invalid_request"


def test_json_with_scan_data_is_never_cached_and_never_sniffed(api: LambdaClient, alice: User) -> None:
    listing = api.request("GET", "/api/v1/scans", token=alice.token)
    denied = api.request("GET", "/api/v1/scans")

    for result in (listing, denied):
        assert result.headers["cache-control"] == "no-store"
        assert result.headers["x-content-type-options"] == "nosniff"


def test_a_204_carries_no_content_type(api: LambdaClient, alice: User) -> None:
    body, ctype = multipart({"file": ("scan.png", images.png8(size=64, regions=()), "image/png")})
    scan_id = api.request(
        "POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype}
    ).json()["scanId"]

    deleted = api.request("DELETE", f"/api/v1/scans/{scan_id}", token=alice.token)

    assert deleted.status == 204
    assert "content-type" not in deleted.headers and deleted.body == b""
    assert deleted.headers["x-content-type-options"] == "nosniff"
