"""DICOMweb's HTTP media (shared/dicomweb/media.py): multipart/related read and written, Accept
negotiated, against what dicomweb-client (driven for real, its HTTP calls replaced) and OHIF's
Cornerstone loader send and read. No database."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from shared.core.errors import InvalidRequest, UnsupportedMediaType
from shared.dicomweb import media
from shared.dicomweb.media import MediaRange, Representation
from tests.conftest import ROOT

EVRLE = media.EXPLICIT_VR_LITTLE_ENDIAN
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def multipart(*parts: bytes, boundary: str = BOUNDARY, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A body framed by hand: each part already holds its header block."""
    delimiters = [b"\r\n--" + boundary.encode() + b"\r\n" + part for part in parts]
    return preamble + b"".join(delimiters) + b"\r\n--" + boundary.encode() + b"--" + epilogue


def dicom_file(seed: int = 0, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A small CT instance as a PS3.10 file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(seed)])
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 1
    ds.PixelData = bytes(range(seed, seed + 8))
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --- Reading ------------------------------------------------------------------------------------


def test_read_multipart_related_reads_back_what_write_wrote_as_views_into_the_body() -> None:
    contents = [b"first", b"", memoryview(b"third \r\n with a line break\r\n"), bytes(range(256)) * 40]
    content_type, body = media.write_multipart_related(
        [("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", c) for c in contents],
        type_parameter="application/octet-stream",
    )

    type_parameter, parts = media.read_multipart_related(body, content_type)

    assert type_parameter == "application/octet-stream"
    assert [bytes(part.body) for part in parts] == [bytes(c) for c in contents]
    assert {part.content_type for part in parts} == {"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"}
    assert all(isinstance(part.body, memoryview) and part.body.obj is body for part in parts)


def test_read_multipart_related_reads_dicomweb_clients_stow_rs_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given dicomweb-client's store_instances, its POST caught before it leaves
    sent: dict[str, Any] = {}

    def post(url: str, data: bytes, headers: dict[str, str]) -> requests.Response:
        sent.update(url=url, data=data, headers=headers)
        return response(200, "application/dicom+json", b"")

    client = DICOMwebClient(url="http://127.0.0.1:9/dicomweb")
    monkeypatch.setattr(client, "_http_post", post)
    datasets = [pydicom.dcmread(io.BytesIO(dicom_file(seed))) for seed in (1, 2, 3)]

    # When it stores three instances and we read its body
    client.store_instances(datasets)
    type_parameter, parts = media.read_multipart_related(sent["data"], sent["headers"]["Content-Type"])

    # Then each part is one of its instances, whole
    assert sent["headers"]["Content-Type"] == STOW_CONTENT_TYPE
    assert sent["data"].startswith(b"\r\n--" + BOUNDARY.encode() + b"\r\n")  # its framing: CRLF first,
    assert sent["data"].endswith(b"--" + BOUNDARY.encode() + b"--")  # and no CRLF after the close
    assert type_parameter == "application/dicom"
    assert [part.content_type for part in parts] == ["application/dicom"] * 3
    assert [pydicom.dcmread(io.BytesIO(bytes(part.body))).SOPInstanceUID for part in parts] == [
        ds.SOPInstanceUID for ds in datasets
    ]


def test_read_multipart_related_reads_dicomweb_clients_encoder_directly() -> None:
    contents = [dicom_file(7), b"\r\n--not-the-boundary\r\n", b""]
    body = DICOMwebClient._encode_multipart_message(contents, STOW_CONTENT_TYPE)
    assert [bytes(part.body) for part in media.read_multipart_related(body, STOW_CONTENT_TYPE)[1]] == contents


def test_read_multipart_related_ignores_preamble_epilogue_and_transport_padding() -> None:
    body = (
        b"This is the preamble. --" + BOUNDARY.encode() + b" inside it is not a delimiter.\r\n"
        b"--" + BOUNDARY.encode() + b" \t \r\nContent-Type: application/dicom\r\n\r\none"
        b"\r\n--" + BOUNDARY.encode() + b"\t\r\nContent-Type: application/dicom\r\n\r\ntwo"
        b"\r\n--" + BOUNDARY.encode() + b"--  \r\nThis is the epilogue.\r\n--" + BOUNDARY.encode() + b"\r\nnot a part"
    )
    _, parts = media.read_multipart_related(body, STOW_CONTENT_TYPE)
    assert [bytes(part.body) for part in parts] == [b"one", b"two"]


def test_read_multipart_related_accepts_the_first_delimiter_at_the_very_start() -> None:
    body = (
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\none\r\n--" + BOUNDARY.encode() + b"--"
    )
    assert [bytes(p.body) for p in media.read_multipart_related(body, STOW_CONTENT_TYPE)[1]] == [b"one"]


