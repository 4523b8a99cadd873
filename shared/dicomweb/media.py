"""DICOMweb's HTTP media (PS3.18 8.6-8.7): multipart/related bodies read (STOW-RS) and written
(WADO-RS), and the Accept header negotiated, as PS3.18 says and as the real clients read and write.

The clients this is written against, by file:
  dicomweb-client (Python) 0.61.2, dicomweb_client/web.py: _encode_multipart_message (STOW-RS bodies),
    _decode_multipart_message (WADO-RS responses) and _build_multipart_accept_header_field_value.
  dicomweb-client (JS), src/message.js multipartDecode and src/api.js: what OHIF retrieves with it.
  Cornerstone (OHIF's image loader), cornerstone3D packages/dicomImageLoader/src/imageLoader/wadors/:
    extractMultipart.ts (findBoundary, findContentType) and loadImage.ts (its Accept header and
    getTransferSyntaxForContentType).
  OHIF, platform/core/src/utils/generateAcceptHeader.ts (the frames' Accept, omitQuotationForMultipartRequest).

Standard library only: the lean images function imports this module.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.core.errors import InvalidRequest, UnsupportedMediaType

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # JPEG Lossless, Non-Hierarchical, First-Order Prediction

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"

# PS3.18 Table 8.7.3-5 (Media Types and Transfer Syntax UIDs for Compressed Data in Bulk Data): the
# media type a compressed frame travels as when it is sent in its own encoding.
COMPRESSED_MEDIA_TYPES: Mapping[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless (Process 14)
    JPEG_LOSSLESS_SV1: "image/jpeg",  # JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Multi-component Lossless Only
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
    "1.2.840.10008.1.2.4.110": "image/jxl",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111": "image/jxl",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112": "image/jxl",  # JPEG XL
}

# The default (D) transfer syntax of each media type when a request names none: Table 8.7.3-2
# (application/dicom), Table 8.7.3-4 (application/octet-stream) and Table 8.7.3-5 (the image types).
DEFAULT_TRANSFER_SYNTAXES: Mapping[str, str] = {
    DICOM: EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": JPEG_LOSSLESS_SV1,
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/jxl": "1.2.840.10008.1.2.4.110",
}

# Names clients still send for the same media types: earlier PS3.18 editions had image/x-dicom-rle
# and image/x-jls, and dicomweb-client offers both spellings.
MEDIA_TYPE_ALIASES: Mapping[str, str] = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}

# Transfer syntaxes whose frames are already little-endian native pixels: Explicit VR Little Endian
# bytes with nothing to decode. (PS3.18 8.7.3 forbids Implicit VR Little Endian on the wire, so a
# frame stored in it goes out labelled Explicit VR Little Endian, which has the same pixel bytes.)
NATIVE_LITTLE_ENDIAN = frozenset(
    {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
)

# Syntaxes whose frames may have lost detail to compression (PS3.5 8.2: baseline and extended JPEG,
# near-lossless JPEG-LS, JPEG 2000 and HTJ2K that may be lossy, JPEG XL): re-encoding such frames
# without loss keeps their loss, so image/jpeg, whose default is JPEG Lossless, still names the stored
# form for them (PS3.18 8.7.3.3: an origin server with only lossy pixel data sends them lossy).
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
    }
)

# RFC 9110 5.6.2 token characters: types, subtypes and parameter names.
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN = re.compile(_TCHARS)
_MEDIA_TYPE = re.compile(rf"[ \t]*({_TCHARS})/({_TCHARS})")
# One parameter (RFC 9110 5.6.6), empty ones allowed. Tolerated beyond the RFC: spaces around "=",
# and unquoted values with "/" in them (OHIF's omitQuotationForMultipartRequest sends
# `type=application/octet-stream`).
_PARAMETER = re.compile(rf'[ \t]*;[ \t]*(?:({_TCHARS})(?:[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;,"\s]*))?)?[ \t]*')
_QUOTED_PAIR = re.compile(r"\\(.)")
# One element of a comma-separated list; a comma inside a quoted string does not split it.
_LIST_ELEMENT = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*(?:"|$))+')
# RFC 9110 12.4.2 allows at most three decimals; more are read too (no client means harm by them).
_QVALUE = re.compile(r"[01](?:\.[0-9]*)?")
# RFC 2046 5.1.1: after a boundary, optional transport padding (our reading: spaces and tabs), then the
# line break; a bare LF is read as one too.
_PADDING_AND_LINE_BREAK = re.compile(rb"[ \t]*\r?\n")
# RFC 2046 5.1.1 bchars, for the boundaries we write.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
MAX_BOUNDARY_LENGTH = 70

NOT_MULTIPART = "The request body must be multipart/related."
BAD_CONTENT_TYPE = "The multipart/related Content-Type has malformed parameters."
BAD_BOUNDARY = "The multipart/related Content-Type has no valid boundary parameter."
NO_DELIMITER = "The multipart body has no boundary delimiter line."
TRUNCATED = "The multipart body ends before its closing boundary delimiter."
NO_SEPARATOR = "A part of the multipart body has no empty line between its headers and its content."
BAD_PART_HEADER = "A part of the multipart body has a malformed header line."


# --- Media types and their parameters -----------------------------------------------------------


def parse_media_type(value: str) -> tuple[str, dict[str, str]] | None:
    """`type/subtype` lower-cased and its parameters (lower-cased names, unquoted values), or None
    when malformed; a parameter given twice is dropped (RFC 6838 4.3 makes it an error, PS3.18 8.7.7
    has invalid parameters ignored)."""
    head = _MEDIA_TYPE.match(value)
    if head is None:
        return None
    pairs = _parameters(value, head.end())
    if pairs is None:
        return None
    return f"{head[1].lower()}/{head[2].lower()}", _without_repeats(pairs)


def _parameters(text: str, pos: int) -> list[tuple[str, str]] | None:
    """The (lower-cased name, unquoted value) pairs from pos to the end; None when something there
    is not a parameter. Empty parameters and names without a value are skipped."""
    pairs: list[tuple[str, str]] = []
    end = len(text.rstrip(" \t"))
    while pos < end:
        found = _PARAMETER.match(text, pos)
        if found is None:
            return None
        name, value = found[1], found[2]
        if name is not None and value is not None:
            if value.startswith('"'):
                value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
            pairs.append((name.lower(), value))
        pos = found.end()
    return pairs


def _without_repeats(pairs: list[tuple[str, str]]) -> dict[str, str]:
    names = [name for name, _ in pairs]
    return {name: value for name, value in pairs if names.count(name) == 1}


# --- Reading: STOW-RS request bodies --------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part of a multipart/related body."""

    headers: Mapping[str, str]  # lower-cased names; a header given twice keeps its first value
    content_type: str  # the part's Content-Type as sent, "text/plain" when absent (RFC 2046 5.1)
    body: memoryview | bytes  # a view into the request body, not a copy


