"""Corrective events: CloudEvents 1.0 carrying the truth state of one drifted entity.

On the wire they use the CloudEvents Kafka protocol binding in *binary* content mode: the
attributes travel as ``ce_*`` headers, the message value is the JSON ``data`` (or nothing at all
— a Kafka tombstone — for an orphan), and the message key is the entity key, so all events of
one entity land in one partition, in order.

The ``id`` is a deterministic idempotency key: the same spec, entity, truth state and episode
always give the same id, so rerunning a correction never mints a second event for the same
drift, and a projector that remembers applied ids applies each correction once. Drift that
comes back after it was resolved is a new episode, so healing it again gets new ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ..compare import jsonable
from ..findings import Finding, FindingKind
from ..schemas import CORRECTIVE_EVENT, datum_validator, shape_decides
from ..spec import Spec

__all__ = [
    "CorrectiveEvent",
    "EventBuilder",
    "EventParts",
    "build_event",
    "event_id",
    "message_key",
    "decode_headers",
]

RUN_ID_HEADER = "reconcile_run_id"
KIND_HEADER = "reconcile_finding_kind"


# The canonical JSON of ids and keys: json.dumps(..., sort_keys=True, separators=(",", ":")) gives
# the same text, but builds a new encoder on every call (a correction makes three per event).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def message_key(key: Mapping[str, Any]) -> str:
    """The Kafka message key (and CloudEvents subject) of an entity: canonical JSON of its key."""
    return _CANONICAL.encode(jsonable(dict(key)))


def event_id(
    spec_name: str, key: Mapping[str, Any], state: Mapping[str, Any] | None, episode: int = 1
) -> str:
    """Same spec, entity, truth state and episode -> same id (32 hex digits).

    The first episode's material leaves the episode out, so ids minted before episodes existed
    stay what they were.
    """
    jstate = jsonable(dict(state)) if state is not None else None
    return _event_id(spec_name, jsonable(dict(key)), jstate, episode)


def _event_id(spec_name: str, key: Any, state: Any, episode: int) -> str:
    """:func:`event_id` of a key and state already in their JSON form."""
    doc: dict[str, Any] = {"spec": spec_name, "key": key, "state": state}
    if episode > 1:
        doc["episode"] = episode
    return hashlib.sha256(_CANONICAL.encode(doc).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CorrectiveEvent:
    """One corrective event, ready for the outbox."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    data: dict[str, Any]
    kind: FindingKind
    run_id: str
    topic: str
    transport: str
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def tombstone(self) -> bool:
        return bool(self.data.get("tombstone"))

    def headers(self) -> dict[str, str]:
        """All headers of the message: CloudEvents attributes, run id, finding kind, extras."""
        h = {
            "ce_specversion": "1.0",
            "ce_id": self.id,
            "ce_source": self.source,
            "ce_type": self.type,
            "ce_subject": self.subject,
            "ce_time": _header_time(self.time),
            RUN_ID_HEADER: self.run_id,
            KIND_HEADER: self.kind.value,
            **self.extra_headers,
        }
        if not self.tombstone:
            h["content-type"] = "application/json"
        return h

    def value(self) -> str | None:
        """The message value: the JSON data, or None (a Kafka tombstone) for an orphan."""
        return None if self.tombstone else _CANONICAL.encode(self.data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject,
            "time": jsonable(self.time),
            "topic": self.topic,
            "kind": self.kind.value,
            "data": self.data,
        }


def build_event(spec: Spec, finding: Finding, run_id: str, now: datetime | None = None) -> CorrectiveEvent:
    """The corrective event for one finding, validated against its schema.

    ``data.key`` and ``data.state`` use the projection's names (or ``correction.payload``
    renames, by truth column), because the projector is the one who reads them.
    """
    return EventBuilder(spec, run_id, now).build(finding)


