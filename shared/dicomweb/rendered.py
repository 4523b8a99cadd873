"""WADO-RS rendered resources (PS3.18 10.4.1.1.3 and the parameters of 8.3.5) and transcoded frames:
the pixels of a stored image turned into a picture a browser shows, or into frames in another
transfer syntax (decoded to uncompressed pixel data, or JPEG Lossless SV1). All decode, so all run
where the codecs are (the render function), never in the images function: it answers only byte
ranges, and redirects a request for frames it would have to decode or re-encode here (wado.DECODED_ROOT).

Rendered: instance (its first frame) and one frame, JPEG (the default) or PNG, chosen by the Accept
header or the `accept` parameter. Parameters: `window=center,width[,function]` (linear,
linear-exact or sigmoid; grey images), `viewport=vw,vh[,sx,sy,sw,sh]` (the region shown, its
mirroring by a negative width or height, and the box it is scaled into, aspect ratio kept),
`quality` (1-100, JPEG). `annotation` is ignored with a Warning: nothing is ever burned into a
picture, least of all patient data. Another owner's or an unknown UID is a 404, as everywhere.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared import db, imaging
from shared.auth import hash_token
from shared.core.errors import InvalidRequest, InvalidToken, NotAcceptable
from shared.db import instances
from shared.db.audit import Origin
from shared.dicomweb import media, part10, wado

# The rendered media types offered, in the server's order of preference (PS3.18 Table 8.7.4-1).
RENDERED_TYPES: dict[str, imaging.ImageFormat] = {"image/jpeg": "jpeg", "image/png": "png"}
MAX_VIEWPORT_SIDE = 4096
# Window values beyond these are no real display setting (and overflow float32 windowing).
MAX_WINDOW_MAGNITUDE = 1e7
WINDOW_FUNCTIONS: dict[str, imaging.WindowFunction] = {
    "linear": "LINEAR",
    "linear-exact": "LINEAR_EXACT",
    "sigmoid": "SIGMOID",
}
# Parameters of PS3.18 8.3.5 we accept without acting on them; each named in a Warning.
IGNORED = {
    "annotation": "annotation is not supported: nothing is burned into rendered images",
    "iccprofile": "iccprofile is not supported: images are rendered without an ICC profile",
    "charset": "charset does not apply to rendered images",
}
# Decoded or transcoded frames of one request: what one Lambda response carries, before base64.
MAX_DECODED_BYTES = wado.MAX_RETRIEVE_BYTES
# What the render function sends frames as, in its order of preference (decoded, the default of
# application/octet-stream, first).
TRANSCODED_OFFERS = (media.DECODED_FRAMES, media.LOSSLESS_JPEG_FRAMES, media.LOSSLESS_FRAMES)


@dataclass(frozen=True)
class Rendering:
    """A rendered request's parameters, checked: the picture's format and how to draw it."""

    media_type: str
    window: imaging.Window | None
    viewport: imaging.Viewport | None
    quality: int | None
    warnings: tuple[str, ...]

    @property
    def image_format(self) -> imaging.ImageFormat:
        return RENDERED_TYPES[self.media_type]

    def etag(self, sha256: str, frame: int) -> str:
        """A strong tag of this picture: the file's hash, the frame and every parameter that shapes it."""
        shape = repr((self.media_type, self.window, self.viewport, self.quality, frame))
        return f'"{sha256}-{hashlib.sha256(shape.encode()).hexdigest()[:16]}"'


def parse_rendering(params: Iterable[tuple[str, str]], accept: str | None) -> Rendering:
    """The rendered request's query parameters and Accept header: a Rendering, InvalidRequest (400)
    for a malformed or repeated parameter, NotAcceptable (406) when neither JPEG nor PNG is taken."""
    seen: dict[str, str] = {}
    warnings: list[str] = []
    for name, value in params:
        if name in seen:
            raise InvalidRequest(f"{name}: give it once.")
        seen[name] = value
        if name in IGNORED:
            warnings.append(IGNORED[name])
    ranges = media.parse_accept(seen.get("accept", accept))
    media_type = _rendered_type(ranges)
    if media_type is None:
        raise NotAcceptable("Rendered images are image/jpeg or image/png.")
    quality = _quality(seen["quality"]) if "quality" in seen else None
    window = _window(seen["window"]) if "window" in seen else None
    viewport = _viewport(seen["viewport"]) if "viewport" in seen else None
    return Rendering(media_type, window, viewport, quality, tuple(warnings))