def read_multipart_related(body: bytes, content_type: str, *, max_parts: int = 1000) -> tuple[str | None, list[Part]]:
    """The `type` parameter of the multipart/related Content-Type (lower-cased, unquoted; None when
    absent) and its parts.

    RFC 2046 5.1.1 framing: the preamble and epilogue are ignored, a delimiter is a line break then
    "--" and the boundary at the start of a line (the first may open the body), optional spaces or
    tabs, and a line break; "--boundary--" closes. Lenient where senders differ: bare LF line breaks,
    no line break after the closing delimiter (dicomweb-client ends its STOW-RS body there), part
    headers folded (RFC 5322 2.2.3, unfolded with one space). A boundary string that is not at the
    start of a line, or not followed by padding and a line break (or "--"), is part content.
    Raises UnsupportedMediaType for another media type, InvalidRequest for a malformed body; the
    messages are fixed text.
    """
    parsed = _MEDIA_TYPE.match(content_type)
    if parsed is None or f"{parsed[1]}/{parsed[2]}".lower() != MULTIPART_RELATED:
        raise UnsupportedMediaType(NOT_MULTIPART)
    pairs = _parameters(content_type, parsed.end())
    if pairs is None or len({name for name, _ in pairs}) != len(pairs):
        raise InvalidRequest(BAD_CONTENT_TYPE)
    params = dict(pairs)
    boundary = params.get("boundary", "")
    if not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH or not boundary.isascii() or not boundary.isprintable():
        raise InvalidRequest(BAD_BOUNDARY)
    type_parameter = params["type"].lower() if "type" in params else None
    return type_parameter, _split_parts(body, b"--" + boundary.encode("ascii"), max_parts)


