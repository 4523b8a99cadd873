"""STOW-RS (PS3.18 10.5): a study's instances in one multipart/related request, each stored as the REST
API stores an upload, and the DICOM JSON answer that says which went in and which did not.

An image our pipeline can render is stored exactly as /api/v1/scans/analyze stores a DICOM file
(analysis, renderings, thumbnail, SHA-256 dedup): a scan in the REST API. Every other instance a
study brings (a dose report, key objects, presentation states, a segmentation, RT objects, or an
image in a form we do not render) is stored byte for byte as an object: indexed and retrievable
through DICOMweb, with no renderings, never in the REST scan list. A scanner's study is therefore
never half-refused because it carries a dose report.

Per instance: not DICOM (or no UIDs) fails with 0xC000 (cannot understand); a Study Instance UID
other than the request path's with 0xA900 (the data set does not match the request); a SOP Instance
UID the owner holds in other bytes with 0x0111 (duplicate SOP instance, under
DUPLICATE_SOP_POLICY=reject); the same file again succeeds and stores nothing new. The response is
200 when all were stored, 202 when some were, 409 when none were (PS3.18 10.5.3).

Imported by the upload function only (it pulls in shared.imaging).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from shared import db
from shared.core.errors import DuplicateSopInstance, InvalidImage, InvalidRequest, UnsupportedMediaType
from shared.db import audit, instances
from shared.dicom import InstanceRecord, describe_instance
from shared.dicomweb import media
from shared.scans import instances as dicom_instances
from shared.scans import uploads

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
MAX_PARTS = 500

# Instances with pixel data that are not pictures to analyze: they are stored as objects, never as
# scans with renderings (a segmentation would be "analyzed" as a CT otherwise).
NOT_SCANS = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation
        "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
        "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    }
)


@dataclass(frozen=True)
class Outcome:
    """What became of one part: stored (a scan id or an object), or failed with a reason."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    failure: int | None = None
    scan_id: str | None = None
    new: bool = False


def store_instances(
    *,
    owner_id: int,
    body: bytes,
    content_type: str,
    study_uid: str | None,
    max_pixels: int,
    dense_hu_threshold: float,
    origin: audit.Origin,
) -> list[Outcome]:
    """Store each part of a STOW-RS request; one Outcome per part, in order."""
    kind, parts = media.read_multipart_related(body, content_type, max_parts=MAX_PARTS)
    if kind not in (None, DICOM):
        raise UnsupportedMediaType(
            'Send instances as multipart/related; type="application/dicom" (DICOM JSON with bulk data is not taken).'
        )
    if not parts:
        raise InvalidRequest("The request holds no instances.")
    views = [part.body if _is_dicom(part.content_type) else None for part in parts]
    hashes = [None if view is None else hashlib.sha256(view).hexdigest() for view in views]
    # Which of these files the owner holds already: one query for the whole request, not one per
    # instance (each would also wait for the instance written before it: see below).
    wanted = sorted({h for h in hashes if h})
    held = db.call(db.find_scans_by_hashes, owner_id=owner_id, file_hashes=wanted) if wanted else {}
    outcomes: list[Outcome] = []
    # An image's INSERT goes out without waiting for its answer, and the next instance is analysed
    # and rendered while the database writes it (uploads.send_prepared): the answer is read just
    # before the next INSERT goes out, or at the end.
    in_flight: tuple[int, Outcome, uploads.PendingUpload] | None = None
    for view, file_hash in zip(views, hashes, strict=True):
        if view is None or file_hash is None:
            outcomes.append(Outcome(None, None, None, None, failure=CANNOT_UNDERSTAND))
            continue
        step = _store_part(
            bytes(view),
            file_hash=file_hash,
            held=held,
            owner_id=owner_id,
            study_uid=study_uid,
            max_pixels=max_pixels,
            dense_hu_threshold=dense_hu_threshold,
            origin=origin,
        )
        if isinstance(step, Outcome):
            outcomes.append(step)
            continue
        outcome, prepared = step
        if in_flight is not None:
            _finish(outcomes, *in_flight)
            in_flight = None
        pending = uploads.send_prepared(prepared)
        outcomes.append(outcome)  # until it is finished
        if pending is None:
            _finish(outcomes, len(outcomes) - 1, outcome, prepared)
        else:
            in_flight = (len(outcomes) - 1, outcome, pending)
    if in_flight is not None:
        _finish(outcomes, *in_flight)
    _audit(owner_id, outcomes, origin)
    return outcomes