def test_read_multipart_related_reads_bare_lf_line_breaks() -> None:
    b = BOUNDARY.encode()
    body = (
        b"--"
        + b
        + b"\nContent-Type: application/dicom\nX-Extra: 1\n\none\n--"
        + b
        + b"\nContent-Type: text/x\n\n\ntwo\n--"
        + b
        + b"--\n"
    )
    _, parts = media.read_multipart_related(body, STOW_CONTENT_TYPE)
    assert [(part.content_type, bytes(part.body)) for part in parts] == [
        ("application/dicom", b"one"),
        ("text/x", b"\ntwo"),
    ]
    assert parts[0].headers == {"content-type": "application/dicom", "x-extra": "1"}


def test_read_multipart_related_keeps_a_boundary_string_that_is_not_a_delimiter_line() -> None:
    b = BOUNDARY.encode()
    tricky = [
        b"data--" + b + b"\r\nmid-line, not at a line start",
        b"line\r\n--" + b + b"X\r\nat a line start but longer",
        b"line\r\n--" + b + b"? then more text on the line",
        b"line\r\n---" + b + b"\r\nthree hyphens",
        b"line\r--" + b + b"\r\nafter a bare CR",
    ]
    body = multipart(*[b"Content-Type: application/octet-stream\r\n\r\n" + content for content in tricky])
    assert [bytes(part.body) for part in media.read_multipart_related(body, STOW_CONTENT_TYPE)[1]] == tricky


def test_read_multipart_related_reads_part_headers_case_insensitively_folded_and_defaulted() -> None:
    body = multipart(
        b"CONTENT-type:  application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location: first\r\ncontent-location: second\r\n\r\none",
        b"\r\nno headers at all",
    )
    _, (first, second) = media.read_multipart_related(body, STOW_CONTENT_TYPE)
    assert first.content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert first.headers["content-location"] == "first"
    assert (second.headers, second.content_type, bytes(second.body)) == ({}, "text/plain", b"no headers at all")


