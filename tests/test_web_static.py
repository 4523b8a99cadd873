"""The web app's files and how the local gateway serves them; no browser needed (tests/test_web.py
drives one)."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.dev.localgw.server import make_server
from scripts.web import assets as web_assets
from scripts.web import vendor as vendor_web
from tests.conftest import ROOT

WEB = ROOT / "web"
FIRST_LOAD_LIMIT = 150_000  # bytes: the budget for the page, its scripts and styles
# What web/js/dicomweb.js imports with import() for frames that come as JPEG Lossless SV1.
LOSSLESS_DECODER = "vendor/jpeg-lossless-decoder-js-2.1.2/lossless.js"


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, int]]:
    """The gateway for the real serverless.yml and web/; only static files are asked for here, so
    no handler (and no database) is ever touched."""
    server = make_server("127.0.0.1", 0, serverless_yml=ROOT / "serverless.yml", containers=1)
    server.access_log = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def fetch(
    gateway: tuple[str, int], path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*gateway, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# --- the files ------------------------------------------------------------------------------------


def test_web_vendor_is_the_lockfiles_packages() -> None:
    versions = vendor_web.locked_versions()
    folders = sorted(p.name for p in (WEB / "vendor").iterdir() if p.is_dir())
    assert folders == sorted(f"{name}-{version}" for name, version in versions.items())
    if not (ROOT / "node_modules" / "preact").is_dir():
        pytest.skip("node_modules not installed (npm ci): the vendored bytes were not compared")
    assert vendor_web.differences(vendor_web.expected()) == []


def test_web_vendor_rewrite_changes_only_the_bare_import() -> None:
    original = b'import{options as n}from"preact";var t;'
    assert vendor_web.vendored_bytes("preact", "hooks/dist/hooks.mjs", original) == (
        b'import{options as n}from"./preact.mjs";var t;'
    )
    assert vendor_web.vendored_bytes("htm", "dist/htm.mjs", original) == original
    with pytest.raises(SystemExit, match="exactly one"):
        vendor_web.vendored_bytes("preact", "hooks/dist/hooks.mjs", b"no import here")


def test_web_modules_import_only_files_of_web() -> None:
    # No bare specifier (a browser would need an import map, an inline script the CSP forbids) and
    # nothing from another origin: every import resolves to a file in web/.
    for module in [*WEB.glob("js/*.js"), *WEB.glob("vendor/*/*.mjs"), *WEB.glob("vendor/*/*.js")]:
        for specifier in web_assets.module_imports(module.read_text(encoding="utf-8")):
            assert specifier.startswith(("./", "../")), f"{module.relative_to(ROOT)} imports {specifier!r}"
            assert (module.parent / specifier).resolve().is_file(), f"{module.relative_to(ROOT)}: {specifier}"


def test_web_index_preloads_the_whole_module_graph_and_nothing_else() -> None:
    # Without a bundler, each import level would be another round trip; modulepreload fetches the
    # graph at once. A module added without its preload line (or a dead one) fails here.
    index = (WEB / "index.html").read_text(encoding="utf-8")
    preloaded = set(re.findall(r'<link rel="modulepreload" href="([^"]+)">', index))
    entry = re.findall(r'<script type="module" src="([^"]+)"></script>', index)
    graph = {f for f in web_assets.first_load_files() if f.endswith((".js", ".mjs"))}
    assert entry == ["js/main.js"]
    assert preloaded | set(entry) == graph
    assert {p.relative_to(WEB).as_posix() for p in WEB.glob("js/*.js")} <= graph, "a module nothing imports"


def test_web_page_has_no_inline_script_or_style() -> None:
    # The Content-Security-Policy (here and deployed) allows scripts and styles from files only.
    for page in WEB.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", text)), page.name
        assert "<style" not in text and " style=" not in text, page.name
        assert not re.search(r"\son[a-z]+=", text), f"{page.name}: inline event handler"


def test_web_first_load_is_under_150_kb() -> None:
    sizes = {name: (WEB / name).stat().st_size for name in web_assets.first_load_files()}
    assert sum(sizes.values()) < FIRST_LOAD_LIMIT, sizes


def test_web_jpeg_lossless_decoder_is_vendored_as_a_module_outside_the_first_load() -> None:
    source = (WEB / "js" / "dicomweb.js").read_text(encoding="utf-8")
    (specifier,) = re.findall(r'const DECODER_MODULE = "([^"]+)";', source)
    assert "import(DECODER_MODULE)" in source
    resolved = (WEB / "js" / specifier).resolve()
    assert resolved == (WEB / LOSSLESS_DECODER).resolve() and resolved.is_file()
    # MIT (package.json "license"): its LICENSE is the MIT grant under the RII-UTHSCSA copyright.
    assert "Permission is hereby granted, free of charge" in (resolved.parent / "LICENSE").read_text(encoding="utf-8")
    # An ES module that exports Decoder and imports nothing: import() under script-src 'self' loads it alone.
    module = resolved.read_text(encoding="utf-8")
    assert re.search(r"export \{[^}]*\bDecoder\b", module) and web_assets.module_imports(module) == []
    assert LOSSLESS_DECODER not in web_assets.first_load_files()
    assert web_assets.cache_control(LOSSLESS_DECODER) == web_assets.IMMUTABLE


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="no node here to run the viewer's module")
def test_viewer_fetch_frame_decodes_the_servers_jpeg_lossless_to_pydicoms_values(tmp_path: Path) -> None:
    # Given JPEG Lossless SV1 frames as the server sends them (shared.imaging and shared.dicomweb.media):
    # signed 16-bit, signed 12-bit, 8 bits stored in 16, 12 of 16 (the chest CR's kind), and 8-bit
    import pydicom

    import shared.imaging.dicom  # noqa: F401  (pydicom's JPEG Lossless plugin, to read the stored values)
    from scripts.dev import phantom
    from shared import imaging
    from shared.dicomweb import media

    datasets = {
        "signed16": pydicom.dcmread(str(pydicom.data.get_testdata_file("CT_small.dcm"))),
        "signed12": phantom.ct_slice_dataset(size=32, signed=True, intercept=0.0, seed=5),
        "bits8in16": phantom.ct_slice_dataset(size=32, bits_stored=8, slope=16.0, seed=3),
        "cr12": phantom.chest_cr_dataset(columns=64, rows=80),
        "bits8": pydicom.dcmread(str(pydicom.data.get_testdata_file("OBXXXX1A.dcm"))),
    }
    cases = {}
    for name, ds in datasets.items():
        (bitstream,) = imaging.encode_dicom_frames_lossless(phantom.dicom_bytes(ds), frame_indices=[0])
        content_type, body = media.write_multipart_related(
            [(media.LOSSLESS_FRAMES.part_content_type, bitstream)], type_parameter=media.OCTET_STREAM
        )
        (tmp_path / f"{name}.body").write_bytes(body)
        image = {
            "rows": int(ds.Rows),
            "columns": int(ds.Columns),
            "samples": 1,
            "bitsAllocated": int(ds.BitsAllocated),
            "bitsStored": int(ds.BitsStored),
            "signed": int(ds.PixelRepresentation) == 1,
        }
        cases[name] = {"contentType": content_type, "image": image, "expected": ds.pixel_array.ravel().tolist()}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = f"""
        import {{ readFileSync }} from "node:fs";
        const {{ fetchFrame }} = await import({json.dumps((WEB / "js" / "dicomweb.js").as_uri())});
        const cases = JSON.parse(readFileSync({json.dumps(str(tmp_path / "cases.json"))}, "utf8"));
        const result = {{}};
        for (const [name, c] of Object.entries(cases)) {{
          const body = readFileSync({json.dumps(str(tmp_path))} + "/" + name + ".body");
          const buffer = body.buffer.slice(body.byteOffset, body.byteOffset + body.length);
          const values = await fetchFrame(async () => ({{ buffer, contentType: c.contentType }}), "/x", c.image, 1);
          result[name] = {{ type: values.constructor.name, same: values.length === c.expected.length
            && c.expected.every((v, i) => values[i] === v) }};
        }}
        console.log(JSON.stringify(result));
    """

    # When the viewer's fetchFrame reads them (it imports the vendored decoder on demand)
    run = subprocess.run(
        [str(NODE), "--no-warnings", "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    # Then every frame is pydicom's pixel_array, signed ones sign-extended from Bits Stored
    result = json.loads(run.stdout)
    assert {name: found["same"] for name, found in result.items()} == dict.fromkeys(datasets, True), result
    assert result["signed16"]["type"] == result["signed12"]["type"] == "Int16Array"
    assert result["bits8in16"]["type"] == result["cr12"]["type"] == "Uint16Array"
    assert result["bits8"]["type"] == "Uint8Array"


def test_web_first_load_files_refuse_references_outside_web(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<script type="module" src="../secret.js"></script>')
    with pytest.raises(ValueError, match="leaves web"):
        web_assets.first_load_files(tmp_path)
    (tmp_path / "index.html").write_text('<script src="https://cdn.example/x.js"></script>')
    with pytest.raises(ValueError, match="not a relative URL"):
        web_assets.first_load_files(tmp_path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("index.html", web_assets.NO_CACHE),
        ("config.json", web_assets.NO_CACHE),
        ("js/app.js", web_assets.NO_CACHE),
        ("app.css", web_assets.NO_CACHE),
        ("vendor/preact-11.2.0/preact.mjs", web_assets.IMMUTABLE),
        ("vendor/htm-3.1.1/htm.mjs", web_assets.IMMUTABLE),
        ("vendor/unversioned/x.mjs", web_assets.NO_CACHE),
    ],
)
def test_web_cache_control_is_immutable_only_for_versioned_vendor_files(path: str, expected: str) -> None:
    assert web_assets.cache_control(path) == expected


# --- served by the local gateway ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "file", "content_type"),
    [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/index.html", "index.html", "text/html; charset=utf-8"),
        ("/app.css", "app.css", "text/css; charset=utf-8"),
        ("/js/main.js", "js/main.js", "text/javascript; charset=utf-8"),
        ("/vendor/preact-11.2.0/preact.mjs", "vendor/preact-11.2.0/preact.mjs", "text/javascript; charset=utf-8"),
        # The JPEG Lossless decoder, imported with import(): a module script needs a JavaScript type.
        (f"/{LOSSLESS_DECODER}", LOSSLESS_DECODER, "text/javascript; charset=utf-8"),
        ("/icon.svg", "icon.svg", "image/svg+xml"),
    ],
)
def test_gateway_serves_web_files_with_type_cache_etag_and_security_headers(
    gateway: tuple[str, int], path: str, file: str, content_type: str
) -> None:
    data = (WEB / file).read_bytes()
    status, headers, body = fetch(gateway, path)
    assert (status, body) == (200, data)
    assert headers["content-type"] == content_type
    assert headers["cache-control"] == web_assets.cache_control(file)
    assert headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == web_assets.CONTENT_SECURITY_POLICY
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"


def test_gateway_csp_allows_only_this_origin(gateway: tuple[str, int]) -> None:
    csp = fetch(gateway, "/")[1]["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert directives["img-src"] == "'self' data: blob:"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp and "http" not in csp


@pytest.mark.parametrize(
    ("environ", "origin"),
    [
        (
            {"IMAGES_BUCKET": "ctscan-dev-images", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5055/", "AWS_REGION": "x"},
            "http://127.0.0.1:5055",
        ),
        ({"IMAGES_BUCKET": "ctscan-dev-images", "AWS_REGION": "eu-central-1"}, None),
    ],
)
def test_gateway_csp_with_an_images_bucket_allows_its_origin_for_posts_and_redirected_images(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], origin: str | None
) -> None:
    origin = origin or "https://ctscan-dev-images.s3.eu-central-1.amazonaws.com"
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    server = make_server("127.0.0.1", 0, serverless_yml=ROOT / "serverless.yml", containers=1)
    server.access_log = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        csp = fetch(("127.0.0.1", server.server_address[1]), "/")[1]["content-security-policy"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["connect-src"] == f"'self' {origin}"
    assert directives["img-src"] == f"'self' data: blob: {origin}"
    # Everything else as without a bucket
    plain = dict(d.strip().split(" ", 1) for d in web_assets.CONTENT_SECURITY_POLICY.split(";"))
    assert {k: v for k, v in directives.items() if k not in ("connect-src", "img-src")} == {
        k: v for k, v in plain.items() if k not in ("connect-src", "img-src")
    }
    assert directives.keys() == plain.keys()


def test_csp_without_an_images_bucket_is_the_plain_policy() -> None:
    environ = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5055", "AWS_REGION": "eu-central-1", "IMAGES_BUCKET": ""}
    assert web_assets.security_headers(environ) == web_assets.SECURITY_HEADERS


def test_gateway_answers_304_to_a_matching_etag_and_200_to_another(gateway: tuple[str, int]) -> None:
    _, headers, _ = fetch(gateway, "/js/app.js")
    status, again, body = fetch(gateway, "/js/app.js", headers={"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")
    assert again["etag"] == headers["etag"] and again["cache-control"] == "no-cache"
    assert "content-security-policy" in again
    status, _, body = fetch(gateway, "/js/app.js", headers={"If-None-Match": '"something-else"'})
    assert status == 200 and body


def test_gateway_head_sends_the_headers_of_get_without_body(gateway: tuple[str, int]) -> None:
    status, headers, body = fetch(gateway, "/", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len((WEB / "index.html").read_bytes()))


def test_gateway_generates_config_json_for_this_origin(gateway: tuple[str, int]) -> None:
    status, headers, body = fetch(gateway, "/config.json")
    assert status == 200 and json.loads(body) == {"apiBaseUrl": ""}
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/../serverless.yml",
        "/%2e%2e/serverless.yml",
        "/js/..%2f..%2fserverless.yml",
        "/js/%2e%2e/%2e%2e/README.md",
        "/vendor/preact-11.2.0/LICENSE",  # a kind of file we do not serve
        "/.gitignore",
        "/js//app.js",
        "/js/app.js%00.css",
        "/js/missing.js",
        "/js",
        "/api/v1/nothing-here",
        "/api",
    ],
)
def test_gateway_serves_nothing_outside_web_and_no_page_under_api(gateway: tuple[str, int], path: str) -> None:
    status, headers, body = fetch(gateway, path)
    assert status == 404
    assert headers["content-type"] == "application/json" and json.loads(body)["error"]["code"] == "not_found"


def test_gateway_serves_web_files_to_get_and_head_only(gateway: tuple[str, int]) -> None:
    status, _, body = fetch(gateway, "/", method="POST")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_gateway_api_routes_still_win_over_web_files(gateway: tuple[str, int]) -> None:
    status, headers, body = fetch(gateway, "/api/v1/scans")
    assert status == 401 and json.loads(body)["error"]["code"] == "not_authenticated"
    assert "content-security-policy" not in headers


def test_gateway_without_a_web_folder_serves_no_page(tmp_path: Path) -> None:
    yml = tmp_path / "serverless.yml"
    yml.write_text("functions: {}\n")
    server = make_server("127.0.0.1", 0, serverless_yml=yml, containers=1)
    server.access_log = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = ("127.0.0.1", server.server_address[1])
        assert fetch(address, "/")[0] == 404
        assert fetch(address, "/config.json")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_gateway_compresses_text_as_cloudfront_does_with_a_weak_etag(gateway: tuple[str, int]) -> None:
    """CloudFront compresses the page's files (infra/web.yml, Compress: true) for a viewer that takes
    gzip, text types from 1,000 bytes, and makes the ETag weak; the local gateway answers the same."""
    data = (WEB / "js/viewer.js").read_bytes()
    strong = f'"{hashlib.sha256(data).hexdigest()}"'
    status, headers, body = fetch(gateway, "/js/viewer.js", headers={"Accept-Encoding": "gzip, deflate"})
    assert status == 200
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == data and len(body) < len(data) / 2
    assert headers["etag"] == f"W/{strong}"
    assert headers["content-security-policy"] == web_assets.CONTENT_SECURITY_POLICY
    # Either form of the tag revalidates (If-None-Match compares weakly)
    for tag in (f"W/{strong}", strong):
        status, _, body = fetch(gateway, "/js/viewer.js", headers={"Accept-Encoding": "gzip", "If-None-Match": tag})
        assert (status, body) == (304, b""), tag
    # Without gzip in Accept-Encoding (or refused with q=0): the file as it is, with its strong tag
    for accept in (None, "identity", "gzip;q=0, identity"):
        status, headers, body = fetch(gateway, "/js/viewer.js", headers={"Accept-Encoding": accept} if accept else {})
        assert (status, body, headers["etag"]) == (200, data, strong), accept
        assert "content-encoding" not in headers and headers["vary"] == "Accept-Encoding"
    # Not a PNG (compressed already), nor a file under 1,000 bytes
    small = min((p for p in (WEB / "js").glob("*.js")), key=lambda p: p.stat().st_size)
    assert small.stat().st_size < 1_000
    _, headers, body = fetch(gateway, f"/js/{small.name}", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in headers and body == small.read_bytes()