class EventBuilder:
    """Corrective events of one spec and run (:func:`build_event` for many findings): the
    names, the headers every event shares and the schema are worked out once, not per event."""

    def __init__(self, spec: Spec, run_id: str, now: datetime | None = None):
        if spec.correction is None:
            raise ValueError(f"spec {spec.name} has no correction section")
        c = spec.correction
        self.spec, self.correction, self.run_id, self.now = spec, c, run_id, now
        key_names = {k.truth: k.projection for k in spec.key}
        self.key_names = {**key_names, **{k: v for k, v in c.payload.items() if k in key_names}}
        self.col_names = {n: c.payload.get(n, spec.projection_name(n)) for n in spec.columns}
        self.source = f"reconcile/{spec.name}"
        self.extra_headers = dict(c.headers)
        self.validate = datum_validator(CORRECTIVE_EVENT)
        # Worked out once for :meth:`parts`: whether names change at all, the canonical JSON of
        # the parts every event shares, and each kind's headers with the per-event ones blank.
        self._same_key = all(k == v for k, v in self.key_names.items())
        self._same_cols = all(k == v for k, v in self.col_names.items())
        self._spec_json = _CANONICAL.encode(spec.name)
        self._kind_json = {k: _CANONICAL.encode(k.value) for k in FindingKind}
        self._kind_value = {k: k.value for k in FindingKind}  # an enum's .value is a property call
        self._time = None if now is None else _header_time(now)
        # ce_id, ce_subject and ce_time vary per event, unless the spec's own headers set them
        self._per_event = tuple(h for h in ("ce_id", "ce_subject", "ce_time") if h not in self.extra_headers)
        self._headers = {kind: self._template(kind) for kind in FindingKind}
        # For the flat fast path of :meth:`parts`: the key's names, and each canonical JSON's
        # items in its sorted order as (truth name, '"output name":'), so an event's JSON is its
        # values' JSON put in a fixed order. Names that two columns would share take the
        # general path (a dict keeps the last; not worth a second way of doing it).
        enc = _ENCODE_STR
        self._flat = len(set(self.key_names.values())) == len(self.key_names) and len(
            set(self.col_names.values())
        ) == len(self.col_names)
        self._key_set = frozenset(self.key_names)
        self._id_key = tuple((k, enc(k) + ":") for k in sorted(self.key_names))
        self._subject_key = tuple(
            (k, enc(p) + ":") for p, k in sorted((p, k) for k, p in self.key_names.items())
        )
        self._id_state = tuple((k, enc(k) + ":") for k in sorted(self.col_names))
        self._value_state = tuple(
            (k, enc(p) + ":") for p, k in sorted((p, k) for k, p in self.col_names.items())
        )
        # The schema's verdict on a flat event depends only on its kind and its key's and state's
        # names (in order) and value shapes (as schemas._shape sees them): remembered per
        # signature here, it needs no walk of the datum (None: every datum is checked).
        self._accepted: set[Any] | None = set() if shape_decides(CORRECTIVE_EVENT) else None
        self._set_id, self._set_subject, self._set_time = (
            h in self._per_event for h in ("ce_id", "ce_subject", "ce_time")
        )

    def _template(self, kind: FindingKind) -> dict[str, str]:
        """:meth:`CorrectiveEvent.headers` of an event of this kind, per-event values blank."""
        h = {
            "ce_specversion": "1.0",
            "ce_id": "",
            "ce_source": self.source,
            "ce_type": self.correction.event_type,
            "ce_subject": "",
            "ce_time": "",
            RUN_ID_HEADER: self.run_id,
            KIND_HEADER: kind.value,
            **self.extra_headers,
        }
        if kind is not FindingKind.ORPHAN:
            h["content-type"] = "application/json"
        return h

    def build(self, finding: Finding) -> CorrectiveEvent:
        """The corrective event for one finding (see :func:`build_event`)."""
        return self.event(finding, self.parts(finding))

    def event(self, finding: Finding, parts: EventParts) -> CorrectiveEvent:
        """The :class:`CorrectiveEvent` of ``parts`` (what :meth:`parts` gave for ``finding``)."""
        c = self.correction
        return CorrectiveEvent(
            id=parts.id,
            type=c.event_type,
            source=self.source,
            subject=parts.subject,
            time=parts.time,
            data=parts.data,
            kind=finding.kind,
            run_id=self.run_id,
            topic=c.topic,
            transport=c.transport,
            extra_headers=dict(self.extra_headers),
        )

    def parts(self, finding: Finding) -> EventParts:
        """What the outbox keeps of one finding's event: its id, subject (the message key),
        headers and value, as :class:`CorrectiveEvent` gives them, byte for byte, with no
        event object and without encoding the same JSON twice (a correction of 100k findings).

        The canonical JSON (sorted keys, no spaces) of a dict is its items' JSON in key order,
        so the id's material and the value are put together from the JSON of their parts. A
        finding whose key has the spec's key names and whose key and truth values are text, ints
        or None (what the store hands a correction, almost always) takes a path that encodes each
        value once and puts the JSON together in orders worked out per spec; anything else goes
        the general way (:meth:`_parts`), which gives the same bytes.
        """
        fkey, truth, episode = finding.key, finding.truth, finding.episode
        if not self._flat or type(episode) is not int or fkey.keys() != self._key_set:
            return self._parts(finding)
        kenc: dict[str, str] = {}
        ksig: list[Any] = []
        jkey = _flat_json(fkey, self._key_set, kenc, ksig)
        if jkey is None:
            return self._parts(finding)
        names = self.col_names
        tenc: dict[str, str] = {}
        tsig: list[Any] = []
        if truth is None:
            jtruth = None
        else:
            jtruth = _flat_json(truth, names, tenc, tsig)
            if jtruth is None:
                return self._parts(finding)
        kind = finding.kind
        tombstone = kind is FindingKind.ORPHAN
        if self._same_key:
            key = jkey
        else:
            key_names = self.key_names
            key = {key_names[k]: v for k, v in jkey.items()}
        state: dict[str, Any] | None
        if tombstone:
            state = None
        elif jtruth is None:
            state = {}
        elif self._same_cols:
            state = jtruth
        else:
            state = {names[k]: v for k, v in jtruth.items()}
        data = {
            "spec": self.spec.name,
            "kind": self._kind_value[kind],
            "key": key,
            "state": state,
            "tombstone": tombstone,
        }
        accepted = self._accepted
        if accepted is None:
            self.validate(data)
        else:
            sig = (kind, tuple(ksig), None if state is None else tuple(tsig))
            if sig not in accepted:
                self.validate(data)
                if len(accepted) < 10_000:
                    accepted.add(sig)
        ckey = "{" + ",".join([p + kenc[k] for k, p in self._id_key]) + "}"
        subject = (
            ckey if self._same_key else "{" + ",".join([p + kenc[k] for k, p in self._subject_key]) + "}"
        )
        if tombstone or jtruth is None:
            ctruth = "null"
        else:
            ctruth = "{" + ",".join([p + tenc[k] for k, p in self._id_state if k in tenc]) + "}"
        material = (
            f'{{"episode":{episode},"key":' if episode > 1 else '{"key":'
        ) + f'{ckey},"spec":{self._spec_json},"state":{ctruth}}}'
        event_id = hashlib.sha256(material.encode()).hexdigest()[:32]
        value: str | None = None
        if not tombstone:
            if jtruth is None:
                cstate = "{}"
            elif self._same_cols:
                cstate = ctruth
            else:
                cstate = "{" + ",".join([p + tenc[k] for k, p in self._value_state if k in tenc]) + "}"
            value = (
                f'{{"key":{subject},"kind":{self._kind_json[kind]},"spec":{self._spec_json},'
                f'"state":{cstate},"tombstone":false}}'
            )
        headers = self._headers[kind].copy()
        if self._set_id:
            headers["ce_id"] = event_id
        if self._set_subject:
            headers["ce_subject"] = subject
        at = self.now
        if at is None:
            at = datetime.now(UTC)
            if self._set_time:  # _header_time of a UTC time, without its call and check
                headers["ce_time"] = at.isoformat()[:-6] + "Z"
        elif self._set_time:
            headers["ce_time"] = self._time  # type: ignore[assignment]
        return EventParts(event_id, subject, headers, value, at, data)

    def _parts(self, finding: Finding) -> EventParts:
        """:meth:`parts` of any finding: values of any type, keys of other names."""
        spec = self.spec
        kind = finding.kind
        jkey = _jsonable_dict(finding.key)
        ckey = _canonical_flat(jkey)
        if self._same_key:
            key, subject = jkey, ckey
        else:
            key = {self.key_names.get(k, k): v for k, v in jkey.items()}
            subject = _canonical_flat(key)
        tombstone = kind is FindingKind.ORPHAN
        # The compared columns only: a finding on a topic side also says where its message sits
        # (_partition, _offset, _timestamp), which is not state for the projector.
        names = self.col_names
        truth = None if finding.truth is None else {k: v for k, v in finding.truth.items() if k in names}
        jtruth = None if truth is None else _jsonable_dict(truth)
        state: dict[str, Any] | None
        if tombstone:
            state = None
        elif self._same_cols:
            state = jtruth if jtruth is not None else {}
        else:
            state = {names.get(k, k): v for k, v in (jtruth or {}).items()}
        data = {"spec": spec.name, "kind": kind.value, "key": key, "state": state, "tombstone": tombstone}
        self.validate(data)
        episode = finding.episode
        ctruth = "null" if tombstone or jtruth is None else _canonical_flat(jtruth)
        if type(episode) is int:  # noqa: E721 - exactly int: its JSON is its repr
            material = (
                f'{{"episode":{episode},"key":' if episode > 1 else '{"key":'
            ) + f'{ckey},"spec":{self._spec_json},"state":{ctruth}}}'
            event_id = hashlib.sha256(material.encode()).hexdigest()[:32]
        else:
            event_id = _event_id(spec.name, jkey, jtruth if not tombstone else None, episode)
        value: str | None = None
        if not tombstone:
            if state is None:
                cstate = "null"
            elif state is jtruth:
                cstate = ctruth
            else:
                cstate = _canonical_flat(state)
            value = (
                f'{{"key":{subject},"kind":{self._kind_json[kind]},"spec":{self._spec_json},'
                f'"state":{cstate},"tombstone":false}}'
            )
        at = self.now or datetime.now(UTC)
        headers = dict(self._headers[kind])
        per_event = self._per_event
        if "ce_id" in per_event:
            headers["ce_id"] = event_id
        if "ce_subject" in per_event:
            headers["ce_subject"] = subject
        if "ce_time" in per_event:
            headers["ce_time"] = self._time or _header_time(at)
        return EventParts(event_id, subject, headers, value, at, data)