def _split_parts(body: bytes, delimiter: bytes, max_parts: int) -> list[Part]:
    view = memoryview(body)
    line = _delimiter_line(body, len(delimiter)) if body.startswith(delimiter) else None
    if line is None:
        found = _next_delimiter(body, delimiter, 0)
        if found is None:
            raise InvalidRequest(NO_DELIMITER)
        _, closing, start = found
    else:
        closing, start = line
    parts: list[Part] = []
    while not closing:
        found = _next_delimiter(body, delimiter, start)
        if found is None:
            raise InvalidRequest(TRUNCATED)
        end, closing, next_start = found
        if len(parts) == max_parts:
            raise InvalidRequest(f"The multipart body has more than {max_parts} parts.")
        parts.append(_read_part(body, view, start, max(end, start)))
        start = next_start
    return parts


def _next_delimiter(body: bytes, delimiter: bytes, start: int) -> tuple[int, bool, int] | None:
    """(where the content before it ends, whether it closes, where what follows it starts) of the
    first delimiter line at or after start, or None."""
    needle = b"\n" + delimiter
    while (at := body.find(needle, start)) >= 0:
        line = _delimiter_line(body, at + len(needle))
        if line is not None:
            content_end = at - 1 if at > 0 and body[at - 1] == 0x0D else at  # the CR of CRLF
            return content_end, line[0], line[1]
        start = at + 1
    return None


def _delimiter_line(body: bytes, after: int) -> tuple[bool, int] | None:
    """What follows "--boundary" at after: (True, after "--") for the close delimiter, (False, past
    the line break) for a delimiter, None when the boundary string is only the start of a line of content."""
    if body.startswith(b"--", after):
        return True, after + 2
    padding = _PADDING_AND_LINE_BREAK.match(body, after)
    return (False, padding.end()) if padding else None


def _read_part(body: bytes, view: memoryview, start: int, end: int) -> Part:
    if body.startswith(b"\r\n", start, end):
        headers_end, content_start = start, start + 2
    elif body.startswith(b"\n", start, end):
        headers_end, content_start = start, start + 1
    else:
        # The first empty line, CRLF or bare LF: "\n\r\n" or "\n\n", whichever comes first.
        crlf = body.find(b"\n\r\n", start, end)
        lf = body.find(b"\n\n", start, end if crlf < 0 else crlf + 1)
        if lf >= 0:
            headers_end, content_start = lf + 1, lf + 2
        elif crlf >= 0:
            headers_end, content_start = crlf + 1, crlf + 3
        else:
            raise InvalidRequest(NO_SEPARATOR)
    headers = _part_headers(body[start:headers_end])
    return Part(headers=headers, content_type=headers.get("content-type", "text/plain"), body=view[content_start:end])


def _part_headers(raw: bytes) -> dict[str, str]:
    fields: list[list[str]] = []
    for line in raw.decode("latin-1").split("\n"):
        line = line.removesuffix("\r")
        if not line:
            continue
        if line[0] in " \t":  # a folded continuation of the field before it
            if not fields:
                raise InvalidRequest(BAD_PART_HEADER)
            fields[-1][1] = f"{fields[-1][1]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise InvalidRequest(BAD_PART_HEADER)
        fields.append([name.lower(), value.strip()])
    headers: dict[str, str] = {}
    for name, value in fields:
        headers.setdefault(name, value.strip())
    return headers


# --- Writing: WADO-RS response bodies -------------------------------------------------------------