def _is_dicom(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == DICOM


def _finish(
    outcomes: list[Outcome], index: int, outcome: Outcome, write: uploads.PendingUpload | uploads.PreparedUpload
) -> None:
    """Write a prepared image (or read the answer of its INSERT on its way) into outcomes[index]."""
    try:
        stored = write.finish() if isinstance(write, uploads.PendingUpload) else uploads.store_prepared(write)
    except DuplicateSopInstance:
        outcomes[index] = _failed(outcome, DUPLICATE_SOP_INSTANCE)
        return
    outcomes[index] = _stored(outcome, (stored.scan.id, not stored.duplicate))


def _store_part(
    data: bytes,
    *,
    file_hash: str,
    held: dict[str, db.Scan],
    owner_id: int,
    study_uid: str | None,
    max_pixels: int,
    dense_hu_threshold: float,
    origin: audit.Origin,
) -> Outcome | tuple[Outcome, uploads.PreparedUpload]:
    """What became of one part, or an image ready to write (analysed, rendered, described)."""
    try:
        record = describe_instance(data)
    except InvalidImage:
        return Outcome(None, None, None, None, failure=CANNOT_UNDERSTAND)
    outcome = Outcome(
        record.sop_class_uid, record.sop_instance_uid, record.study_instance_uid, record.series_instance_uid
    )
    if study_uid is not None and record.study_instance_uid != study_uid:
        return _failed(outcome, DOES_NOT_MATCH)
    try:
        if record.has_pixel_data and record.sop_class_uid not in NOT_SCANS:
            if file_hash in held:  # the same file again: a success that stores nothing new
                return _stored(outcome, (held[file_hash].id, False))
            prepared = _prepare_image(
                data,
                record,
                file_hash=file_hash,
                owner_id=owner_id,
                max_pixels=max_pixels,
                threshold=dense_hu_threshold,
                origin=origin,
            )
            if prepared is not None:
                return outcome, prepared
        return _stored(outcome, _store_object(data, record, owner_id=owner_id, origin=origin))
    except DuplicateSopInstance:
        return _failed(outcome, DUPLICATE_SOP_INSTANCE)


def _prepare_image(
    data: bytes,
    record: InstanceRecord,
    *,
    file_hash: str,
    owner_id: int,
    max_pixels: int,
    threshold: float,
    origin: audit.Origin,
) -> uploads.PreparedUpload | None:
    """As /analyze analyses and renders it, ready to write; None when our pipeline does not render it."""
    try:
        return uploads.prepare_upload(
            owner_id=owner_id,
            filename=f"{record.sop_instance_uid}.dcm",
            data=data,
            file_hash=file_hash,
            max_pixels=max_pixels,
            dense_hu_threshold=threshold,
            origin=origin,
            described=record,  # read once: the upload's own description would read the file again
        )
    except InvalidImage:
        # A valid instance whose pixels we cannot render (a colour model, a codec or a size we do not
        # take): the archive keeps it all the same, as an object.
        return None


def _store_object(data: bytes, record: InstanceRecord, *, owner_id: int, origin: audit.Origin) -> tuple[None, bool]:
    """Byte for byte, indexed, no renderings; (None, newly stored)."""
    file_hash = hashlib.sha256(data).hexdigest()
    conflict = dicom_instances.check_duplicate_sop(owner_id=owner_id, record=record, file_hash=file_hash)
    stored = db.call(instances.find_instance, owner_id=owner_id, sop_instance_uid=record.sop_instance_uid)
    if stored is not None and stored.sha256 == file_hash:
        return None, False
    instance = dicom_instances.new_instance(record)
    db.call_once(
        _insert_object,
        replay=_replay_nothing,
        owner_id=owner_id,
        instance=instance,
        data=data,
        file_hash=file_hash,
        conflict=conflict,
        origin=origin,
    )
    return None, True


def _insert_object(
    con: db.Connection,
    *,
    owner_id: int,
    instance: instances.NewInstance,
    data: bytes,
    file_hash: str,
    conflict: dicom_instances.Conflict | None,
    origin: audit.Origin,
    outcome_key: str,
) -> None:
    with db.transaction(con):
        if conflict is not None:
            dicom_instances.remove_replaced(con, owner_id=owner_id, conflict=conflict, origin=origin)
        instances.insert_instance(con, instance=instance, owner_id=owner_id, object_data=data, object_hash=file_hash)
        db.record_outcome(con, key=outcome_key, result={})


def _replay_nothing(con: db.Connection, outcome: dict[str, Any]) -> None:
    """A write whose answer is only that it committed (db.call_once)."""


def _stored(outcome: Outcome, stored: tuple[str | None, bool]) -> Outcome:
    scan_id, new = stored
    return Outcome(
        outcome.sop_class_uid,
        outcome.sop_instance_uid,
        outcome.study_instance_uid,
        outcome.series_instance_uid,
        scan_id=scan_id,
        new=new,
    )


def _failed(outcome: Outcome, reason: int) -> Outcome:
    return Outcome(
        outcome.sop_class_uid,
        outcome.sop_instance_uid,
        outcome.study_instance_uid,
        outcome.series_instance_uid,
        failure=reason,
    )


def _audit(owner_id: int, outcomes: list[Outcome], origin: audit.Origin) -> None:
    stored = [o for o in outcomes if o.failure is None]
    details = {
        "stored": len(stored),
        "new": sum(1 for o in stored if o.new),
        "failed": len(outcomes) - len(stored),
        "scans": [o.scan_id for o in stored if o.scan_id][:1000],
        "objects": sum(1 for o in stored if o.scan_id is None),
    }

    def record(con: db.Connection, *, outcome_key: str) -> None:
        with db.transaction(con):
            audit.record(
                con,
                action=audit.Action.dicomweb_store,
                status=status_of(outcomes),
                origin=origin,
                user_id=owner_id,
                via=audit.Via.token,
                details=details,
            )
            db.record_outcome(con, key=outcome_key, result={})

    db.call_once(record, replay=_replay_nothing)


def status_of(outcomes: list[Outcome]) -> int:
    """200 all stored, 202 some, 409 none (PS3.18 10.5.3)."""
    failed = sum(1 for o in outcomes if o.failure is not None)
    return 200 if failed == 0 else 409 if failed == len(outcomes) else 202


def response_body(outcomes: list[Outcome], *, retrieve_root: str, study_uid: str | None) -> bytes:
    """The Store Instances Response (PS3.18 Table 10.5.3-1) as DICOM JSON."""
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    dataset: dict[str, Any] = {}
    studies = {o.study_instance_uid for o in stored if o.study_instance_uid}
    study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if study is not None:
        dataset["00081190"] = {"vr": "UR", "Value": [f"{retrieve_root}/studies/{study}"]}
    if failed:
        dataset["00081198"] = {"vr": "SQ", "Value": [_item(o, failure=True) for o in failed]}
    if stored:
        dataset["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    **_item(o, failure=False),
                    "00081190": {
                        "vr": "UR",
                        "Value": [
                            f"{retrieve_root}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}"
                            f"/instances/{o.sop_instance_uid}"
                        ],
                    },
                }
                for o in stored
            ],
        }
    return json.dumps(dict(sorted(dataset.items())), separators=(",", ":")).encode()


def _item(outcome: Outcome, *, failure: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": _uid(outcome.sop_class_uid),
        "00081155": _uid(outcome.sop_instance_uid),
    }
    if failure:
        item["00081197"] = {"vr": "US", "Value": [outcome.failure]}
    return dict(sorted(item.items()))


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
