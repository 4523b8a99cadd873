"""DICOMweb (DICOM PS3.18): what the STOW-RS, WADO-RS and QIDO-RS routes share.

    media  multipart/related bodies read (STOW-RS requests) and written (WADO-RS responses), and the
           Accept header negotiated (multipart choice of media type and transfer syntax, DICOM JSON)

Imported by module (`from shared.dicomweb import media`): this file imports nothing, and media uses
the standard library alone, so the lean images function can answer WADO-RS without new imports.
"""
