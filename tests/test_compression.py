"""Migration 009: an uncompressed DICOM original is stored lz4-compressed where the server has lz4,
and is served byte for byte as uploaded, whole and by Range, through the real handlers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import pytest
from pydicom.data import get_testdata_file

from shared.http import image_cache as image_cache_module
from tests import images
from tests.conftest import User
from tests.lambda_client import LambdaClient, Result, multipart

ANALYZE = "/api/v1/scans/analyze"


def server_has_lz4(pg: pg8000.native.Connection) -> bool:
    values = pg.run("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")[0][0]
    return "lz4" in values


def real_ct_slice() -> bytes:
    """A real 512x512 CT slice, uncompressed (pydicom-data, a development requirement)."""
    path = get_testdata_file("693_UNCR.dcm")
    assert path is not None, "pydicom-data is not installed"
    return Path(str(path)).read_bytes()


def upload(api: LambdaClient, user: User, data: bytes, filename: str, ctype: str) -> str:
    body, content_type = multipart({"file": (filename, data, ctype)})
    result = api.request("POST", ANALYZE, token=user.token, body=body, headers={"content-type": content_type})
    assert result.status == 201, result.body
    return str(result.json()["scanId"])


def get_original(api: LambdaClient, user: User, scan_id: str, range_header: str | None = None) -> Result:
    headers = {"range": range_header} if range_header else None
    return api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=user.token, headers=headers)


def stored(pg: pg8000.native.Connection, scan_id: str) -> tuple[int, int, str | None]:
    """(bytes on disk, bytes of the value, compression method) of a scan's stored original."""
    row = pg.run(
        "SELECT pg_column_size(original_image_data), octet_length(original_image_data), "
        "pg_column_compression(original_image_data) FROM scans WHERE id = :id",
        id=scan_id,
    )[0]
    return int(row[0]), int(row[1]), row[2]


@pytest.fixture
def no_image_cache(settings_env: pytest.MonkeyPatch) -> Iterator[None]:
    # Every read comes from PostgreSQL (the stored, possibly compressed value), never from memory.
    settings_env.setenv("IMAGE_CACHE_MB", "0")
    image_cache_module.reset()
    yield
    image_cache_module.reset()  # the next test's cache is sized from its own settings, not this 0


def test_uncompressed_dicom_is_stored_compressed_and_served_byte_identical(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, no_image_cache: None
) -> None:
    data = real_ct_slice()
    sha256 = hashlib.sha256(data).hexdigest()
    scan_id = upload(api, alice, data, "ct.dcm", "application/dicom")

    on_disk, size, method = stored(pg, scan_id)
    assert size == len(data)
    if server_has_lz4(pg):
        assert method == "lz4"
        assert on_disk < 0.6 * len(data)  # measured: 52 %
    else:  # the column stays EXTERNAL: out of line, uncompressed
        assert method is None
        assert on_disk == len(data)

    whole = get_original(api, alice, scan_id)
    assert whole.status == 200
    assert whole.body == data
    assert hashlib.sha256(whole.body).hexdigest() == sha256
    assert whole.headers["etag"] == f'"{sha256}"'
    # Ranges near the end (the costliest on a compressed value: it is decompressed from its start),
    # in the middle, a suffix, and one across the end of the first TOAST chunk.
    for start, end in ((size - 66_536, size - 1001), (200_000, 265_535), (1990, 2010), (0, 0)):
        part = get_original(api, alice, scan_id, f"bytes={start}-{end}")
        assert part.status == 206
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert part.body == data[start : end + 1]
    suffix = get_original(api, alice, scan_id, "bytes=-65536")
    assert suffix.status == 206
    assert suffix.body == data[-65536:]
    assert hashlib.sha256(whole.body[: size - 65536] + suffix.body).hexdigest() == sha256


def test_a_jpeg_original_does_not_compress_and_is_stored_raw(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, no_image_cache: None
) -> None:
    data = images.jpeg(512)
    scan_id = upload(api, alice, data, "ct.jpg", "image/jpeg")

    on_disk, size, method = stored(pg, scan_id)
    assert (size, method) == (len(data), None)  # lz4 tried and kept the raw bytes
    assert on_disk == len(data)
    result = get_original(api, alice, scan_id)
    assert result.status == 200
    assert result.body == data


def test_only_the_original_column_is_compressed(pg: pg8000.native.Connection) -> None:
    rows = pg.run(
        "SELECT attname, attstorage, attcompression FROM pg_attribute "
        "WHERE attrelid = 'scans'::regclass AND attname LIKE '%image_data' ORDER BY attname"
    )
    found = {name: (storage, compression) for name, storage, compression in rows}
    lz4 = server_has_lz4(pg)
    assert found == {
        "annotated_image_data": ("e", ""),
        "original_image_data": ("x", "l") if lz4 else ("e", ""),
        "preview_image_data": ("e", ""),
        "thumbnail_image_data": ("e", ""),
    }