@pytest.mark.parametrize(
    ("content_type", "type_parameter"),
    [
        (f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"', "application/dicom"),
        (f"multipart/related; type=application/dicom; boundary={BOUNDARY}", "application/dicom"),
        (f"Multipart/Related;TYPE=Application/DICOM;Boundary={BOUNDARY}", "application/dicom"),
        (f'multipart/related ; type = "application/dicom" ;boundary = "{BOUNDARY}" ;', "application/dicom"),
        (
            f'multipart/related; boundary={BOUNDARY}; start="<1@x>"; type="application/dicom+json"',
            "application/dicom+json",
        ),
        (f"multipart/related; boundary={BOUNDARY}", None),
    ],
)
def test_read_multipart_related_reads_quoted_and_unquoted_parameters(content_type: str, type_parameter: str) -> None:
    body = multipart(b"Content-Type: application/dicom\r\n\r\nx")
    assert media.read_multipart_related(body, content_type)[0] == type_parameter


def test_read_multipart_related_reads_a_quoted_boundary_with_characters_a_token_cannot_hold() -> None:
    boundary = "a b=c?d:e/f(g)h,i'j+k_l.m-n"
    body = multipart(b"Content-Type: application/dicom\r\n\r\nx", boundary=boundary)
    _, parts = media.read_multipart_related(body, f'multipart/related; type="application/dicom"; boundary="{boundary}"')
    assert [bytes(part.body) for part in parts] == [b"x"]


def test_read_multipart_related_parses_a_large_body_whole() -> None:
    # 12 parts of ~512 KB each (a 6 MB STOW-RS body: the API Gateway payload limit)
    rng = random.Random(0)
    contents = [rng.randbytes(512 * 1024 + i) for i in range(12)]
    content_type, body = media.write_multipart_related(
        [("application/dicom", c) for c in contents], type_parameter="application/dicom"
    )
    assert len(body) > 6_000_000
    _, parts = media.read_multipart_related(body, content_type)
    assert [bytes(part.body) for part in parts] == contents


SECRET = b"PATIENT^SECRET"
GOOD_PART = b"Content-Type: application/dicom\r\n\r\n" + SECRET
B = BOUNDARY.encode()


@pytest.mark.parametrize(
    ("content_type", "body", "error", "message"),
    [
        ("application/dicom", multipart(GOOD_PART), UnsupportedMediaType, media.NOT_MULTIPART),
        (f"multipart/form-data; boundary={BOUNDARY}", multipart(GOOD_PART), UnsupportedMediaType, media.NOT_MULTIPART),
        ("", multipart(GOOD_PART), UnsupportedMediaType, media.NOT_MULTIPART),
        ("multipart/related; type=application/dicom", multipart(GOOD_PART), InvalidRequest, media.BAD_BOUNDARY),
        ('multipart/related; boundary=""', multipart(GOOD_PART), InvalidRequest, media.BAD_BOUNDARY),
        (
            f"multipart/related; boundary={'b' * 71}",
            multipart(GOOD_PART, boundary="b" * 71),
            InvalidRequest,
            media.BAD_BOUNDARY,
        ),
        ('multipart/related; boundary="caf\u00e9"', multipart(GOOD_PART), InvalidRequest, media.BAD_BOUNDARY),
        (
            f"multipart/related; boundary={BOUNDARY}; boundary=x",
            multipart(GOOD_PART),
            InvalidRequest,
            media.BAD_CONTENT_TYPE,
        ),
        (f'multipart/related; boundary="{BOUNDARY}', multipart(GOOD_PART), InvalidRequest, media.BAD_CONTENT_TYPE),
        (f"multipart/related; boundary={BOUNDARY} x", multipart(GOOD_PART), InvalidRequest, media.BAD_CONTENT_TYPE),
        (STOW_CONTENT_TYPE, b"", InvalidRequest, media.NO_DELIMITER),
        (STOW_CONTENT_TYPE, SECRET + b"--" + B + b"\r\n" + GOOD_PART, InvalidRequest, media.NO_DELIMITER),
        (STOW_CONTENT_TYPE, multipart(GOOD_PART)[:-2], InvalidRequest, media.TRUNCATED),
        (STOW_CONTENT_TYPE, multipart(GOOD_PART)[:-10], InvalidRequest, media.TRUNCATED),
        (STOW_CONTENT_TYPE, b"--" + B + b"\r\n" + GOOD_PART, InvalidRequest, media.TRUNCATED),
        (STOW_CONTENT_TYPE, multipart(GOOD_PART, b"Content-Type: x\r\n" + SECRET), InvalidRequest, media.NO_SEPARATOR),
        (STOW_CONTENT_TYPE, multipart(GOOD_PART, b""), InvalidRequest, media.NO_SEPARATOR),
        (STOW_CONTENT_TYPE, multipart(SECRET + b"\r\n\r\nx"), InvalidRequest, media.BAD_PART_HEADER),
        (STOW_CONTENT_TYPE, multipart(b"Bad Name: x\r\n\r\n" + SECRET), InvalidRequest, media.BAD_PART_HEADER),
        (STOW_CONTENT_TYPE, multipart(b" folded: first\r\n\r\n" + SECRET), InvalidRequest, media.BAD_PART_HEADER),
    ],
)
def test_read_multipart_related_refuses_malformed_bodies_with_fixed_messages(
    content_type: str, body: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        media.read_multipart_related(body, content_type)
    assert type(raised.value) is error
    assert str(raised.value) == message


def test_read_multipart_related_refuses_more_than_max_parts() -> None:
    body = multipart(*[GOOD_PART] * 4)
    assert len(media.read_multipart_related(body, STOW_CONTENT_TYPE, max_parts=4)[1]) == 4
    with pytest.raises(InvalidRequest) as raised:
        media.read_multipart_related(body, STOW_CONTENT_TYPE, max_parts=3)
    assert str(raised.value) == "The multipart body has more than 3 parts."


def test_read_multipart_related_reads_a_body_that_closes_without_parts() -> None:
    assert media.read_multipart_related(b"--" + B + b"--\r\n", STOW_CONTENT_TYPE) == ("application/dicom", [])


# --- Writing ------------------------------------------------------------------------------------


def test_write_multipart_related_frames_the_body_exactly() -> None:
    content_type, body = media.write_multipart_related(
        [
            ("image/jls; transfer-syntax=1.2.840.10008.1.2.4.80", b"ONE"),
            ("application/octet-stream", memoryview(b"TWO")),
        ],
        type_parameter="image/jls",
        boundary="b0undary",
    )
    assert content_type == 'multipart/related; type="image/jls"; boundary=b0undary'
    assert body == (
        b"--b0undary\r\nContent-Type: image/jls; transfer-syntax=1.2.840.10008.1.2.4.80\r\n\r\nONE"
        b"\r\n--b0undary\r\nContent-Type: application/octet-stream\r\n\r\nTWO"
        b"\r\n--b0undary--\r\n"
    )


def test_write_multipart_related_draws_a_random_hex_boundary_at_the_start_of_the_body() -> None:
    first, body = media.write_multipart_related([("application/dicom", b"x")], type_parameter="application/dicom")
    second, _ = media.write_multipart_related([("application/dicom", b"x")], type_parameter="application/dicom")
    boundary = first.rpartition("boundary=")[2]
    assert len(boundary) == 32 and int(boundary, 16) >= 0
    assert body.startswith(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n")
    assert first != second


def test_write_multipart_related_draws_again_when_the_boundary_is_in_a_part(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(media.uuid, "uuid4", lambda: type("U", (), {"hex": next(draws)})())
    content_type, body = media.write_multipart_related(
        [("application/octet-stream", b"holds " + b"a" * 32)], type_parameter="application/octet-stream"
    )
    assert content_type.endswith("boundary=" + "b" * 32)
    assert [bytes(p.body) for p in media.read_multipart_related(body, content_type)[1]] == [b"holds " + b"a" * 32]


def test_write_multipart_related_quotes_a_boundary_that_is_not_a_token() -> None:
    content_type, body = media.write_multipart_related(
        [("application/dicom", b"x")], type_parameter="application/dicom", boundary="a b/c"
    )
    assert content_type == 'multipart/related; type="application/dicom"; boundary="a b/c"'
    assert [bytes(p.body) for p in media.read_multipart_related(body, content_type)[1]] == [b"x"]


@pytest.mark.parametrize(
    ("parts", "type_parameter", "boundary"),
    [
        ([], "application/dicom", None),
        ([("application/dicom", b"x")], 'application/"dicom"', None),
        ([("application/dicom", b"x")], "not a media type", None),
        ([("application/dicom\r\nX-Injected: 1", b"x")], "application/dicom", None),
        ([("application/dicom", b"x")], "application/dicom", ""),
        ([("application/dicom", b"x")], "application/dicom", "b" * 71),
        ([("application/dicom", b"x")], "application/dicom", "ends in space "),
        ([("application/dicom", b"--fixed--")], "application/dicom", "fixed"),
    ],
)
def test_write_multipart_related_refuses_what_it_cannot_frame(
    parts: list[tuple[str, bytes]], type_parameter: str, boundary: str | None
) -> None:
    with pytest.raises(ValueError):
        media.write_multipart_related(parts, type_parameter=type_parameter, boundary=boundary)


def response(status: int, content_type: str, body: bytes) -> requests.Response:
    """A requests.Response as if it came over the wire."""
    answer = requests.Response()
    answer.status_code = status
    answer.headers["Content-Type"] = content_type
    answer._content = body
    answer._content_consumed = True
    return answer


@pytest.mark.parametrize("stream", [False, True])
def test_dicomweb_client_decodes_what_write_wrote(stream: bool) -> None:
    contents = [b"", b"\r\n\r\n--", b"--\r\n starts like the close", bytes(range(256)) * 9]
    content_type, body = media.write_multipart_related(
        [("application/octet-stream", c) for c in contents], type_parameter="application/octet-stream"
    )
    client = DICOMwebClient(url="http://127.0.0.1:9/dicomweb", chunk_size=7)  # boundaries straddle chunks
    assert list(client._decode_multipart_message(response(200, content_type, body), stream=stream)) == contents


def cornerstone_first_part(content_type: str, body: bytes) -> tuple[str, bytes]:
    """How Cornerstone's wadors loader (extractMultipart.ts) reads a frame response: the first part only."""
    assert "multipart" in content_type
    header_end = body.index(b"\r\n\r\n")
    header_lines = body[:header_end].decode("latin-1").split("\r\n")
    boundary = next(line for line in header_lines if line.startswith("--"))
    part_type = next(line[len("Content-Type:") :].strip() for line in header_lines if line.startswith("Content-Type:"))
    end = body.index(boundary.encode("latin-1"), header_end + 4)
    return part_type, body[header_end + 4 : end - 2]


def dicomweb_client_js_parts(body: bytes) -> list[bytes]:
    """How dicomweb-client JS (message.js multipartDecode) splits a response OHIF retrieves with it."""
    header_end = body.find(b"\r\n\r\n", 0, 1000)
    boundary = next(line for line in body[:header_end].split(b"\r\n") if line.startswith(b"--"))
    parts, offset = [], len(boundary)
    while (at := body.find(boundary, offset)) != -1:
        part_start = body.find(b"\r\n\r\n", offset, offset + 1000) + 4
        parts.append(body[part_start : at - 2])
        offset = at + len(boundary)
    return parts


def test_ohif_readers_read_what_write_wrote() -> None:
    frames = [b"\x00\x01" * 50, b"second frame"]
    offer = Representation("application/octet-stream", JPEG_LS)
    content_type, body = media.write_multipart_related(
        [(offer.part_content_type, frame) for frame in frames], type_parameter=offer.media_type
    )
    assert cornerstone_first_part(content_type, body) == (offer.part_content_type, frames[0])
    assert dicomweb_client_js_parts(body) == frames


# --- Accept -------------------------------------------------------------------------------------


def ranges(header: str | None) -> list[tuple[str, dict[str, str], float]]:
    return [(r.media_type, dict(r.params), r.q) for r in media.parse_accept(header)]


OCTET_ANY = {"type": "application/octet-stream", "transfer-syntax": "*"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, [("*/*", {}, 1.0)]),
        ("", [("*/*", {}, 1.0)]),
        ("  ", [("*/*", {}, 1.0)]),
        # Cornerstone's own default, and OHIF's with omitQuotationForMultipartRequest
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            [("multipart/related", OCTET_ANY, 1.0)],
        ),
        # OHIF's generateAcceptHeader without it
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
            [("multipart/related", OCTET_ANY, 1.0)],
        ),
        # ... and with requestTransferSyntaxUID: two transfer-syntax parameters, so neither counts
        (
            'multipart/related; type="image/jls"; transfer-syntax="1.2.840.10008.1.2.4.80"; transfer-syntax="*"',
            [("multipart/related", {"type": "image/jls"}, 1.0)],
        ),
        (
            'MULTIPART/Related ;TYPE = "Application/DICOM" ; Transfer-Syntax= * ',
            [("multipart/related", {"type": "Application/DICOM", "transfer-syntax": "*"}, 1.0)],
        ),
        (
            'a/b; x="q=0, c/d; y"; z="\\"quoted\\"", e/f',
            [("a/b", {"x": "q=0, c/d; y", "z": '"quoted"'}, 1.0), ("e/f", {}, 1.0)],
        ),
        # PS3.18 8.7.3.5.2's example: q, then boundary
        (
            'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.50;boundary=**, '
            'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.57;q=0.5;boundary=**',
            [
                (
                    "multipart/related",
                    {"type": "application/dicom", "transfer-syntax": JPEG_BASELINE, "boundary": "**"},
                    1.0,
                ),
                (
                    "multipart/related",
                    {"type": "application/dicom", "transfer-syntax": "1.2.840.10008.1.2.4.57", "boundary": "**"},
                    0.5,
                ),
            ],
        ),
        # highest q first, stable among equals
        (
            "a/a;q=0.5, b/b, c/c;q=1.0, d/d;q=0, e/e;q=0.500",
            [("b/b", {}, 1.0), ("c/c", {}, 1.0), ("a/a", {}, 0.5), ("e/e", {}, 0.5), ("d/d", {}, 0.0)],
        ),
        # bad q: that range is skipped
        ("a/a;q=2, b/b;q=-1, c/c;q=abc, d/d;q=, e/e;q=.5, f/f;q=0.25;q=1, g/g;q=0.1234", [("g/g", {}, 0.1234)]),
        # garbage ranges are skipped, the rest kept
        ('text, /, a/b/c, */html, ;q=1, , x/y; p="unterminated, z/z', [("*/*", {}, 1.0)]),
        ("garbage, application/dicom+json, also garbage", [("application/dicom+json", {}, 1.0)]),
        ("a/b; novalue; ; c=d", [("a/b", {"c": "d"}, 1.0)]),
    ],
)
def test_parse_accept(header: str | None, expected: list[tuple[str, dict[str, str], float]]) -> None:
    assert ranges(header) == expected


