"""What describe_instance() returns: plain frozen dataclasses, free of pydicom, that the store keeps.

Everything here is JSON-able values and byte ranges of the stored file, so that a DICOMweb request
(QIDO-RS search, WADO-RS metadata, frames, bulk data) is answered from the record and a substring
of the stored bytes, never by parsing the file again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BulkElement:
    """A value kept out of the DICOM JSON: where its bytes are in the stored file.

    path: the tag, or inside sequences tag.item index.tag... ("7FE00010", "00283010.0.00283006"),
    upper-case hex; the last segment of the element's BulkDataURI. offset is None when the file's
    values are not byte ranges of it (Deflated Explicit VR Little Endian). The bytes are the value
    as stored: in the file's byte order, and for encapsulated Pixel Data the whole encapsulated value
    (the items with their headers, without the sequence delimiter).
    """

    path: str
    vr: str
    offset: int | None
    length: int


@dataclass(frozen=True)
class QidoAttributes:
    """The attributes QIDO-RS searches and returns, as the file writes them (decoded to str).

    None when the attribute is absent or empty. Person names read "Alphabetic=Ideographic=Phonetic"
    (trailing empty groups left out); the *_keys are each non-empty component group upper-cased with
    trailing "^" removed, for case-insensitive matching.
    """

    patient_name: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    timezone_offset_from_utc: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    instance_number: int | None
    patient_name_keys: tuple[str, ...]
    referring_physician_keys: tuple[str, ...]


@dataclass(frozen=True)
class InstanceRecord:
    """Everything DICOMweb needs about one stored DICOM file.

    metadata_json is the instance's DICOM JSON object (PS3.18 F.2), compact, with a BulkDataURI
    "instances/<SOPInstanceUID>/bulkdata/<path>" for each entry of bulk_data. frames holds, per frame
    (0-based), the (offset, length) of its fragments in the stored file, or None when the frames are
    not byte ranges of it (big endian, deflated, frames not on byte boundaries, video, or an
    encapsulation whose frame boundaries cannot be told safely).
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    has_pixel_data: bool
    rows: int | None
    columns: int | None
    number_of_frames: int
    attributes: QidoAttributes
    metadata_json: str
    bulk_data: tuple[BulkElement, ...]
    frames: tuple[tuple[tuple[int, int], ...], ...] | None
