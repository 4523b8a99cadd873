"""OHIF (the open-source DICOMweb viewer, MIT) in front of a DICOMweb root, for development and tests.

`dist.py` fetches and prunes OHIF's built viewer and writes its configuration; `server.py` serves it
at / and forwards the API to the upstream on the same origin; `python -m scripts.web.ohif` runs it
(`make ohif`).
"""