def test_parse_accept_reads_a_browsers_header() -> None:
    header = (
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
        "application/signed-exchange;v=b3;q=0.7"
    )
    parsed = media.parse_accept(header)
    assert [r.media_type for r in parsed] == [
        "text/html", "application/xhtml+xml", "image/avif", "image/webp", "image/apng",
        "application/xml", "*/*", "application/signed-exchange",
    ]  # fmt: skip
    assert parsed[-1].params == {"v": "b3"}
    assert media.accepts_json(parsed)
    assert media.multipart_choice(parsed, offered=media.frame_offers(JPEG_LS, can_decode=False)) == Representation(
        "image/jls", JPEG_LS
    )


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("application/dicom+json, application/json", True),  # dicomweb-client's
        ("application/dicom+json", True),
        ("application/json", True),
        ("application/*", True),
        ("*/*", True),
        (None, True),
        ("application/dicom+json; charset=utf-8", True),
        ("application/dicom+xml", False),
        ("multipart/related; type=application/dicom", False),
        ("application/dicom+json;q=0, */*", False),
        ("application/json;q=0, application/dicom+json", True),
        ("application/dicom+json;q=0, application/json", False),
        ("*/*;q=0", False),
        ("application/*;q=0, */*", False),
    ],
)
def test_accepts_json(header: str | None, accepted: bool) -> None:
    assert media.accepts_json(media.parse_accept(header)) is accepted


