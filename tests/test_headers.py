"""Headers and paths as a client sees them (issue 18): through the Lambda entry points with AWS-exact
events, and through the local gateway over HTTP on the real serverless.yml."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from email.utils import formatdate
from urllib.parse import parse_qsl, urlsplit

import pytest

from scripts.build.serverless_yml import read_serverless_yml
from scripts.dev.localgw import static
from scripts.dev.localgw.events import build_event
from scripts.dev.localgw.server import make_server
from scripts.web import assets as web_assets
from scripts.web.assets import SECURITY_HEADERS
from shared.auth import signing
from tests import images
from tests.conftest import ROOT, User
from tests.lambda_client import ROUTES, LambdaClient, multipart

IMAGE_ROUTE = "/api/v1/scans/image/{scan_id}/{image_type}"


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[tuple[str, int]]:
    """The local gateway on the real serverless.yml and web/, in a thread."""
    server = make_server("127.0.0.1", 0, serverless_yml=ROOT / "serverless.yml", containers=1)
    server.access_log = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def fetch(
    gateway: tuple[str, int],
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*gateway, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def upload(gateway: tuple[str, int], user: User, host: str) -> dict[str, object]:
    body, ctype = multipart({"file": ("scan.png", images.png16(), "image/png")})
    headers = {"Host": host, "Authorization": f"Bearer {user.token}", "Content-Type": ctype}
    status, _, answer = fetch(gateway, "/api/v1/scans/analyze", method="POST", headers=headers, body=body)
    assert status == 201, answer
    loaded: dict[str, object] = json.loads(answer)
    return loaded


# --- an IPv6 literal Host ([::1]:port) ------------------------------------------------------------


def test_an_ipv6_literal_host_reaches_every_kind_of_function_and_names_itself_in_urls(
    gateway: tuple[str, int], pg: object, alice: User
) -> None:
    # Given the gateway's own IPv6 name, as a browser at http://[::1]:port/ sends it
    host = f"[::1]:{gateway[1]}"
    # When Alice uploads (FastAPI behind Mangum) and lists, then follows the signed URL (Starlette)
    scan = upload(gateway, alice, host)
    authorized = {"Host": host, "Authorization": f"Bearer {alice.token}"}
    status, _, listed = fetch(gateway, "/api/v1/scans", headers=authorized)
    image_url = str(scan["results"]["imageUrl"])  # type: ignore[index]
    parts = urlsplit(image_url)
    got = fetch(gateway, f"{parts.path}?{parts.query}", headers={"Host": host})
    # Then each answers as with any other Host (not a 502), and the URLs name the host asked for
    assert status == 200 and json.loads(listed)["items"], listed
    assert image_url.startswith(f"http://{host}/api/v1/scans/image/")
    assert got[0] == 200 and got[2] == images.png16()
    unsigned = fetch(gateway, urlsplit(image_url).path, headers={"Host": host})
    assert unsigned[0] == 401 and json.loads(unsigned[2])["error"]["code"]


@pytest.mark.parametrize("host", ["[::1]:3401", "[::1]", "[2001:db8::7]:8443"])
def test_the_entry_points_take_an_ipv6_literal_host(pg: object, alice: User, host: str) -> None:
    client = LambdaClient(host=host)
    listed = client.request("GET", "/api/v1/scans", token=alice.token)  # FastAPI, lambda_handler
    image = client.request("GET", "/api/v1/scans/image/scan_0123456789abcdef/original", token=alice.token)
    assert listed.status == 200, listed.body
    assert image.status == 404 and image.error_code == "scan_not_found"  # Starlette, lambda_handler_for_base64_bodies


# --- a path that only a redirect would match -----------------------------------------------------


def slashed_events(scan_id: str, query: str) -> list[dict[str, object]]:
    """`…/original%2F?<query>` as an HTTP API event: rawPath as sent, and rawPath decoded (HTTP APIs
    deliver the path decoded), with the path parameter API Gateway would give each."""
    (route,) = [r for r in ROUTES if r.method == "GET" and r.path_template == IMAGE_ROUTE]
    common = {"method": "GET", "raw_query": query, "body": b"", "source_ip": "203.0.113.9", "route": route}
    headers = [("host", "api.example.test"), ("x-forwarded-proto", "https"), ("x-forwarded-port", "443")]
    return [
        build_event(
            raw_path=f"/api/v1/scans/image/{scan_id}/{raw}",
            headers=headers,
            path_params={"scan_id": scan_id, "image_type": "original/"},
            **common,  # type: ignore[arg-type]
        )
        for raw in ("original%2F", "original%2f", "original/")
    ]


def test_an_encoded_slash_after_the_image_type_is_a_404_that_echoes_nothing(api: LambdaClient) -> None:
    # Given a genuine signature for the image, and the same path with an encoded slash after its type
    scan_id = "scan_0123456789abcdef"
    query = signing.signed_query(f"/api/v1/scans/image/{scan_id}/original")
    for event in slashed_events(scan_id, query):
        # When the images function's entry point receives it
        result = api.invoke("images", event)
        # Then it is unknown, as any path no route takes: no redirect carrying the query back
        assert result.status == 404, event["rawPath"]
        assert result.error_code == "not_found"
        assert "location" not in result.headers
        assert "sig=" not in json.dumps(result.raw)
        assert result.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/scans/image/scan_0123456789abcdef/original%2F",
        "/api/v1/scans/image/scan_0123456789abcdef/thumbnail%2f",
        "/api/v1/dicomweb/studies/1.2.3%2F",
        "/api/v1/scans/scan_0123456789abcdef%2F",
    ],
)
def test_through_the_gateway_an_encoded_trailing_slash_is_a_404_that_echoes_nothing(
    gateway: tuple[str, int], path: str
) -> None:
    query = signing.signed_query("/api/v1/scans/image/scan_0123456789abcdef/original")
    status, headers, body = fetch(gateway, f"{path}?{query}")
    assert status == 404, (path, headers)
    assert json.loads(body)["error"]["code"] == "not_found"
    assert "location" not in headers
    assert "sig=" not in body.decode() and not any("sig=" in value for value in headers.values())


# --- what the gateway answers itself: the security headers the deployed CDN adds --------------------


def assert_security_headers(headers: dict[str, str], what: object) -> None:
    for name, value in SECURITY_HEADERS:
        assert headers.get(name.lower()) == value, (what, name, headers)


OWN_REQUESTS = [
    ("GET", "/nothing-here.txt", {}, b"", 404),
    ("GET", "/api/v1/no-such-route", {}, b"", 404),
    ("DELETE", "/docs", {}, b"", 404),
    ("GET", "/openapi.json", {}, b"", 200),
    ("HEAD", "/openapi.json", {}, b"", 200),
    ("GET", "/docs", {}, b"", 200),
    ("GET", "/docs/", {}, b"", 200),
    ("GET", "/docs/docs.js", {}, b"", 200),
    ("GET", "/api/v1/scans", {"Host": "evil.example"}, b"", 400),
    ("GET", "/api/v1/scans", {"X-Big": "a" * 11_000}, b"", 431),
    ("POST", "/api/v1/scans/analyze", {"Content-Length": "11000000", "Expect": "100-continue"}, b"", 413),
    (
        "OPTIONS",
        "/api/v1/scans",
        {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET"},
        b"",
        204,
    ),
    ("OPTIONS", "/api/v1/scans", {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "GET"}, b"", 204),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status"), OWN_REQUESTS)
def test_everything_the_gateway_answers_itself_carries_the_security_headers(
    gateway: tuple[str, int], method: str, path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    got, answered, _ = fetch(gateway, path, method=method, headers=headers, body=body)
    assert got == status, (method, path)
    assert_security_headers(answered, (method, path))


def test_the_gateway_own_malformed_request_answer_carries_the_security_headers(gateway: tuple[str, int]) -> None:
    with socket.create_connection(gateway, timeout=10) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400
        assert_security_headers({k.lower(): v for k, v in response.getheaders()}, "malformed")


@pytest.mark.parametrize("swagger", [True, False])
def test_docs_page_loads_its_script_and_style_as_files_under_the_csp(
    swagger: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the page as served with Swagger UI's files installed (requirements-dev.txt), and without them
    if swagger and static._swagger_dir() is None:
        pytest.skip("swagger-ui-bundle is not installed")
    if not swagger:
        monkeypatch.setattr(static, "_swagger_dir", lambda: None)
    docs = static.Docs(ROOT)
    status, headers, page = docs.answer("GET", "/docs") or (0, [], b"")
    # Then the page has no inline script, style or handler, and every file it names is served
    html = page.decode()
    assert status == 200 and dict(headers)["Content-Security-Policy"] == web_assets.CONTENT_SECURITY_POLICY
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), html
    assert "<style" not in html and not re.search(r"\son[a-z]+=", html) and " style=" not in html
    for linked in re.findall(r'(?:src|href)="([^"]+)"', html):
        if swagger or not linked.startswith("/docs/swagger"):
            answer = docs.answer("GET", linked)
            assert answer is not None and answer[0] == 200, linked
            assert_security_headers({k.lower(): v for k, v in answer[1]}, linked)


# --- signed images: CloudFront caches by s-maxage, viewers get `private` ------------------------------


def images_viewer_policy() -> dict[str, object]:
    """The response headers policy infra/web.yml attaches to the signed image route's behaviour."""
    resources = read_serverless_yml(ROOT / "infra" / "web.yml")["Resources"]
    config = resources["WebDistribution"]["Properties"]["DistributionConfig"]
    (behaviour,) = [b for b in config["CacheBehaviors"] if b["PathPattern"] == "/api/v1/scans/image/*"]
    policy: dict[str, object] = resources[behaviour["ResponseHeadersPolicyId"]["Ref"]]["Properties"]
    return policy


