"""QIDO-RS search requests (PS3.18 10.6): the query string read into a Search, validated, with the
matching rules of PS3.4 C.2.2.2 that the database then applies (shared.db.instances).

- Keys by keyword or tag; an empty value asks for the attribute back (universal matching).
- UIDs: a list, separated by commas or backslashes (list of UID matching).
- Person names: case-insensitive, `*` and `?` wildcards, `*` spanning the `^` separators, matched
  against each component group (alphabetic, ideographic, phonetic) as OHIF needs.
- Other strings: `*` and `?` wildcards, case-sensitive (PS3.4 C.2.2.2.4), else single value matching.
- Dates and times: a value or a range (`a-b`, `a-`, `-b`), matched as written (no time zone
  conversion); a StudyDate range and a StudyTime range together are one date-time range (C.2.2.2.5.1).
- A key we do not support (or not at this level) is ignored and named in a `Warning: 299` header, as
  PS3.18 8.3.4.1 says; malformed values (a broken date range, a negative limit) are a 400.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.core.errors import InvalidRequest
from shared.db.instances import COLUMNS, Filter, InstanceQuery
from shared.dicomweb.attributes import (
    BY_KEYWORD,
    DEFAULT_RETURNED,
    INSTANCE_AVAILABILITY,
    RETRIEVE_URL,
    SPECIFIC_CHARACTER_SET,
    Attribute,
    Level,
    dataset,
    lookup,
)

# The most results one page holds; a client pages on with offset (dicomweb-client's get_remaining
# asks until a page comes back empty). AWS HealthImaging caps searches at 10,000 records.
MAX_LIMIT = 1000
MAX_OFFSET = 10_000_000
MAX_VALUE_LENGTH = 256
MAX_UIDS = 200

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_INT = re.compile(r"[+-]?\d{1,10}")

# The keys each level matches on. Study keys match at every level (relational queries of
# /series and /instances), series keys at series and instance level, instance keys at instance level.
_MATCHING: Mapping[Level, frozenset[str]] = {
    Level.study: frozenset(
        {
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "ReferringPhysicianName",
            "StudyDescription",
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "StudyInstanceUID",
            "StudyID",
        }
    ),
    Level.series: frozenset({"Modality", "SeriesInstanceUID", "SeriesNumber"}),
    Level.instance: frozenset({"SOPClassUID", "SOPInstanceUID", "InstanceNumber"}),
}
_LEVELS_UP_TO: Mapping[Level, tuple[Level, ...]] = {
    Level.study: (Level.study,),
    Level.series: (Level.study, Level.series),
    Level.instance: (Level.study, Level.series, Level.instance),
}
_RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
# Every key a search matches on at some level: the keys whose values the audit trail holds as keyed hashes.
MATCHING_KEYWORDS = frozenset(keyword for keys in _MATCHING.values() for keyword in keys)
# Matched as UIDs, dates, times, numbers or a list: a `*` in their value is a 400 (or, for
# ModalitiesInStudy, a literal), so no search of them was ever a wildcard search.
_NO_WILDCARDS_VR = frozenset({"UI", "DA", "TM", "IS"})


class MatchKind(StrEnum):
    """How one key is matched."""

    uids = "uids"  # any of a list of UIDs
    exact = "exact"  # single value matching
    pattern = "pattern"  # wildcard matching (LIKE)
    person = "person"  # person name: wildcard or single value, case-insensitive, per component group
    number = "number"  # an integer
    date_range = "date_range"
    time_range = "time_range"
    date_time_range = "date_time_range"  # StudyDate and StudyTime ranges together
    modalities = "modalities"  # the study has an instance of any of these modalities


@dataclass(frozen=True)
class Match:
    """One matching key: what it is matched on and with which values.

    `values` holds the UIDs, the modalities, the single value, the LIKE pattern (with `\\` as its
    escape character) or the integer as text; `low` and `high` bound a range (None: open).
    """

    attribute: Attribute
    kind: MatchKind
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None
    # The value as the client sent it (a person name upper-cased), for the audit trail's keyed hash.
    sent: str = ""


@dataclass(frozen=True)
class Search:
    """A QIDO-RS request: level, the UIDs of its path, the matches, what to return, the page."""

    level: Level
    study_uid: str | None
    series_uid: str | None
    matches: tuple[Match, ...]
    returned: tuple[Attribute, ...]
    # Tags asked for with includefield that are not columns: read from each result's stored metadata.
    extra_tags: tuple[str, ...]
    include_all: bool
    limit: int
    offset: int
    limit_given: bool
    warnings: tuple[str, ...] = field(default=())

    @property
    def audit_keys(self) -> dict[str, str]:
        """Each query key and its value as the client sent it (for a keyed hash: never stored as is)."""
        return {match.attribute.keyword: match.sent for match in self.matches}


def parse_search(
    level: Level, params: Iterable[tuple[str, str]], *, study_uid: str | None = None, series_uid: str | None = None
) -> Search:
    """Read a QIDO-RS query string (its name, value pairs in order) into a Search; InvalidRequest when malformed."""
    for uid in (study_uid, series_uid):
        if uid is not None:
            _check_uid(uid)
    limit, offset, limit_given = MAX_LIMIT, 0, False
    includes: list[str] = []
    keyed: dict[Attribute, str] = {}
    warnings: list[str] = []
    for name, value in params:
        if name == "limit":
            limit, limit_given = _count("limit", value, minimum=0, maximum=None), True
        elif name == "offset":
            offset = _count("offset", value, minimum=0, maximum=MAX_OFFSET)
        elif name == "includefield":
            includes.extend(part.strip() for part in value.split(",") if part.strip())
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidRequest("fuzzymatching must be true or false.")
            if value.lower() == "true":
                warnings.append("fuzzymatching is not supported: names were matched as given")
        else:
            attribute = lookup(name)
            allowed = {key for lvl in _LEVELS_UP_TO[level] for key in _MATCHING[lvl]}
            if attribute is None or attribute.keyword not in allowed:
                warnings.append(f"{_printable(name)} is not a supported matching key at this level: ignored")
                continue
            if attribute in keyed:
                raise InvalidRequest(f"{attribute.keyword} is given more than once.")
            keyed[attribute] = value
    if limit > MAX_LIMIT:
        warnings.append(f"limit is at most {MAX_LIMIT}: the rest can be requested with offset")
        limit = MAX_LIMIT
    matches = _matches(keyed)
    returned, extra_tags, include_all = _returned(level, includes, keyed, warnings)
    return Search(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        matches=matches,
        returned=returned,
        extra_tags=extra_tags,
        include_all=include_all,
        limit=limit,
        offset=offset,
        limit_given=limit_given,
        warnings=tuple(warnings),
    )


def _matches(keyed: Mapping[Attribute, str]) -> tuple[Match, ...]:
    matches: list[Match] = []
    date = BY_KEYWORD["StudyDate"]
    time = BY_KEYWORD["StudyTime"]
    combined = keyed.get(date, "") and keyed.get(time, "") and "-" in keyed[date] and "-" in keyed[time]
    for attribute, raw in keyed.items():
        value = raw.strip()
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidRequest(f"{attribute.keyword}: at most {MAX_VALUE_LENGTH} characters.")
        if not value or value == "*":
            continue  # universal matching: the attribute comes back, nothing is filtered
        if combined and attribute in (date, time):
            if attribute is date:
                both = _date_time_range(keyed[date].strip(), keyed[time].strip())
                matches.append(dataclasses.replace(both, sent=f"{keyed[date].strip()} {keyed[time].strip()}"))
            continue
        matches.append(dataclasses.replace(_match(attribute, value), sent=audit_value(attribute, value)))
    return tuple(matches)


def audit_value(attribute: Attribute, value: str) -> str:
    """A query value as the audit trail hashes it: stripped, a person name normalized (upper-cased).
    A search (Match.sent) and an audit search (shared.dicomweb.audit_search) both take it from here,
    so that `Doe^Jane` asked of the trail is the `DOE^JANE` a viewer searched for."""
    value = value.strip()
    return normalize_person_name(value) if attribute.vr == "PN" else value


def matching_attribute(key: str) -> Attribute:
    """The matching key a keyword or tag names, as a search reads it; InvalidRequest for any other."""
    attribute = lookup(key)
    if attribute is None or attribute.keyword not in MATCHING_KEYWORDS:
        raise InvalidRequest(
            f"{_printable(key)} is not a QIDO-RS matching key: give one of {', '.join(sorted(MATCHING_KEYWORDS))}"
            " (or its tag, 8 hex digits)."
        )
    return attribute


def takes_wildcards(attribute: Attribute) -> bool:
    """Whether a search may match this key with `*` and `?` (names, IDs, descriptions: not UIDs,
    dates, times, numbers or the modalities list)."""
    return attribute.vr not in _NO_WILDCARDS_VR and attribute.keyword != "ModalitiesInStudy"


def _match(attribute: Attribute, value: str) -> Match:
    if attribute.vr == "UI":
        uids = tuple(uid.strip() for uid in re.split(r"[,\\]", value) if uid.strip())
        if not uids or len(uids) > MAX_UIDS:
            raise InvalidRequest(f"{attribute.keyword}: give 1 to {MAX_UIDS} UIDs.")
        for uid in uids:
            _check_uid(uid, attribute.keyword)
        return Match(attribute, MatchKind.uids, uids)
    if attribute.keyword == "ModalitiesInStudy":
        modalities = tuple(m.strip() for m in re.split(r"[,\\]", value) if m.strip())
        return Match(attribute, MatchKind.modalities, modalities)
    if attribute.vr == "DA":
        low, high = _range(attribute.keyword, value, _DATE, "YYYYMMDD")
        return Match(attribute, MatchKind.date_range, low=low, high=high)
    if attribute.vr == "TM":
        low, high = _range(attribute.keyword, value, _TIME, "HHMMSS")
        return Match(attribute, MatchKind.time_range, low=time_key(low, "0"), high=time_key(high, "9"))
    if attribute.vr == "IS":
        if not _INT.fullmatch(value):
            raise InvalidRequest(f"{attribute.keyword} must be a whole number.")
        return Match(attribute, MatchKind.number, (str(int(value)),))
    if attribute.vr == "PN":
        groups = [normalize_person_name(group) for group in value.split("=") if group]
        return Match(attribute, MatchKind.person, tuple(like_pattern(group) for group in groups if group))
    if "*" in value or "?" in value:
        return Match(attribute, MatchKind.pattern, (like_pattern(value),))
    return Match(attribute, MatchKind.exact, (value,))


def _date_time_range(dates: str, times: str) -> Match:
    date_low, date_high = _range("StudyDate", dates, _DATE, "YYYYMMDD")
    time_low, time_high = _range("StudyTime", times, _TIME, "HHMMSS")
    low = None if date_low is None else date_low + (time_key(time_low, "0") or "000000")
    high = None if date_high is None else date_high + (time_key(time_high, "9") or "999999")
    return Match(BY_KEYWORD["StudyDate"], MatchKind.date_time_range, low=low, high=high)


def time_key(value: str | None, pad: str) -> str | None:
    """A TM value as six digits HHMMSS (fractions dropped), padded with `pad` where it stops early:
    `10` is 100000 as a lower bound and 109999 as an upper one. The database keys stored times alike."""
    if value is None:
        return None
    digits = value.split(".", 1)[0]
    return digits + pad * (6 - len(digits))


def _range(keyword: str, value: str, form: re.Pattern[str], shape: str) -> tuple[str | None, str | None]:
    low, dash, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if not dash:
        high = low
    for part in (low, high):
        if part and not form.fullmatch(part):
            raise InvalidRequest(f"{keyword} must be {shape} or a range of them ({shape}-{shape}, {shape}-, -{shape}).")
    if not low and not high:
        raise InvalidRequest(f"{keyword}: a range needs at least one end.")
    if low and high and low > high:
        raise InvalidRequest(f"{keyword}: the range ends before it starts.")
    return low or None, high or None


def normalize_person_name(group: str) -> str:
    """A person name component group as it is matched: upper-case, without trailing `^` separators
    (`Doe^John^^^` is `DOE^JOHN`). Ingest keys stored names the same way (shared.dicom)."""
    return group.strip().upper().rstrip("^")


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern with `\\` as the escape character: `*` is `%`, `?` is `_`."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _returned(
    level: Level, includes: list[str], keyed: Mapping[Attribute, str], warnings: list[str]
) -> tuple[tuple[Attribute, ...], tuple[str, ...], bool]:
    wanted = [BY_KEYWORD[keyword] for keyword in DEFAULT_RETURNED[level]]
    levels = _LEVELS_UP_TO[level]
    extra_tags: list[str] = []
    include_all = False
    # A matching key comes back too (PS3.18 10.6.3.3.1), with what includefield names.
    for key in [*includes, *(attribute.keyword for attribute in keyed)]:
        if key == "all":
            include_all = True
            wanted.extend(a for a in BY_KEYWORD.values() if a.level in levels)
            continue
        attribute = lookup(key)
        if attribute is not None and (attribute.level in levels or level is Level.instance):
            wanted.append(attribute)
            continue
        if attribute is not None:
            # Of a lower level (OHIF asks studies for Modality): the study's first instance's value.
            extra_tags.append(attribute.tag)
            continue
        if _TAG.fullmatch(key):
            extra_tags.append(key.upper())
        else:
            warnings.append(f"includefield {_printable(key)} is not a tag or a keyword we know: ignored")
    unique = tuple(dict.fromkeys(wanted))
    return unique, tuple(dict.fromkeys(extra_tags)), include_all


def _count(name: str, value: str, *, minimum: int, maximum: int | None) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise InvalidRequest(f"{name} must be a whole number of at least {minimum}.")
    number = int(value)
    if maximum is not None and number > maximum:
        raise InvalidRequest(f"{name} must be at most {maximum}.")
    return number


def _check_uid(uid: str, name: str = "UID") -> None:
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise InvalidRequest(f"{name}: a DICOM UID is digits and dots, at most 64 characters.")


def _printable(text: str) -> str:
    """A query key quoted back in a warning: printable ASCII only, cut short (never a value)."""
    cleaned = "".join(ch for ch in text if ch.isascii() and ch.isprintable() and ch not in '"\\')
    return cleaned[:40] or "?"


def to_query(search: Search) -> InstanceQuery:
    """The database's form of a search: column filters, one row more than the page (to tell whether
    results were left over), and the stored metadata when includefield names tags we keep no column for."""
    filters = tuple(
        Filter(match.attribute.keyword, match.kind.value, match.values, match.low, match.high)
        for match in search.matches
    )
    return InstanceQuery(
        level=search.level.value,
        study_uid=search.study_uid,
        series_uid=search.series_uid,
        filters=filters,
        limit=search.limit + 1,
        offset=search.offset,
        with_metadata=bool(search.extra_tags) or (search.include_all and search.level is Level.instance),
    )


# A result row's column -> its attribute keyword, where the two differ from COLUMNS.
_COUNTS = {
    "modalities_in_study": "ModalitiesInStudy",
    "number_of_study_related_series": "NumberOfStudyRelatedSeries",
    "number_of_study_related_instances": "NumberOfStudyRelatedInstances",
    "number_of_series_related_instances": "NumberOfSeriesRelatedInstances",
}


def answer(search: Search, rows: list[dict[str, Any]], *, retrieve_root: str) -> list[dict[str, Any]]:
    """The DICOM JSON datasets of a page of results (PS3.18 F.2), with RetrieveURL under retrieve_root."""
    by_keyword = {keyword: column for keyword, column in COLUMNS.items()}
    by_keyword.update({keyword: column for column, keyword in _COUNTS.items()})
    results = []
    for row in rows[: search.limit]:
        values = [(attribute, row.get(by_keyword[attribute.keyword])) for attribute in search.returned]
        extra: dict[str, dict[str, Any]] = {
            SPECIFIC_CHARACTER_SET: {"vr": "CS", "Value": ["ISO_IR 192"]},
            INSTANCE_AVAILABILITY: {"vr": "CS", "Value": ["ONLINE"]},
            RETRIEVE_URL: {"vr": "UR", "Value": [_retrieve_url(search.level, row, retrieve_root)]},
        }
        stored = row.get("metadata")
        if stored:
            described = json.loads(stored)
            tags = described if search.include_all and search.level is Level.instance else search.extra_tags
            for tag in tags:
                if tag in described:
                    extra.setdefault(tag, described[tag])
        results.append(dataset(values, extra))
    return results


def more_results(search: Search, rows: list[dict[str, Any]]) -> bool:
    """Whether results were left after this page (the query asked for one row more than the page)."""
    return len(rows) > search.limit


def _retrieve_url(level: Level, row: Mapping[str, Any], root: str) -> str:
    url = f"{root}/studies/{row['study_instance_uid']}"
    if level is not Level.study:
        url += f"/series/{row['series_instance_uid']}"
    if level is Level.instance:
        url += f"/instances/{row['sop_instance_uid']}"
    return url
