"""QIDO-RS searches and WADO-RS retrievals (PS3.18 10.4 and 10.6) on what ingest stored: the answers as
status, headers and body, for the images function to send. No pydicom and no decoding here: frames
and bulk data are byte ranges of the stored files, metadata is the JSON built at ingest.

Every call takes the bearer token (a session's, or a viewer token's for reads) and answers only what
its owner holds: another owner's UIDs, like unknown ones, are 404 on retrieval and [] on search.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from isal import isal_zlib  # ISA-L's deflate (PSF-2.0; ISA-L itself BSD-3-Clause)

from shared import db, storage
from shared.auth import hash_token
from shared.auth.query_hash import hashed_keys
from shared.core.config import get_settings
from shared.core.errors import InvalidRequest, InvalidToken, NotAcceptable, ScanNotFound, StorageUnavailable
from shared.db import instances
from shared.db.audit import Origin
from shared.dicomweb import DICOMWEB_ROOT, media, part10, qido
from shared.dicomweb.attributes import Level

DICOM_JSON = "application/dicom+json"
# Compressing JSON pays from here; below, the gzip header is most of the answer.
GZIP_FROM_BYTES = 1024
# ISA-L's level 1: a 300-slice series' 650 KB of JSON to 18.8 KB in 0.13 ms, where zlib's level 1
# took 1.0 ms for 20.8 KB (and its level 5 ~2.5 ms for 18 KB). A gzip stream of one member, its
# header's MTIME 0: the same JSON always compresses to the same bytes.
GZIP_LEVEL = 1
GZIP_WBITS = 16 + 15  # zlib's convention: 15-bit window, gzip header and trailer
# A study or series retrieval answered in one response: what Lambda can carry (its base64 within 6 MB).
MAX_RETRIEVE_BYTES = storage.MAX_INLINE_BYTES
MAX_FRAMES = 1000
NO_STORE = "no-store"
# Instance and frame bytes never change under DUPLICATE_SOP_POLICY=reject. Under overwrite, a
# correction replaces an instance's bytes at the same URL (new bytes, new ETag): then they are
# revalidated like metadata, which changes while a study arrives.
IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"
# Where the render function answers the frames the images function cannot (decoding needs codecs).
DECODED_ROOT = DICOMWEB_ROOT + "/decoded"


def bytes_cache_control() -> str:
    """Cache-Control of an instance's bytes and what is derived from them alone (frames, renderings)."""
    return IMMUTABLE if get_settings().duplicate_sop_policy == "reject" else REVALIDATE


def warning_header(texts: Sequence[str]) -> dict[str, str]:
    """The `Warning: 299` header naming what a request asked for and the server ignored (PS3.18 8.3.4.1)."""
    return {"Warning": ", ".join(f'299 ctscan-store "{text}"' for text in texts)} if texts else {}