OCTET = "application/octet-stream"
STORED_JLS = Representation("image/jls", JPEG_LS)
JLS_AS_OCTET = Representation(OCTET, JPEG_LS)
DECODED = Representation(OCTET, EVRLE)


@pytest.mark.parametrize(
    ("header", "stored", "can_decode", "chosen"),
    [
        # uncompressed frames: every way of asking for them
        ("*/*", EVRLE, False, DECODED),
        ('multipart/related; type="*/*"', EVRLE, False, DECODED),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", EVRLE, False, DECODED),
        ('multipart/related; type="application/octet-stream"', EVRLE, False, DECODED),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={EVRLE}', EVRLE, False, DECODED),
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            media.IMPLICIT_VR_LITTLE_ENDIAN,
            False,
            DECODED,
        ),
        ('multipart/related; type="image/jpeg"', EVRLE, False, None),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG_BASELINE}', EVRLE, False, None),
        ('multipart/related; type="application/dicom"', EVRLE, False, None),
        ("application/octet-stream", EVRLE, False, None),  # single part: not what this route sends
        ("image/*", EVRLE, False, None),
        ('multipart/related; type="not a type"', EVRLE, False, None),
        # JPEG-LS frames: the stored form unless the client names another
        ("*/*", JPEG_LS, True, STORED_JLS),
        ('multipart/related; type="*/*"', JPEG_LS, True, STORED_JLS),
        ('multipart/related; type="image/*"', JPEG_LS, True, STORED_JLS),
        ("multipart/*", JPEG_LS, True, STORED_JLS),
        ("multipart/related", JPEG_LS, True, STORED_JLS),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", JPEG_LS, True, JLS_AS_OCTET),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", JPEG_LS, False, JLS_AS_OCTET),
        ('multipart/related; type="application/octet-stream"', JPEG_LS, True, DECODED),
        ('multipart/related; type="application/octet-stream"', JPEG_LS, False, None),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={EVRLE}', JPEG_LS, False, None),
        ('multipart/related; type="image/jls"', JPEG_LS, False, STORED_JLS),
        ('multipart/related; type="image/x-jls"', JPEG_LS, False, STORED_JLS),
        (f'multipart/related; type="image/jls"; transfer-syntax={JPEG_LS}', JPEG_LS, False, STORED_JLS),
        ('multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81', JPEG_LS, False, None),
        ('multipart/related; type="image/jpeg"', JPEG_LS, True, None),
        # OHIF with requestTransferSyntaxUID=JPEG-LS: the duplicated transfer-syntax leaves image/jls's default
        (
            'multipart/related; type="image/jls"; transfer-syntax="1.2.840.10008.1.2.4.80"; transfer-syntax="*"',
            JPEG_LS,
            False,
            STORED_JLS,
        ),
        # a stored syntax that is not image/jpeg's default is still what image/jpeg gets (PS3.18 8.7.3.3)
        ('multipart/related; type="image/jpeg"', JPEG_BASELINE, False, Representation("image/jpeg", JPEG_BASELINE)),
        # q decides, then the server's order; q=0 on the most specific range rules an offer out
        (
            'multipart/related; type="image/jls";q=0.5, multipart/related; type="application/octet-stream"',
            JPEG_LS,
            True,
            DECODED,
        ),
        (
            'multipart/related; type="image/jls", multipart/related; type="application/octet-stream"',
            JPEG_LS,
            True,
            STORED_JLS,
        ),
        ('multipart/related; type="image/jls";q=0, */*', JPEG_LS, True, JLS_AS_OCTET),
        (
            'multipart/related; type="image/jls";q=0, multipart/related; type="application/octet-stream";q=0, */*',
            JPEG_LS,
            False,
            JLS_AS_OCTET,
        ),
        (
            f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG_LS};q=0, '
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            JPEG_LS,
            True,
            DECODED,
        ),
        ("*/*;q=0", JPEG_LS, True, None),
        ("garbage", JPEG_LS, True, STORED_JLS),  # nothing valid: the header is disregarded
    ],
)
def test_multipart_choice_for_frames(header: str, stored: str, can_decode: bool, chosen: Representation | None) -> None:
    offered = media.frame_offers(stored, can_decode=can_decode)
    assert media.multipart_choice(media.parse_accept(header), offered=offered) == chosen


