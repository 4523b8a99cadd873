"""Who searched for this patient? DICOMweb searches found in the audit trail by one query value, for
ops (the admin function's audit_search action, `make audit-search`): IHE ATNA's Query event,
answered without the trail holding the value.

A search's audit row keeps, per query key, HMAC-SHA256(key, "<Keyword>=<value>") and the key's id
(shared.auth.query_hash). Here the value asked about is made what the search hashed (qido.audit_value:
stripped; a person name upper-cased, so `Doe^Jane` finds a search for `DOE^JANE`), hashed under every
key there is (rows written before a rotation carry an older key's id) and looked up by hash and key
id. Two forms are looked for: the value as given, and `*value*`, which is what a viewer sends for what
was typed into its study list (OHIF wraps PatientName, PatientID, AccessionNumber and
StudyDescription so), for every key a search may match with wildcards. Any other pattern (`Doe*`) is
found by asking for that pattern. A StudyDate range sent with a StudyTime range is hashed as one
value, "<dates> <times>" under StudyDate.

The lookup is audited itself (admin.audit_search), in the same transaction, with the value's keyed
hash and the number of searches found: "who looked this patient up in the trail" has the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared import db
from shared.auth import query_hash
from shared.core.errors import InvalidRequest
from shared.db import audit
from shared.db.audit import Action, Origin, SearchEvent, Via
from shared.dicomweb import qido
from shared.dicomweb.attributes import Attribute

MAX_LIMIT = 1000


class Form(StrEnum):
    """Which form of the value a search sent."""

    exact = "exact"  # the value as given (normalized as the search normalized it)
    wildcard = "wildcard"  # *value*, as a viewer's study list sends it


@dataclass(frozen=True)
class FoundSearch:
    """A search that sent the value: its audit row, the key id it was hashed with and the form sent."""

    event: SearchEvent
    kid: str
    form: Form

    def as_json(self) -> dict[str, Any]:
        e = self.event
        return {
            "at": e.at.isoformat(),
            "userId": e.user_id,
            "username": e.username,
            "level": e.level,
            "results": e.results,
            "queryKeys": e.query_keys,
            "form": self.form.value,
            "kid": self.kid,
            "via": e.via,
            "status": e.status,
            "sourceIp": e.source_ip,
            "requestId": e.request_id,
        }


@dataclass(frozen=True)
class Lookup:
    """An audit search's answer: the keyword, each form's value as hashed, the searches newest first."""

    keyword: str
    forms: dict[Form, str]
    searches: list[FoundSearch]

    def as_json(self) -> dict[str, Any]:
        return {
            "keyword": self.keyword,
            "searchedFor": {form.value: value for form, value in self.forms.items()},
            "events": [found.as_json() for found in self.searches],
        }


def value_forms(attribute: Attribute, value: str) -> dict[Form, str]:
    """The forms of a value a search may have sent, each as the search hashed it; InvalidRequest when
    no search could have sent it (universal matching leaves no key in the trail; too long is a 400)."""
    stripped = value.strip()
    if not stripped or stripped == "*":
        raise InvalidRequest("Give a value: a search for nothing or `*` matches everything and hashes no value.")
    if len(stripped) > qido.MAX_VALUE_LENGTH:
        raise InvalidRequest(f"value: at most {qido.MAX_VALUE_LENGTH} characters, as a search allows.")
    forms = {Form.exact: qido.audit_value(attribute, stripped)}
    wrapped = len(stripped) > 1 and stripped.startswith("*") and stripped.endswith("*")
    if qido.takes_wildcards(attribute) and not wrapped:
        forms[Form.wildcard] = qido.audit_value(attribute, f"*{stripped}*")
    return forms


def find_searches(*, keyword: str, value: str, limit: int, origin: Origin) -> Lookup:
    """The DICOMweb searches that sent `value` for `keyword` (a keyword or tag, as a search takes it),
    newest first, at most `limit`; audited. InvalidRequest for an unknown keyword, a value no search
    could have sent, or a limit outside 1 to MAX_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}.")
    attribute = qido.matching_attribute(keyword)
    forms = value_forms(attribute, value)
    # Read now, not from this container's cache: a key put in front since it started would be missed.
    keys = query_hash.current_audit_keys()
    tried: list[tuple[str, Form]] = []
    hashes: list[tuple[str, str]] = []
    for key in keys:
        for form, sent in forms.items():
            tried.append((key.kid, form))
            hashes.append((key.kid, query_hash.digest(key, attribute.keyword, sent)))
    lookup_details = {
        "kid": keys[0].kid,
        "keys": {attribute.keyword: query_hash.digest(keys[0], attribute.keyword, forms[Form.exact])},
    }

    def read(con: db.Connection) -> list[SearchEvent]:
        with db.transaction(con):
            events = audit.find_searches(con, keyword=attribute.keyword, hashes=hashes, limit=limit)
            audit.record(
                con,
                action=Action.admin_audit_search,
                status=200,
                origin=origin,
                via=Via.admin,
                details={**lookup_details, "results": len(events)},
            )
        return events

    events = db.call(read)
    found = [FoundSearch(event, *tried[event.hash_index]) for event in events]
    return Lookup(attribute.keyword, forms, found)