def write_multipart_related(
    parts: Sequence[tuple[str, bytes | memoryview]], *, type_parameter: str, boundary: str | None = None
) -> tuple[str, bytes]:
    """(the Content-Type header value, the body) for parts given as (part Content-Type, bytes).

    The body begins with the first boundary line, each part has exactly one header, and it ends with
    the close delimiter and CRLF:

        --<boundary>\\r\\nContent-Type: <part type>\\r\\n\\r\\n<bytes>
        \\r\\n--<boundary>\\r\\nContent-Type: <part type>\\r\\n\\r\\n<bytes> ...
        \\r\\n--<boundary>--\\r\\n

    What the readers need of it:
      - Cornerstone (extractMultipart.ts) reads only the first part: the header block is everything
        up to the body's first CRLF CRLF, its boundary is the first line of that block that starts
        with "--" (so the body starts with the boundary line, no preamble, no padding after it), the
        part's type is the line that starts exactly "Content-Type:", and the content ends 2 bytes
        (the CRLF) before the next occurrence of "--<boundary>" anywhere.
      - dicomweb-client JS (message.js multipartDecode) also takes the boundary from the first line
        starting with "--" within the first 1000 bytes, expects it at offset 0, each part's header
        block to end within 1000 bytes, and a part to end 2 bytes before the next "--<boundary>".
      - dicomweb-client (web.py _decode_multipart_message) takes the boundary from the Content-Type
        (split on ";", `value.strip('"')`: quoted or not), splits the body at each "\\r\\n--<boundary>",
        drops a segment that is "--" or starts with "--\\r\\n" (what follows the close delimiter), and
        keeps what follows the first CRLF CRLF of every other segment (the first segment is
        "--<boundary>\\r\\nContent-Type: ...", so its header block is skipped like the others).
    All three find the boundary by a plain search, so it must not occur in any part: a random
    boundary (uuid4 hex) is drawn again when it does; a given one that does raises ValueError.

    The Content-Type is `multipart/related; type="<type_parameter>"; boundary=<boundary>`: the type
    must be quoted (a "/" is not a token character, RFC 9110 5.6.6), the uuid4 hex boundary is a token
    and is sent bare (quoted only when it is not one), as in PS3.18 8.7.3.5.2's examples.
    """
    if not parts:
        raise ValueError("a multipart/related body needs at least one part (RFC 2046 5.1.1)")
    if any(char in type_parameter for char in '"\\\r\n') or parse_media_type(type_parameter) is None:
        raise ValueError("type_parameter must be a media type")
    if any(
        not (part_type.isascii() and part_type.isprintable()) or parse_media_type(part_type) is None
        for part_type, _ in parts
    ):
        raise ValueError("each part's Content-Type must be a media type on one line")
    if boundary is not None and not _BOUNDARY.fullmatch(boundary):
        raise ValueError("boundary must be 1 to 70 RFC 2046 bchars, not ending in a space")
    for _ in range(8):
        chosen = boundary if boundary is not None else uuid.uuid4().hex
        body = _join_parts(parts, chosen.encode("ascii"))
        # Each delimiter line holds the boundary once; any further occurrence is in a part (it cannot
        # straddle a part's edge: the fixed text around the parts separates them with CRLF).
        if body.count(chosen.encode("ascii")) == len(parts) + 1:
            quoted = chosen if _TOKEN.fullmatch(chosen) else f'"{chosen}"'
            return f'{MULTIPART_RELATED}; type="{type_parameter}"; boundary={quoted}', body
        if boundary is not None:
            raise ValueError("the boundary occurs in a part")
    raise RuntimeError("no random boundary was absent from the parts")  # 2**-122 per draw


def _join_parts(parts: Sequence[tuple[str, bytes | memoryview]], boundary: bytes) -> bytes:
    chunks: list[bytes | memoryview] = []
    for index, (part_type, content) in enumerate(parts):
        opening = b"--" if index == 0 else b"\r\n--"
        chunks += (opening + boundary + b"\r\nContent-Type: " + part_type.encode("ascii") + b"\r\n\r\n", content)
    chunks.append(b"\r\n--" + boundary + b"--\r\n")
    return b"".join(chunks)