SV1 = media.JPEG_LOSSLESS_SV1
LOSSLESS = Representation(OCTET, SV1)
LOSSLESS_JPEG = Representation("image/jpeg", SV1)
ASK_LOSSLESS = f'multipart/related; type="application/octet-stream"; transfer-syntax={SV1}'


@pytest.mark.parametrize(
    ("header", "stored", "chosen"),
    [
        # what the viewer asks for a frame too large to send decoded: re-encoded from any stored syntax
        (ASK_LOSSLESS, EVRLE, LOSSLESS),
        (ASK_LOSSLESS, JPEG_LS, LOSSLESS),
        (ASK_LOSSLESS, JPEG_BASELINE, LOSSLESS),
        (ASK_LOSSLESS, SV1, LOSSLESS),  # the stored bytes: the same representation, nothing to transcode
        (f'multipart/related; type="image/jpeg"; transfer-syntax={SV1}', EVRLE, LOSSLESS_JPEG),
        # image/jpeg's default is JPEG Lossless SV1 (Table 8.7.3-5) ...
        ('multipart/related; type="image/jpeg"', EVRLE, LOSSLESS_JPEG),
        ('multipart/related; type="image/jpeg"', JPEG_LS, LOSSLESS_JPEG),
        # ... but a lossy original is sent lossy (PS3.18 8.7.3.3), not re-encoded without loss
        ('multipart/related; type="image/jpeg"', JPEG_BASELINE, Representation("image/jpeg", JPEG_BASELINE)),
        (f'multipart/related; type="image/jpeg"; transfer-syntax={SV1}', JPEG_BASELINE, None),
        # the rest as before: the stored form first, decoded for octet-stream without a syntax
        ("*/*", EVRLE, DECODED),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", JPEG_LS, JLS_AS_OCTET),
        ('multipart/related; type="application/octet-stream"', JPEG_LS, DECODED),
        ('multipart/related; type="image/*"', JPEG_LS, STORED_JLS),
    ],
)
def test_multipart_choice_for_frames_that_can_be_transcoded(header: str, stored: str, chosen: Representation) -> None:
    offered = media.frame_offers(stored, can_decode=True, can_transcode=True)
    assert media.multipart_choice(media.parse_accept(header), offered=offered) == chosen