_AS_IS = (str, int, bool, type(None))

# JSON of a text exactly as the encoder writes it (ensure_ascii): the C function it calls itself
_ENCODE_STR: Any = (
    getattr(json.encoder, "c_encode_basestring_ascii", None) or json.encoder.py_encode_basestring_ascii
)


def _canonical_flat(d: dict[str, Any]) -> str:
    """``_CANONICAL.encode(d)`` of a dict of text keys and text, int (not bool) or None values
    (a finding's key and truth, almost always), put together from each item's JSON: the
    encoder's own call costs more than the items. Anything else goes through the encoder."""
    parts = []
    try:
        keys = sorted(d)
    except TypeError:  # keys of mixed types: the encoder says so
        return _CANONICAL.encode(d)
    for k in keys:
        v = d[k]
        t = type(v)
        if type(k) is not str:
            return _CANONICAL.encode(d)
        if t is str:
            parts.append(f"{_ENCODE_STR(k)}:{_ENCODE_STR(v)}")
        elif t is int:
            parts.append(f"{_ENCODE_STR(k)}:{int.__repr__(v)}")
        elif v is None:
            parts.append(f"{_ENCODE_STR(k)}:null")
        else:
            return _CANONICAL.encode(d)
    return "{" + ",".join(parts) + "}"


