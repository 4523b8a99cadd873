"""DELETE of a study, series or instance through DICOMweb (as dcm4chee-arc and Google's Healthcare
API offer it, and dicomweb-client's delete_study/delete_series/delete_instance call): the same as
deleting each of its scans through the REST API, and its other objects with them. A session's token
only: a viewer token reads and never deletes. Another owner's or an unknown UID: 404."""

from __future__ import annotations

from shared import db
from shared.db import instances
from shared.db.audit import Origin
from shared.dicomweb import wado


def delete(
    *, owner_id: int, study_uid: str, series_uid: str | None, sop_uid: str | None, origin: Origin
) -> instances.Deleted:
    """Delete every instance of the resource the owner holds; NotFound when there is none."""
    deleted = db.call_once(
        instances.delete_resource,
        replay=instances.replay_delete_resource,
        owner_id=owner_id,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )
    if deleted.instances == 0:
        raise wado.NotFound("No such study, series or instance.")
    return deleted