def test_transcoded_offers_come_after_the_stored_forms() -> None:
    assert media.frame_offers(EVRLE, can_decode=True, can_transcode=True) == [DECODED, LOSSLESS_JPEG, LOSSLESS]
    assert media.frame_offers(JPEG_LS, can_decode=True, can_transcode=True) == [
        STORED_JLS,
        JLS_AS_OCTET,
        DECODED,
        LOSSLESS_JPEG,
        LOSSLESS,
    ]
    assert media.frame_offers(JPEG_BASELINE, can_decode=True, can_transcode=True)[-1:] == [LOSSLESS]
    assert media.frame_offers(SV1, can_decode=True, can_transcode=True) == [LOSSLESS_JPEG, LOSSLESS, DECODED]
    assert LOSSLESS.part_content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.70"


@pytest.mark.parametrize(
    ("choice", "stored", "transcoded"),
    [
        (DECODED, EVRLE, False),
        (DECODED, media.IMPLICIT_VR_LITTLE_ENDIAN, False),
        (DECODED, JPEG_LS, True),
        (DECODED, None, True),  # not byte ranges of the file (deflated, big endian)
        (STORED_JLS, JPEG_LS, False),
        (LOSSLESS, SV1, False),
        (LOSSLESS_JPEG, SV1, False),
        (LOSSLESS, EVRLE, True),
        (LOSSLESS, None, True),
    ],
)
def test_is_transcoded_when_the_bytes_are_not_the_stored_ones(
    choice: Representation, stored: str | None, transcoded: bool
) -> None:
    assert media.is_transcoded(choice, stored) is transcoded


STORED_INSTANCE = Representation("application/dicom", JPEG_LS)
TRANSCODED = Representation("application/dicom", EVRLE)


@pytest.mark.parametrize(
    ("header", "can_transcode", "chosen"),
    [
        ('multipart/related; type="application/dicom"; transfer-syntax=*', True, STORED_INSTANCE),
        ('multipart/related; type="application/dicom"', True, TRANSCODED),
        ('multipart/related; type="application/dicom"', False, STORED_INSTANCE),  # the default is out of reach
        (f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}', True, TRANSCODED),
        (f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}', False, None),
        ('multipart/related; type="application/*"', False, STORED_INSTANCE),
        ("*/*", True, STORED_INSTANCE),
        ('multipart/related; type="application/octet-stream"', True, None),
        ("application/dicom", True, None),
    ],
)
def test_multipart_choice_for_instances(header: str, can_transcode: bool, chosen: Representation | None) -> None:
    offered = media.instance_offers(JPEG_LS, can_transcode=can_transcode)
    assert media.multipart_choice(media.parse_accept(header), offered=offered) == chosen


def test_offers_name_the_stored_form_first() -> None:
    assert media.frame_offers(EVRLE, can_decode=True) == [DECODED]
    assert media.frame_offers(JPEG_LS, can_decode=True) == [STORED_JLS, JLS_AS_OCTET, DECODED]
    assert media.frame_offers("1.2.840.10008.1.2.4.100", can_decode=False) == [
        Representation(OCTET, "1.2.840.10008.1.2.4.100")
    ]
    assert media.instance_offers(EVRLE, can_transcode=True) == [TRANSCODED]
    assert media.instance_offers(JPEG_LS, can_transcode=True) == [STORED_INSTANCE, TRANSCODED]
    assert STORED_JLS.part_content_type == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"


# --- dicomweb-client against the media functions, as a route would use them ----------------------


class FakeOrigin:
    """What a WADO-RS route does with this module: negotiate the Accept header, write the parts."""

    def __init__(self, stored: str, frames: Sequence[bytes], instance: bytes, *, can_decode: bool) -> None:
        self.stored, self.frames, self.instance, self.can_decode = stored, frames, instance, can_decode
        self.accepts: list[str] = []

    def get(
        self, url: str, params: Any = None, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        accept = (headers or {}).get("Accept")
        self.accepts.append(accept or "")
        ranges = media.parse_accept(accept)
        if url.endswith("/metadata") or url.endswith("/instances"):
            if not media.accepts_json(ranges):
                raise requests.HTTPError("406")
            return response(200, media.DICOM_JSON, json.dumps([{"00080018": {"vr": "UI"}}]).encode())
        frames = "/frames/" in url
        offered = (
            media.frame_offers(self.stored, can_decode=self.can_decode)
            if frames
            else media.instance_offers(self.stored, can_transcode=False)
        )
        choice = media.multipart_choice(ranges, offered=offered)
        if choice is None:
            raise requests.HTTPError("406")
        if not frames:
            contents: Sequence[bytes] = [self.instance]
        elif choice.transfer_syntax == self.stored:
            contents = self.frames
        else:
            contents = [b"decoded:" + frame for frame in self.frames]
        content_type, body = media.write_multipart_related(
            [(choice.part_content_type, content) for content in contents], type_parameter=choice.media_type
        )
        return response(200, content_type, body)


@pytest.fixture
def origin_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[DICOMwebClient, FakeOrigin]]]:
    def make(stored: str, *, can_decode: bool) -> tuple[DICOMwebClient, FakeOrigin]:
        origin = FakeOrigin(stored, [b"frame-1", b"frame-2\r\n--"], dicom_file(5), can_decode=can_decode)
        client = DICOMwebClient(url="http://127.0.0.1:9/dicomweb")
        monkeypatch.setattr(client, "_http_get", origin.get)
        return client, origin

    yield make


