"""DICOMweb (DICOM PS3.18): QIDO-RS, WADO-RS and STOW-RS on the same store, owners and functions.

    attributes  the attributes QIDO-RS matches and returns, and DICOM JSON elements
    qido        a search request read and checked; its page as DICOM JSON
    wado        searches and retrievals answered from what ingest stored (the images function)
    store       STOW-RS (the upload function: it imports shared.imaging)
    media       multipart/related and Accept negotiation

This file holds only the names the functions' routes share.
"""

DICOMWEB_ROOT = "/api/v1/dicomweb"
# A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
UID_PATTERN = r"^[0-9][0-9.]{0,63}$"