@dataclass(frozen=True)
class Answer:
    """A response: status, headers, body. `held`: a 200 whose body the caller said it holds (frames
    of the file with `sha256`, which the database vouched is still the stored one): send that."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None
    held: bool = False


class NotFound(ScanNotFound):
    """No such study, series, instance or frame for this owner."""

    code = "not_found"


def search(
    *,
    token: str,
    level: Level,
    params: Iterable[tuple[str, str]],
    study_uid: str | None,
    series_uid: str | None,
    accept: str | None,
    origin: Origin,
    retrieve_root: str,
    accept_encoding: str | None = None,
) -> Answer:
    """A QIDO-RS search: the page of DICOM JSON results (gzip when the client takes it), a Warning
    header for what was ignored."""
    if not media.accepts_json(media.parse_accept(accept)):
        raise NotAcceptable("Search results are application/dicom+json (PS3.19 XML is not offered).")
    found = qido.parse_search(level, params, study_uid=study_uid, series_uid=series_uid)
    audit = {"level": level.value, **hashed_keys(found.audit_keys)}
    reader, rows = db.call(
        instances.search,
        token_hash=hash_token(token),
        query=qido.to_query(found),
        audit=audit,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )
    if reader is None:
        raise InvalidToken("Invalid or expired token.")
    warnings = list(found.warnings)
    if qido.more_results(found, rows) and not found.limit_given:
        warnings.append("The number of results exceeded the maximum supported by the server: request more with offset")
    headers = {"Cache-Control": NO_STORE, "Vary": "Accept-Encoding", **warning_header(warnings)}
    body = json.dumps(qido.answer(found, rows, retrieve_root=retrieve_root), separators=(",", ":")).encode()
    if _takes_gzip(accept_encoding) and len(body) >= GZIP_FROM_BYTES:
        body = gzip_body(body)
        headers["Content-Encoding"] = "gzip"
    return Answer(200, body, {"Content-Type": DICOM_JSON, **headers})


def metadata(
    *,
    token: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    accept: str | None,
    accept_encoding: str | None,
    if_none_match: str | None,
    origin: Origin,
    known_etag: str | None = None,
) -> Answer:
    """WADO-RS metadata of a study, series or instance: one JSON array, built from the stored
    descriptions in one query; gzip when the client takes it; 304 when the client holds it.
    `known_etag`: the tag of the JSON the caller (a container's cache) holds for this request; when
    it is still current, the answer is `held` and carries no body."""
    if not media.accepts_json(media.parse_accept(accept)):
        raise NotAcceptable("Metadata is application/dicom+json (PS3.19 XML is not offered).")
    found = db.call(
        instances.read_metadata,
        token_hash=hash_token(token),
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
        known_etag=known_etag,
    )
    if found.reader is None:
        raise InvalidToken("Invalid or expired token.")
    if found.count == 0:
        raise NotFound("No such study, series or instance.")
    # Weak: the same JSON may go out gzipped or not, and is rebuilt byte for byte from the same rows.
    etag = f'W/"{found.etag}"'
    headers = {"ETag": etag, "Cache-Control": REVALIDATE, "Vary": "Accept-Encoding"}
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Answer(304, b"", headers)
    if found.json is None:
        return Answer(200, b"", headers, sha256=found.etag, held=True)
    body = found.json
    # RFC 9110 12.5.3: without Accept-Encoding any coding is acceptable; gzip then only where it must.
    may_gzip = _takes_gzip(accept_encoding) or (accept_encoding is None and len(body) > MAX_RETRIEVE_BYTES)
    if may_gzip and len(body) >= GZIP_FROM_BYTES:
        body = gzip_body(body)
        headers["Content-Encoding"] = "gzip"
    if len(body) > MAX_RETRIEVE_BYTES:
        raise ResponseTooLarge(
            f"The metadata of these {found.count} instances is {len(body):,} bytes, more than one response "
            f"carries ({MAX_RETRIEVE_BYTES:,}): ask with Accept-Encoding: gzip (it compresses many times over), "
            "or for each instance's metadata."
        )
    return Answer(200, body, {"Content-Type": DICOM_JSON, **headers}, sha256=found.etag)


def retrieve(
    *,
    token: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    accept: str | None,
    origin: Origin,
) -> Answer:
    """WADO-RS retrieval of a study, series or instance: its stored files, as they were received,
    in one multipart/related body. Past what one Lambda response carries, a 400 that says to
    retrieve instance by instance (a client that cannot page a series' instances would get a
    truncated study otherwise, or nothing)."""
    ranges = media.parse_accept(accept)
    reader, files = db.call(
        instances.list_files, token_hash=hash_token(token), study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid
    )
    if reader is None:
        raise InvalidToken("Invalid or expired token.")
    if not files:
        raise NotFound("No such study, series or instance.")
    choices = [
        media.multipart_choice(ranges, offered=media.instance_offers(f.transfer_syntax_uid, can_transcode=False))
        for f in files
    ]
    if any(choice is None for choice in choices):
        raise NotAcceptable(
            'Instances are sent as multipart/related; type="application/dicom", in the transfer syntax they '
            "were stored in."
        )
    total = sum(f.size for f in files)
    if total > MAX_RETRIEVE_BYTES:
        raise ResponseTooLarge(
            f"These {len(files)} instances hold {total:,} bytes, more than one response can carry "
            f"({MAX_RETRIEVE_BYTES:,}): retrieve them one instance at a time "
            "(.../series/{series}/instances lists them; .../instances/{sop} retrieves one)."
        )
    data = db.call(instances.read_files, owner_id=reader, sop_uids=[f.sop_instance_uid for f in files])
    parts = []
    for f, choice in zip(files, choices, strict=True):
        payload = file_bytes(f, data.get(f.sop_instance_uid))
        assert choice is not None
        whole = part10.as_part10(
            payload,
            sop_class_uid=f.sop_class_uid,
            sop_instance_uid=f.sop_instance_uid,
            transfer_syntax_uid=f.transfer_syntax_uid,
        )
        parts.append((choice.part_content_type, whole))
    _audit_retrieval(reader, files, level=_level(series_uid, sop_uid), token=token, origin=origin)
    content_type, body = media.write_multipart_related(parts, type_parameter="application/dicom")
    headers = {"Content-Type": content_type, "Cache-Control": bytes_cache_control() if sop_uid else REVALIDATE}
    if sop_uid:
        headers["ETag"] = f'"{files[0].sha256}"'
    return Answer(200, body, headers)


def frames(
    *,
    token: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str,
    accept: str | None,
    origin: Origin,
    decoded_path: str,
    known_sha256: str | None = None,
) -> Answer:
    """WADO-RS frames: each requested frame's bytes as stored (byte ranges of the file: uncompressed,
    JPEG, JPEG-LS, JPEG 2000, RLE, never decoded here), one part each, in the order asked. A client
    that takes only frames this function would have to decode or re-encode (decoded frames of a
    compressed instance, JPEG Lossless SV1 of one stored otherwise) is redirected (307) to the same
    path under DECODED_ROOT (`decoded_path`: the request's path below DICOMWEB_ROOT and its query
    string), where the render function decodes or transcodes them. Frames past what one response
    carries are a 400 (response_too_large) that names what fits. `known_sha256`: the file whose
    frames the caller holds for this request (a container's cache): when it is still the stored one,
    no bytes are read."""
    numbers = parse_frame_list(frame_list)
    found = db.call(
        instances.read_frames,
        token_hash=hash_token(token),
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        frames=numbers,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
        known_sha256=known_sha256,
    )
    if found.reader is None:
        raise InvalidToken("Invalid or expired token.")
    if found.status == 404:
        raise NotFound("No such instance, or no such frame of it.")
    stored = found.transfer_syntax_uid if found.status == 200 else None
    if stored is None:
        # Frames that are not byte ranges of the file (deflated, big endian): decoded or transcoded only.
        offered = [media.DECODED_FRAMES, media.LOSSLESS_JPEG_FRAMES, media.LOSSLESS_FRAMES]
    else:
        offered = media.frame_offers(stored, can_decode=True, can_transcode=True)
    choice = media.multipart_choice(media.parse_accept(accept), offered=offered)
    if choice is None:
        stored_form = f"in their stored transfer syntax ({stored}), " if stored else ""
        raise NotAcceptable(
            f"Frames of this instance are sent {stored_form}decoded "
            f'(multipart/related; type="application/octet-stream"; transfer-syntax={media.EXPLICIT_VR_LITTLE_ENDIAN}) '
            f"or as JPEG Lossless (transfer-syntax={media.JPEG_LOSSLESS_SV1})."
        )
    if media.is_transcoded(choice, stored):
        # Decoding and encoding need the codecs, which the render function has and this one does not.
        return Answer(307, b"", {"Location": DECODED_ROOT + decoded_path, "Cache-Control": NO_STORE, "Vary": "Accept"})
    total = sum(length for frame in found.frames for _, length in frame.fragments)
    if total > MAX_RETRIEVE_BYTES:
        raise frames_too_large(len(numbers), total, choice)
    headers = {
        "Cache-Control": bytes_cache_control(),
        "ETag": frames_etag(found.sha256 or "", choice, numbers),
        # One URL, several representations: a cache must not answer one Accept with another's frames.
        "Vary": "Accept",
    }
    if known_sha256 is not None and found.sha256 == known_sha256:
        return Answer(200, b"", headers, sha256=found.sha256, held=True)
    parts = [(choice.part_content_type, _frame_bytes(frame, found)) for frame in found.frames]
    content_type, body = media.write_multipart_related(parts, type_parameter=choice.media_type)
    return Answer(200, body, {"Content-Type": content_type, **headers}, sha256=found.sha256)


def frames_etag(sha256: str, choice: media.Representation, numbers: Sequence[int]) -> str:
    """The tag of frames of one file sent in one representation: its media type and transfer syntax
    are part of it, so that decoded and JPEG Lossless answers for the same URL never share a cache entry."""
    return f'"{sha256}-{choice.media_type}-{choice.transfer_syntax}-{",".join(str(n) for n in numbers)}"'


def frames_too_large(
    count: int, size: int, choice: media.Representation, *, at_least: bool = False
) -> ResponseTooLarge:
    """The 400 for frames past what one response carries (`size` bytes, or more than the limit when
    `at_least`), naming what fits: fewer frames per request, and for decoded frames JPEG Lossless."""
    kind = {media.DECODED_FRAMES: "decoded frames", media.LOSSLESS_FRAMES: "frames as JPEG Lossless"}
    amount = f"more than {MAX_RETRIEVE_BYTES:,}" if at_least else f"{size:,}"
    message = (
        f"The {kind.get(choice, 'frames')} asked for ({count}) hold {amount} bytes, more than one response "
        f"can carry ({MAX_RETRIEVE_BYTES:,}): ask for fewer frames per request"
    )
    if choice == media.DECODED_FRAMES:
        message += (
            f', or for them as JPEG Lossless (multipart/related; type="application/octet-stream"; '
            f"transfer-syntax={media.JPEG_LOSSLESS_SV1}), the same values compressed without loss to "
            "typically a third to a half of their decoded size"
        )
    return ResponseTooLarge(message + ".")


def file_bytes(f: instances.InstanceFile, read: bytes | None) -> bytes:
    """A listed file's bytes: `read` from PostgreSQL, or from the S3 tier when None (in S3, or moved
    there since the listing); StorageUnavailable when they are not what was recorded."""
    payload = read if read is not None else _bucket().get(storage.object_key(f.owner_id, f.sha256))
    if len(payload) != f.size:
        raise StorageUnavailable("A stored file came back with a different size than recorded.")
    return payload


def parse_frame_list(text: str) -> list[int]:
    """The frame numbers of a `frames/{list}` path: comma-separated, 1-based; InvalidRequest otherwise."""
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isascii() or not part.isdigit() or len(part) > 9 or int(part) < 1:
            raise InvalidRequest("frames: a comma-separated list of frame numbers, from 1.")
        numbers.append(int(part))
    if not numbers or len(numbers) > MAX_FRAMES:
        raise InvalidRequest(f"frames: 1 to {MAX_FRAMES} frame numbers.")
    return numbers


class ResponseTooLarge(InvalidRequest):
    """A retrieval that no single response can carry: the message says how to page it."""

    code = "response_too_large"


def _frame_bytes(frame: instances.Frame, found: instances.FramesRead) -> bytes:
    if frame.data is not None:
        return frame.data
    if found.sha256 is None:
        raise StorageUnavailable("The frame's file could not be located.")
    owner = found.reader or 0
    key = storage.object_key(owner, found.sha256)
    return b"".join(_bucket().get(key, offset, offset + length) for offset, length in frame.fragments)


def _bucket() -> storage.ObjectStore:
    store = storage.object_store()
    if store is None:
        raise StorageUnavailable("This file is in the S3 tier, but no images bucket is configured.")
    return store


def gzip_body(body: bytes) -> bytes:
    """`body` as a gzip stream (RFC 1952), for Content-Encoding: gzip."""
    return isal_zlib.compress(body, GZIP_LEVEL, wbits=GZIP_WBITS)


def takes_gzip(accept_encoding: str | None) -> bool:
    """Whether the Accept-Encoding header takes gzip (a q of 0 refuses it)."""
    return _takes_gzip(accept_encoding)


def _takes_gzip(accept_encoding: str | None) -> bool:
    for coding in (accept_encoding or "").split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def _level(series_uid: str | None, sop_uid: str | None) -> str:
    return "instance" if sop_uid else "series" if series_uid else "study"


def _audit_retrieval(
    reader: int, files: Sequence[instances.InstanceFile], *, level: str, token: str, origin: Origin
) -> None:
    scan_ids = [f.scan_id for f in files if f.scan_id]
    details = {"level": level, "instances": len(files), "scans": scan_ids[:1000], "objects": len(files) - len(scan_ids)}
    db.call(
        instances.record_retrieval,
        reader=reader,
        token_hash=hash_token(token),
        scan_id=scan_ids[0] if len(files) == 1 and scan_ids else None,
        details=details,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )


def bulkdata(
    *,
    token: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    path: str,
    accept: str | None,
    origin: Origin,
) -> Answer:
    """WADO-RS bulk data (the BulkDataURIs of the metadata): one element's value as stored, a byte
    range of the file, as multipart/related; type="application/octet-stream" (PS3.18 10.4.1.1.4)."""
    offered = [media.Representation(media.OCTET_STREAM, media.EXPLICIT_VR_LITTLE_ENDIAN)]
    if media.multipart_choice(media.parse_accept(accept), offered=offered) is None:
        raise NotAcceptable('Bulk data is sent as multipart/related; type="application/octet-stream".')
    if len(path) > 200 or not _BULK_PATH.fullmatch(path):
        raise NotFound("No such bulk data element.")
    found = db.call(
        instances.read_bulk,
        token_hash=hash_token(token),
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        path=path.upper(),
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )
    if found.reader is None:
        raise InvalidToken("Invalid or expired token.")
    if found.status == 404 or found.sha256 is None:
        raise NotFound("No such instance, or no such bulk data element of it.")
    data = found.data
    if data is None:
        key = storage.object_key(found.reader, found.sha256)
        data = _bucket().get(key, found.offset, found.offset + found.length)
    content_type, body = media.write_multipart_related(
        [("application/octet-stream", data)], type_parameter="application/octet-stream"
    )
    return Answer(
        200,
        body,
        {"Content-Type": content_type, "Cache-Control": bytes_cache_control(), "ETag": f'"{found.sha256}-{path}"'},
    )


def thumbnail(
    *,
    token: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    accept: str | None,
    origin: Origin,
) -> Answer:
    """WADO-RS thumbnail of a study, series or instance (PS3.18 10.4.1.1.5): the stored thumbnail of
    its middle image, JPEG. An object with no image (a report) has none: 404."""
    if not _accepts_jpeg(media.parse_accept(accept)):
        raise NotAcceptable("Thumbnails are image/jpeg.")
    found = db.call(
        instances.read_thumbnail,
        token_hash=hash_token(token),
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )
    if found.reader is None:
        raise InvalidToken("Invalid or expired token.")
    if found.scan_id is None or found.sha256 is None:
        raise NotFound("No such study, series or instance, or no image in it to show.")
    data = found.data
    if data is None:
        data = _bucket().get(storage.object_key(found.reader, found.sha256))
    headers = {"Content-Type": "image/jpeg", "Cache-Control": REVALIDATE, "ETag": f'"{found.sha256}"'}
    return Answer(200, data, headers)


# A bulk data path as shared.dicom names elements: tags (8 hex digits) and item numbers, by ".".
_BULK_PATH = re.compile(r"[0-9A-Fa-f]{8}(\.[0-9]{1,6}\.[0-9A-Fa-f]{8})*")


def _accepts_jpeg(ranges: Sequence[media.MediaRange]) -> bool:
    """Whether image/jpeg may be sent (a thumbnail): the most specific matching range's q decides."""
    specificity = {"image/jpeg": 2, "image/*": 1, "*/*": 0}
    matching = [(specificity[r.media_type], r.q) for r in ranges if r.media_type in specificity]
    return bool(matching) and max(matching, key=lambda match: match[0])[1] > 0