UIDS = {"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5"}


def test_dicomweb_client_retrieves_frames_with_its_default_accept(origin_client: Callable[..., Any]) -> None:
    client, origin = origin_client(JPEG_LS, can_decode=True)
    frames = client.retrieve_instance_frames(**UIDS, frame_numbers=[1, 2])
    assert origin.accepts == ['multipart/related; type="*/*"']
    assert frames == [b"frame-1", b"frame-2\r\n--"]  # the stored form: server's choice


@pytest.mark.parametrize(
    ("media_types", "accept", "expected"),
    [
        (("application/octet-stream",), 'multipart/related; type="application/octet-stream"', [b"decoded:frame-1"]),
        (
            (("application/octet-stream", EVRLE),),
            f'multipart/related; type="application/octet-stream"; transfer-syntax={EVRLE}',
            [b"decoded:frame-1"],
        ),
        (("image/jls",), 'multipart/related; type="image/jls"', [b"frame-1"]),
        ((("image/jls", JPEG_LS),), f'multipart/related; type="image/jls"; transfer-syntax={JPEG_LS}', [b"frame-1"]),
    ],
)
def test_dicomweb_client_retrieves_frames_in_the_media_type_it_names(
    origin_client: Callable[..., Any], media_types: tuple[Any, ...], accept: str, expected: list[bytes]
) -> None:
    client, origin = origin_client(JPEG_LS, can_decode=True)
    assert client.retrieve_instance_frames(**UIDS, frame_numbers=[1], media_types=media_types)[:1] == expected
    assert origin.accepts == [accept]


def test_dicomweb_client_gets_a_406_for_a_media_type_the_server_cannot_send(origin_client: Callable[..., Any]) -> None:
    client, _ = origin_client(JPEG_LS, can_decode=False)
    with pytest.raises(requests.HTTPError, match="406"):
        client.retrieve_instance_frames(**UIDS, frame_numbers=[1], media_types=("application/octet-stream",))
    with pytest.raises(requests.HTTPError, match="406"):
        client.retrieve_instance_frames(**UIDS, frame_numbers=[1], media_types=("image/jpeg",))


def test_dicomweb_client_retrieves_instances_series_and_metadata(origin_client: Callable[..., Any]) -> None:
    client, origin = origin_client(EVRLE, can_decode=False)
    instance = client.retrieve_instance(**UIDS)
    series = client.retrieve_series(UIDS["study_instance_uid"], UIDS["series_instance_uid"])
    metadata = client.retrieve_instance_metadata(**UIDS)
    found = client.search_for_instances(UIDS["study_instance_uid"])
    expected_uid = pydicom.dcmread(io.BytesIO(dicom_file(5))).SOPInstanceUID
    assert instance.SOPInstanceUID == expected_uid and [ds.SOPInstanceUID for ds in series] == [expected_uid]
    assert metadata == {"00080018": {"vr": "UI"}} and len(found) == 1
    assert origin.accepts == [
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="application/dicom"',
        "application/dicom+json, application/json",
        "application/dicom+json, application/json",
    ]


def test_dicomweb_client_retrieves_bulkdata_with_its_default_accept(origin_client: Callable[..., Any]) -> None:
    client, origin = origin_client(EVRLE, can_decode=False)
    assert client.retrieve_bulkdata("http://127.0.0.1:9/dicomweb/studies/1/series/2/instances/3/frames/1") == [
        b"frame-1",
        b"frame-2\r\n--",
    ]
    assert origin.accepts == ['multipart/related; type="*/*"']


# --- The images function can import it -----------------------------------------------------------


def test_media_imports_only_the_standard_library_and_our_errors() -> None:
    code = (
        "import json, sys; before = set(sys.modules); import shared.dicomweb.media; "
        "print(json.dumps(sorted(m for m in set(sys.modules) - before "
        "if m.partition('.')[0] not in sys.stdlib_module_names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert set(json.loads(out.stdout)) <= {
        "shared",
        "shared.core",
        "shared.core.errors",
        "shared.dicomweb",
        "shared.dicomweb.media",
    }


def test_media_range_names_its_media_type() -> None:
    assert MediaRange("multipart", "related", {}, 1.0).media_type == "multipart/related"