def test_the_signed_image_route_gives_viewers_private_in_place_of_the_origins_cache_control() -> None:
    items = images_viewer_policy()["ResponseHeadersPolicyConfig"]["CustomHeadersConfig"]["Items"]  # type: ignore[index]
    (cache_control,) = [item for item in items if item["Header"].lower() == "cache-control"]
    assert cache_control == {"Header": "Cache-Control", "Value": "private", "Override": True}


def test_through_the_gateway_a_signed_image_is_private_until_its_signature_ends(
    gateway: tuple[str, int], pg: object, alice: User
) -> None:
    # Given a signed URL of Alice's scan
    scan = upload(gateway, alice, f"127.0.0.1:{gateway[1]}")
    parts = urlsplit(str(scan["results"]["imageUrl"]))  # type: ignore[index]
    exp = int(dict(parse_qsl(parts.query))["exp"])
    # When a browser loads it, and asks again with its ETag
    status, headers, body = fetch(gateway, f"{parts.path}?{parts.query}")
    again = fetch(gateway, f"{parts.path}?{parts.query}", headers={"If-None-Match": headers["etag"]})
    unsigned = fetch(gateway, parts.path)
    # Then it gets what CloudFront's viewers get: private, fresh until the signature's end, never s-maxage
    assert (status, body) == (200, images.png16())
    for got in (headers, again[1], unsigned[1]):
        assert got["cache-control"] == "private", got
    assert again[0] == 304 and unsigned[0] == 401
    assert headers["expires"] == again[1]["expires"] == formatdate(exp, usegmt=True)
    # And elsewhere the function's own Cache-Control passes through
    listed = fetch(gateway, "/api/v1/scans", headers={"Authorization": f"Bearer {alice.token}"})
    assert listed[0] == 200 and listed[1]["cache-control"] == "no-store"


