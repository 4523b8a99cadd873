"""DICOM files as DICOMweb instances: what ingest records of each (shared.dicom describes it), and the
rule that an owner never holds two instances with one SOP Instance UID.

DUPLICATE_SOP_POLICY decides what a second file with a UID the owner already holds does: `reject`
(the default, as Orthanc does) refuses it and keeps the stored one; `overwrite` replaces the stored
instance (its scan, renderings and all) and audits the replacement, for sites that send corrections
(a patient merge, a fixed accession number). The same file again is never a conflict: it is the
upload the owner already has.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import db
from shared.core.config import get_settings
from shared.core.errors import DuplicateSopInstance, InvalidImage
from shared.db import audit, instances
from shared.dicom import InstanceRecord, describe_instance


def new_instance(record: InstanceRecord) -> instances.NewInstance:
    """The database's form of what ingest learned of one file."""
    a = record.attributes
    return instances.NewInstance(
        study_instance_uid=record.study_instance_uid,
        series_instance_uid=record.series_instance_uid,
        sop_instance_uid=record.sop_instance_uid,
        sop_class_uid=record.sop_class_uid,
        transfer_syntax_uid=record.transfer_syntax_uid,
        attributes={
            "PatientName": a.patient_name,
            "PatientID": a.patient_id,
            "IssuerOfPatientID": a.issuer_of_patient_id,
            "PatientBirthDate": a.patient_birth_date,
            "PatientSex": a.patient_sex,
            "StudyDate": a.study_date,
            "StudyTime": a.study_time,
            "TimezoneOffsetFromUTC": a.timezone_offset_from_utc,
            "AccessionNumber": a.accession_number,
            "StudyID": a.study_id,
            "StudyDescription": a.study_description,
            "ReferringPhysicianName": a.referring_physician_name,
            "Modality": a.modality,
            "SeriesNumber": a.series_number,
            "SeriesDescription": a.series_description,
            "InstanceNumber": a.instance_number,
        },
        patient_name_keys=a.patient_name_keys,
        referring_physician_keys=a.referring_physician_keys,
        rows=record.rows,
        columns=record.columns,
        number_of_frames=record.number_of_frames,
        metadata_json=record.metadata_json,
        bulk_data={e.path: (e.offset, e.length) for e in record.bulk_data if e.offset is not None},
        frames=record.frames,
    )


def describe(data: bytes) -> InstanceRecord | None:
    """What DICOMweb needs of an uploaded DICOM file; None when the file cannot be an instance (no
    readable header, or no Study, Series or SOP Instance UID): the REST API may still store it as
    a scan, DICOMweb never lists it."""
    try:
        return describe_instance(data)
    except InvalidImage:
        return None


@dataclass(frozen=True)
class Conflict:
    """An instance the owner already holds with a new file's SOP Instance UID but other bytes."""

    stored: instances.StoredInstance


def check_duplicate_sop(*, owner_id: int, record: InstanceRecord, file_hash: str) -> Conflict | None:
    """Under `reject`, DuplicateSopInstance (naming the stored scan) when the owner holds another file
    with this UID; under `overwrite`, the Conflict to replace; None when there is none (or it is
    this very file)."""
    stored = db.call(instances.find_instance, owner_id=owner_id, sop_instance_uid=record.sop_instance_uid)
    if stored is None or stored.sha256 == file_hash:
        return None
    if get_settings().duplicate_sop_policy == "reject":
        where = f" (scan {stored.scan_id})" if stored.scan_id else ""
        raise DuplicateSopInstance(
            f"This owner already holds a different file with this SOP Instance UID{where}; "
            "DUPLICATE_SOP_POLICY=reject keeps the stored one."
        )
    return Conflict(stored)


def remove_replaced(con: db.Connection, *, owner_id: int, conflict: Conflict, origin: audit.Origin) -> None:
    """Delete the instance a new file replaces (DUPLICATE_SOP_POLICY=overwrite), in the caller's
    transaction, and audit the replacement."""
    stored = conflict.stored
    instances.delete_stored(con, owner_id=owner_id, stored=stored)
    audit.record(
        con,
        action=audit.Action.dicomweb_replace,
        status=200,
        origin=origin,
        user_id=owner_id,
        scan_id=stored.scan_id,
        via=audit.Via.token,
        details={"replaced": "scan" if stored.scan_id else "object"},
    )