_INT32, _INT64 = 2**31, 2**63


def _flat_json(
    d: Mapping[str, Any], names: Any, enc: dict[str, str], sig: list[Any]
) -> dict[str, Any] | None:
    """The items of ``d`` whose names are in ``names``, when each value is text, an int (not a
    bool) or None; None when one is anything else. Adds each value's canonical JSON to ``enc``
    and ``(name, shape)`` to ``sig``, the shape as schemas._shape gives it two levels down."""
    out = {}
    for k, v in d.items():
        if k not in names:
            continue
        t = type(v)
        if t is str:
            enc[k] = _ENCODE_STR(v)
            sig.append((k, str))
        elif t is int:
            enc[k] = int.__repr__(v)
            sig.append((k, (int, 0 if -_INT32 <= v < _INT32 else 1 if -_INT64 <= v < _INT64 else 2)))
        elif v is None:
            enc[k] = "null"
            sig.append((k, None))
        else:
            return None
        out[k] = v
    return out


def _jsonable_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """``jsonable(dict(d))`` without a call per value when the values are JSON already (as a
    stored finding's are)."""
    if all(type(k) is str and type(v) in _AS_IS for k, v in d.items()):
        return dict(d)
    return jsonable(dict(d))  # type: ignore[no-any-return]


def _header_time(at: datetime) -> str:
    """The ``ce_time`` header of an event made at ``at``."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.isoformat()[:-6] + "Z"  # a UTC time's ends in +00:00, the only '+' in it


class EventParts(NamedTuple):
    """One corrective event as the outbox keeps it (:meth:`EventBuilder.parts`)."""

    id: str
    subject: str
    headers: dict[str, str]
    value: str | None
    time: datetime
    data: dict[str, Any]


def decode_headers(
    headers: Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> dict[str, str]:
    """Kafka headers (list of (name, bytes)) as a dict of text."""
    if type(headers) is list:  # what a consumer gets: bytes values, decoded in one comprehension
        try:
            return {name: value.decode() for name, value in headers if value is not None}  # type: ignore[union-attr]
        except AttributeError:  # some value is text already: the loop below
            pass
    out: dict[str, str] = {}
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for name, value in items:
        if value is None:
            continue
        out[name] = value.decode() if isinstance(value, bytes) else value
    return out