def _rendered_type(ranges: Sequence[media.MediaRange]) -> str | None:
    """The offered type the client prefers (the most specific matching range's q; ours breaks ties)."""
    best: tuple[float, str] | None = None
    for offer in RENDERED_TYPES:
        kind = offer.partition("/")[0]
        matching = [
            (2 if r.media_type == offer else 1 if r.media_type == f"{kind}/*" else 0, r.q)
            for r in ranges
            if r.media_type in (offer, f"{kind}/*", "*/*")
        ]
        if not matching:
            continue
        q = max(matching)[1]
        if q > 0 and (best is None or q > best[0]):
            best = (q, offer)
    return best[1] if best else None


def _number(text: str, name: str) -> float:
    try:
        number = float(text.strip())
    except ValueError:
        raise InvalidRequest(f"{name}: {text!r} is not a number.") from None
    if not math.isfinite(number) or abs(number) > MAX_WINDOW_MAGNITUDE:
        raise InvalidRequest(f"{name}: {text!r} is out of range.")
    return number


def _integer(text: str, name: str, *, minimum: int, maximum: int) -> int:
    text = text.strip()
    digits = text.removeprefix("-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 6:
        raise InvalidRequest(f"{name}: {text!r} is not a whole number.")
    number = int(text)
    if not minimum <= number <= maximum:
        raise InvalidRequest(f"{name}: {number} is not between {minimum} and {maximum}.")
    return number


def _quality(text: str) -> int:
    return _integer(text, "quality", minimum=1, maximum=100)


def _window(text: str) -> imaging.Window:
    """window=center,width[,function] (PS3.18 8.3.5.1.4), in the image's rescaled units (HU for CT)."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise InvalidRequest("window: center,width,function (function: linear, linear-exact or sigmoid).")
    center, width = _number(parts[0], "window center"), _number(parts[1], "window width")
    name = parts[2].strip().lower().replace("_", "-") if len(parts) == 3 else "linear"
    function = WINDOW_FUNCTIONS.get(name)
    if function is None:
        raise InvalidRequest(f"window: the function is linear, linear-exact or sigmoid, not {parts[2].strip()!r}.")
    # PS3.3 C.11.2.1.2: a linear window is at least 1 wide; the others more than 0.
    if function == "LINEAR" and width < 1:
        raise InvalidRequest("window: a linear window's width is at least 1.")
    if width <= 0:
        raise InvalidRequest(f"window: a {name} window's width is more than 0.")
    return imaging.Window(center=center, width=width, function=function, source="file")


def _viewport(text: str) -> imaging.Viewport:
    """viewport=vw,vh[,sx,sy,sw,sh] (PS3.18 8.3.5.1.3)."""
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise InvalidRequest("viewport: vw,vh or vw,vh,sx,sy,sw,sh (whole pixels).")
    width = _integer(parts[0], "viewport width", minimum=1, maximum=MAX_VIEWPORT_SIDE)
    height = _integer(parts[1], "viewport height", minimum=1, maximum=MAX_VIEWPORT_SIDE)
    if len(parts) == 2:
        return imaging.Viewport(width, height)
    x = _integer(parts[2], "viewport sx", minimum=0, maximum=999_999)
    y = _integer(parts[3], "viewport sy", minimum=0, maximum=999_999)
    region_width = _integer(parts[4], "viewport sw", minimum=-999_999, maximum=999_999)
    region_height = _integer(parts[5], "viewport sh", minimum=-999_999, maximum=999_999)
    if region_width == 0 or region_height == 0:
        raise InvalidRequest("viewport: the region's width and height are not 0.")
    return imaging.Viewport(width, height, (x, y, region_width, region_height))


@dataclass(frozen=True)
class _Image:
    """The stored file of one image instance, read for decoding."""

    reader: int
    file: instances.InstanceFile
    data: bytes


def _read_image(*, token: str, study_uid: str, series_uid: str, sop_uid: str) -> _Image:
    reader, files = db.call(
        instances.list_files, token_hash=hash_token(token), study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid
    )
    if reader is None:
        raise InvalidToken("Invalid or expired token.")
    if not files:
        raise wado.NotFound("No such instance.")
    found = files[0]
    if not found.is_image or found.number_of_frames < 1:
        raise NotAcceptable("This instance holds no image to render or decode (a report, a segmentation, ...).")
    read = db.call(instances.read_files, owner_id=reader, sop_uids=[found.sop_instance_uid])
    stored = wado.file_bytes(found, read.get(found.sop_instance_uid))
    # As received: a STOW-RS part may be a dataset with its file meta but without the preamble.
    whole = part10.as_part10(
        stored,
        sop_class_uid=found.sop_class_uid,
        sop_instance_uid=found.sop_instance_uid,
        transfer_syntax_uid=found.transfer_syntax_uid,
    )
    return _Image(reader, found, whole)


def rendered(
    *,
    token: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str | None,
    params: Iterable[tuple[str, str]],
    accept: str | None,
    origin: Origin,
) -> wado.Answer:
    """An instance (its first frame) or one frame of it rendered as JPEG or PNG; audited as a retrieval."""
    rendering = parse_rendering(params, accept)
    frame = 1
    if frame_list is not None:
        numbers = wado.parse_frame_list(frame_list)
        if len(numbers) != 1:
            raise InvalidRequest("frames/{frames}/rendered: one frame per request (a JPEG or PNG is one picture).")
        frame = numbers[0]
    image = _read_image(token=token, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    if frame > image.file.number_of_frames:
        raise wado.NotFound(f"No frame {frame}: this instance has {image.file.number_of_frames}.")
    picture = imaging.render_dicom_frame(
        image.data,
        frame_index=frame - 1,
        window=rendering.window,
        viewport=rendering.viewport,
        image_format=rendering.image_format,
        quality=rendering.quality,
    )
    _audit(image, level="frame.rendered" if frame_list is not None else "instance.rendered", token=token, origin=origin)
    headers = {
        "Content-Type": rendering.media_type,
        "Cache-Control": wado.bytes_cache_control(),
        "ETag": rendering.etag(image.file.sha256, frame),
        **wado.warning_header(rendering.warnings),
    }
    return wado.Answer(200, picture, headers)


def transcoded_frames(
    *,
    token: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str,
    accept: str | None,
    origin: Origin,
) -> wado.Answer:
    """WADO-RS frames decoded or transcoded from any stored transfer syntax, one part per frame in the
    order asked (what the images function redirects a client to when it asks for frames it would have
    to decode or re-encode): multipart/related; type="application/octet-stream" in Explicit VR Little
    Endian (decoded), or JPEG Lossless SV1 (transfer-syntax=1.2.840.10008.1.2.4.70, as
    application/octet-stream or image/jpeg): the stored values compressed without loss, which is how
    a frame too large to send decoded comes. Past what one response carries: 400 response_too_large."""
    choice = media.multipart_choice(media.parse_accept(accept), offered=TRANSCODED_OFFERS)
    if choice is None:
        raise NotAcceptable(
            'Transcoded frames are multipart/related; type="application/octet-stream", decoded '
            f"(transfer-syntax={media.EXPLICIT_VR_LITTLE_ENDIAN}) or JPEG Lossless "
            f"(transfer-syntax={media.JPEG_LOSSLESS_SV1}; also as image/jpeg)."
        )
    numbers = wado.parse_frame_list(frame_list)
    image = _read_image(token=token, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    count = image.file.number_of_frames
    if max(numbers) > count:
        raise wado.NotFound(f"No frame {max(numbers)}: this instance has {count}.")
    indices = [n - 1 for n in numbers]
    if choice == media.DECODED_FRAMES:
        values = imaging.decode_dicom_frames(image.data, frame_indices=indices)
        level = "frame.decoded"
    else:
        values = imaging.encode_dicom_frames_lossless(image.data, frame_indices=indices, limit_bytes=MAX_DECODED_BYTES)
        level = "frame.transcoded"
    total = sum(len(v) for v in values)
    if total > MAX_DECODED_BYTES:
        raise wado.frames_too_large(len(numbers), total, choice, at_least=len(values) < len(numbers))
    content_type, body = media.write_multipart_related(
        [(choice.part_content_type, v) for v in values], type_parameter=choice.media_type
    )
    _audit(image, level=level, token=token, origin=origin)
    headers = {
        "Content-Type": content_type,
        "Cache-Control": wado.bytes_cache_control(),
        "ETag": wado.frames_etag(image.file.sha256, choice, numbers),
        "Vary": "Accept",
    }
    return wado.Answer(200, body, headers)


def _audit(image: _Image, *, level: str, token: str, origin: Origin) -> None:
    details = {"level": level, "instances": 1, "scans": [image.file.scan_id], "objects": 0}
    db.call(
        instances.record_retrieval,
        reader=image.reader,
        token_hash=hash_token(token),
        scan_id=image.file.scan_id,
        details=details,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )
