"""The scans function's paths and the limits of its parameters: the handler checks them, and
openapi.json states them (scripts/build/openapi.py imports this module, not the handler, whose import
builds the Lambda adapter)."""

from __future__ import annotations

from shared.dicomweb import DICOMWEB_ROOT

MAX_LIMIT = 100
DEFAULT_LIMIT = 20
MAX_CURSOR_LENGTH = 400
SCANS = "/api/v1/scans"
STUDY = DICOMWEB_ROOT + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"