# --- Accept negotiation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header (RFC 9110 12.5.1)."""

    type: str  # lower-cased, "*" allowed
    subtype: str  # lower-cased, "*" allowed
    params: Mapping[
        str, str
    ]  # lower-cased names, unquoted values (e.g. {"type": "application/dicom", "transfer-syntax": "*"})
    q: float

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"


ANY = MediaRange("*", "*", {}, 1.0)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest q first (stable for equal q); [*/*] when absent or empty.

    Tolerant: quoted and unquoted parameter values, quoted values holding "," or ";", spaces around
    ";" and "=", a parameter after q (PS3.18 8.7.3.5.2's own example puts boundary after q). A range
    that is malformed, or whose q is not a number from 0 to 1, is skipped and the others kept: PS3.18
    8.7.7 has invalid Accept values ignored, and RFC 9110 12.4.2 gives a bad weight no meaning; reading
    it as 1 could make the range the client meant to demote (or rule out) the preferred one. A
    parameter given twice is dropped (PS3.18 8.7.3.5.2: "A DICOM Media Type may only have one Transfer
    Syntax parameter"); OHIF sends `transfer-syntax=<uid>; transfer-syntax=*` when configured with a
    requestTransferSyntaxUID, which leaves that range with its media type's default syntax. A header
    with no valid range is disregarded as RFC 9110 12.5.1 allows: [*/*]. q=0 means "not acceptable"
    and stays in the list for the matching to see.

    PS3.18 8.7.7 (2019 and later) also has a server answer 406 to a request with no Accept header;
    RFC 9110 12.5.1 reads it as */*, which is what this returns: a route that wants the former checks
    for None itself.
    """
    if header is None or not header.strip():
        return [ANY]
    ranges = []
    for element in _LIST_ELEMENT.finditer(header):
        media_range = _media_range(element[0])
        if media_range is not None:
            ranges.append(media_range)
    if not ranges:
        return [ANY]
    return sorted(ranges, key=lambda media_range: -media_range.q)


def _media_range(text: str) -> MediaRange | None:
    if not text.strip():
        return None
    head = _MEDIA_TYPE.match(text)
    if head is None or (head[1] == "*" and head[2] != "*"):
        return None
    pairs = _parameters(text, head.end())
    if pairs is None:
        return None
    weights = [value for name, value in pairs if name == "q"]
    q = 1.0
    if weights:
        if len(weights) > 1 or not _QVALUE.fullmatch(weights[0]) or float(weights[0]) > 1:
            return None
        q = float(weights[0])
    params = _without_repeats([(name, value) for name, value in pairs if name != "q"])
    return MediaRange(head[1].lower(), head[2].lower(), params, q)


def accepts_json(ranges: Sequence[MediaRange]) -> bool:
    """Whether `application/dicom+json` may be sent (QIDO-RS results, WADO-RS metadata).

    Matched by application/dicom+json, application/json (dicomweb-client asks for
    "application/dicom+json, application/json"), application/* and */*, parameters ignored; the most
    specific range that matches decides, and q=0 there rules it out (RFC 9110 12.5.1). The route then
    answers exactly `Content-Type: application/dicom+json`: dicomweb-client (web.py
    _http_post_multipart_application_dicom) compares the whole header value, so
    `application/dicom+json; charset=utf-8` would be read as no answer at all.
    """
    specificity = {DICOM_JSON: 3, "application/json": 2, "application/*": 1, "*/*": 0}
    matching = [(specificity[r.media_type], r.q) for r in ranges if r.media_type in specificity]
    return bool(matching) and max(matching, key=lambda match: match[0])[1] > 0


@dataclass(frozen=True)
class Representation:
    """One form in which the server can send a part: its media type and the transfer syntax of its bytes."""

    media_type: str  # e.g. "application/octet-stream", "image/jls", "application/dicom"
    transfer_syntax: str

    @property
    def part_content_type(self) -> str:
        """The part's Content-Type: the media type and its transfer-syntax parameter (PS3.18 8.7.9).

        Cornerstone decodes a frame in the syntax this names (loadImage.ts
        getTransferSyntaxForContentType reads the part's `transfer-syntax`, and without one assumes
        Implicit VR Little Endian for application/octet-stream, i.e. uncompressed), so a compressed
        frame must say which it is. The UID is unquoted: dicomweb-client JS (message.js addHeaders)
        takes the text after "transfer-syntax=" up to the next ";", quotes included.
        """
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


# Frames decoded to uncompressed pixel data, the default frame representation (PS3.18 Table 8.7.3-4).
DECODED_FRAMES = Representation(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
# Frames as JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1): the stored values, compressed
# without loss; what a frame too large to send decoded (a 2,000 x 2,500 CR: ~10 MB) is sent as.
LOSSLESS_FRAMES = Representation(OCTET_STREAM, JPEG_LOSSLESS_SV1)
# The same bitstream as image/jpeg, whose default syntax it is (PS3.18 Table 8.7.3-5).
LOSSLESS_JPEG_FRAMES = Representation("image/jpeg", JPEG_LOSSLESS_SV1)


def frame_offers(stored_transfer_syntax: str, *, can_decode: bool, can_transcode: bool = False) -> list[Representation]:
    """What the server can send for frames (and the pixel data bulk data) of an instance stored in
    this transfer syntax, in the server's order of preference: the stored form first.

      - native little-endian pixels: application/octet-stream, Explicit VR Little Endian (Table 8.7.3-4);
      - compressed: the stored bitstream as its Table 8.7.3-5 media type (image/jls for JPEG-LS, ...),
        then the same bytes as application/octet-stream with transfer-syntax=<stored> (what
        Cornerstone asks for with `type=application/octet-stream; transfer-syntax=*`, and what
        servers with a "universal" transfer syntax answer), then, when the route can decode them,
        the decoded pixels as application/octet-stream in Explicit VR Little Endian;
      - then, when the route can transcode and the stored syntax is not JPEG Lossless SV1 already,
        the frames re-encoded as JPEG Lossless SV1: as image/jpeg (unless the stored form is lossy,
        LOSSY_SYNTAXES, for which image/jpeg keeps naming the stored bitstream) and as
        application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.70.
    A compressed syntax outside Table 8.7.3-5 (video, deflated images, ...) has only the
    octet-stream forms.
    """
    if stored_transfer_syntax in NATIVE_LITTLE_ENDIAN:
        offers = [DECODED_FRAMES]
    else:
        offers = [Representation(OCTET_STREAM, stored_transfer_syntax)]
        if stored_transfer_syntax in COMPRESSED_MEDIA_TYPES:
            offers.insert(0, Representation(COMPRESSED_MEDIA_TYPES[stored_transfer_syntax], stored_transfer_syntax))
        if can_decode:
            offers.append(DECODED_FRAMES)
    if can_transcode and stored_transfer_syntax != JPEG_LOSSLESS_SV1:
        if stored_transfer_syntax not in LOSSY_SYNTAXES:
            offers.append(LOSSLESS_JPEG_FRAMES)
        offers.append(LOSSLESS_FRAMES)
    return offers


def is_transcoded(choice: Representation, stored_transfer_syntax: str | None) -> bool:
    """Whether sending frames in this representation needs a codec: decoding a compressed (or not
    byte-addressable: None) original, or re-encoding it as JPEG Lossless SV1."""
    if stored_transfer_syntax is None:
        return True
    if choice.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return stored_transfer_syntax not in NATIVE_LITTLE_ENDIAN
    return choice.transfer_syntax != stored_transfer_syntax


def instance_offers(stored_transfer_syntax: str, *, can_transcode: bool) -> list[Representation]:
    """What the server can send for instances stored in this transfer syntax (Table 8.7.3-2):
    application/dicom as stored, then, when the route can transcode, in Explicit VR Little Endian."""
    offers = [Representation(DICOM, stored_transfer_syntax)]
    if can_transcode and stored_transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN:
        offers.append(Representation(DICOM, EXPLICIT_VR_LITTLE_ENDIAN))
    return offers


def multipart_choice(ranges: Sequence[MediaRange], *, offered: Sequence[Representation]) -> Representation | None:
    """The representation to send each part of a multipart/related WADO-RS response in, or None when
    nothing offered is acceptable (the route answers 406, PS3.18 8.7.8.1 step 5).

    `offered` is what the server can send for this resource in its order of preference (frame_offers,
    instance_offers). Each offer's quality is the q of the most specific range that matches it
    (RFC 9110 12.5.1, which PS3.18 8.7.8.1 prioritises by); the highest q wins and the server's order
    breaks ties. A range matches, from least to most specific:
      - `*/*`, `multipart/*`, and `multipart/related` without a type: any offer, i.e. the server's
        choice, which is the first offer (the stored form). PS3.18 8.7.7 has */* stand for the
        Resource Category's default media type instead (Explicit VR Little Endian for frames); a
        route that wants that puts the decoded form first.
      - `multipart/related; type="<range>"` with `transfer-syntax=<uid>`: offers of a media type in
        that range, in that syntax.
      - ... with `transfer-syntax=*`: offers of a media type in that range, in any syntax, so the
        stored one first (PS3.18 8.7.3.5.2: "*" lets the server answer without transcoding).
      - ... with no transfer-syntax and a wildcard type (`*/*`, dicomweb-client's default for frames
        and bulk data; `image/*`): any syntax, as for "*".
      - ... with no transfer-syntax and a media type: that media type's default syntax (Tables
        8.7.3-2, 8.7.3-4, 8.7.3-5; PS3.18 8.7.8.2). When the server cannot send the media type in its
        default syntax, any syntax it has for that media type matches (PS3.18 8.7.3.3: "unless the
        origin server has only access to the pixel data in lossy compressed form ..."), except for
        application/octet-stream, whose bytes say nothing of their encoding: a client that asked for
        it without a syntax reads them as native pixels, so it gets those or a 406.
    The type parameter's aliases image/x-jls and image/x-dicom-rle name image/jls and image/dicom-rle.
    A range that is neither a wildcard nor multipart (a bare `application/dicom` or `image/jpeg`)
    matches no multipart offer, nor does a multipart/related whose type is not a media type.
    """
    best: tuple[float, Representation] | None = None
    for offer in offered:
        matches = [(rank, r.q) for r in ranges if (rank := _specificity(r, offer, offered)) is not None]
        if not matches:
            continue
        q = max(matches, key=lambda match: match[0])[1]
        if q > 0 and (best is None or q > best[0]):
            best = (q, offer)
    return best[1] if best else None


def _specificity(
    media_range: MediaRange, offer: Representation, offered: Sequence[Representation]
) -> tuple[int, int] | None:
    """How specifically the range names the offer (higher is more specific), or None when it does not."""
    if media_range.type == "*":
        return (0, 0)
    if media_range.type != "multipart" or media_range.subtype not in ("*", "related"):
        return None
    if media_range.subtype == "*":
        return (1, 0)
    if "type" not in media_range.params:
        return (2, 0)
    inner = _MEDIA_TYPE.fullmatch(media_range.params["type"].strip())
    if inner is None:
        return None
    kind, subtype = inner[1].lower(), inner[2].lower()
    media_type = MEDIA_TYPE_ALIASES.get(f"{kind}/{subtype}", f"{kind}/{subtype}")
    offer_kind = offer.media_type.partition("/")[0]
    if kind == "*" and subtype == "*":
        type_rank = 3
    elif subtype == "*" and kind == offer_kind:
        type_rank = 4
    elif media_type == offer.media_type:
        type_rank = 5
    else:
        return None
    syntax = media_range.params.get("transfer-syntax")
    if syntax is not None and syntax != "*":
        return (type_rank, 2) if syntax == offer.transfer_syntax else None
    if syntax == "*" or type_rank < 5:
        return (type_rank, 1 if syntax == "*" else 0)
    default = DEFAULT_TRANSFER_SYNTAXES.get(media_type)
    if offer.transfer_syntax == default:
        return (type_rank, 0)
    default_offered = any(o.media_type == media_type and o.transfer_syntax == default for o in offered)
    if media_type != OCTET_STREAM and not default_offered:
        return (type_rank, 0)
    return None
