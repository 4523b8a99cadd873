"""DICOM for DICOMweb: one file's bytes, read once at ingest, to everything the DICOMweb service needs.

The front door: `describe_instance(data) -> InstanceRecord` and the record types. Each name loads
its module on first use (shared/core/front_door.py): the record types need no pydicom, so code that
only reads stored records never loads it.

    record         InstanceRecord, QidoAttributes, BulkElement: what the store keeps (no pydicom)
    describe       describe_instance(): UIDs, transfer syntax, the DICOM JSON, bulk data, frames
    read           the guarded read: Part 10 or bare, deflate with a cap, truncation, offsets of values
    json_model     the DICOM JSON object (PS3.18 F.2) and its bulk data, in one walk of the dataset
    elements       one element's value to JSON: VRs, numbers, character sets
    encapsulated   the items of encapsulated Pixel Data
    frames         the frame table: byte ranges of each frame in the stored file
    qido           the QIDO-RS attributes, from the DICOM JSON

pydicom only: no numpy, Pillow or shared.imaging, so the service never loads the imaging stack.
"""

from typing import TYPE_CHECKING

from shared.core.front_door import lazy_exports

if TYPE_CHECKING:
    from shared.dicom.describe import describe_instance
    from shared.dicom.record import BulkElement, InstanceRecord, QidoAttributes
else:  # each name loads with its module on first use (shared/core/front_door.py)
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "describe": ("describe_instance",),
            "record": ("BulkElement", "InstanceRecord", "QidoAttributes"),
        },
    )

__all__ = ["BulkElement", "InstanceRecord", "QidoAttributes", "describe_instance"]