# --- request bodies: decoded by pybase64, byte for byte what Mangum decodes -------------------------


@pytest.mark.parametrize(
    ("body", "is_base64"),
    [
        ("", True),
        (None, True),
        ("aGVsbG8=", True),
        (b"aGVsbG8=", True),
        ("aGVs\nbG8=", True),  # a line break: skipped, as the standard library's b64decode skips it
        ("hello", False),
        ("héllo", False),
        (b"\x00\xff", False),
        (None, False),
    ],
)
def test_the_entry_point_reads_a_body_as_mangum_does(body: object, is_base64: bool) -> None:
    from mangum.handlers.utils import maybe_encode_body

    from shared.http.entry import HttpApiEvents

    # Given an HTTP API event with this body, as API Gateway marks it
    event = {"version": "2.0", "body": body, "isBase64Encoded": is_base64}
    # When our handler reads it (pybase64), and Mangum's own way (the standard library) does
    config = {"api_gateway_base_path": "/", "text_mime_types": [], "exclude_headers": []}
    ours = HttpApiEvents(event, None, config).body  # type: ignore[arg-type]
    # Then both read the same bytes
    assert ours == maybe_encode_body(body or b"", is_base64=is_base64)  # type: ignore[arg-type]


def test_a_large_uploaded_body_arrives_whole(pg: object, alice: User) -> None:
    # Given a noisy 1024x1024 16-bit PNG (~2 MB), which API Gateway hands the function as base64
    data = images.png16(1024, seed=11)
    body, content_type = multipart({"file": ("big.bin", data, "application/octet-stream")})
    # When it is uploaded through the entry point, its body decoded by pybase64
    result = LambdaClient().request(
        "POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": content_type}
    )
    # Then the upload function read the very bytes: the PNG decodes, and the original stored is the file
    assert result.status == 201, result.body
    original = LambdaClient().request(
        "GET", f"/api/v1/scans/image/{result.json()['scanId']}/original", token=alice.token
    )
    assert original.body == data
