"""DICOMweb (DICOM PS3.18): QIDO-RS, WADO-RS and STOW-RS on the same store, owners and functions.

    media       multipart/related bodies read (STOW-RS requests) and written (WADO-RS responses), and
                the Accept header negotiated (media type and transfer syntax, DICOM JSON)
    attributes  the attributes QIDO-RS matches and returns, and DICOM JSON elements
    qido        a search request read and checked; its page as DICOM JSON
    wado        searches and retrievals answered from what ingest stored (the images function)
    part10      a stored dataset completed to a Part 10 file (preamble, file meta), without pydicom
    rendered    rendered pictures and decoded frames (the render function: it imports shared.imaging)
    store       STOW-RS (the upload function only: it imports shared.imaging)
    deletion    DELETE of a study, series or instance (the scans function)
    audit_search  who searched for a value: searches found in the audit trail by its keyed hash (ops)

Imported by module (`from shared.dicomweb import media`): this file holds only two constants the
routes share and imports nothing, so the lean images function pays only for what it uses.
"""

DICOMWEB_ROOT = "/api/v1/dicomweb"
# A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
UID_PATTERN = r"^[0-9][0-9.]{0,63}$"
