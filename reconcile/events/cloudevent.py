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
from typing import Any

from ..compare import jsonable
from ..findings import Finding, FindingKind
from ..schemas import CORRECTIVE_EVENT, datum_validator
from ..spec import Spec

__all__ = ["CorrectiveEvent", "EventBuilder", "build_event", "event_id", "message_key", "decode_headers"]

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
            "ce_time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
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

    def build(self, finding: Finding) -> CorrectiveEvent:
        """The corrective event for one finding (see :func:`build_event`)."""
        spec, c = self.spec, self.correction
        jkey = jsonable(dict(finding.key))
        key = {self.key_names.get(k, k): v for k, v in jkey.items()}
        tombstone = finding.kind is FindingKind.ORPHAN
        # The compared columns only: a finding on a topic side also says where its message sits
        # (_partition, _offset, _timestamp), which is not state for the projector.
        names = self.col_names
        truth = None if finding.truth is None else {k: v for k, v in finding.truth.items() if k in names}
        jtruth = None if truth is None else jsonable(truth)
        state = None if tombstone else {names.get(k, k): v for k, v in (jtruth or {}).items()}
        data = {
            "spec": spec.name,
            "kind": finding.kind.value,
            "key": key,
            "state": state,
            "tombstone": tombstone,
        }
        self.validate(data)
        return CorrectiveEvent(
            id=_event_id(spec.name, jkey, jtruth if not tombstone else None, finding.episode),
            type=c.event_type,
            source=self.source,
            subject=_CANONICAL.encode(key),
            time=self.now or datetime.now(UTC),
            data=data,
            kind=finding.kind,
            run_id=self.run_id,
            topic=c.topic,
            transport=c.transport,
            extra_headers=dict(self.extra_headers),
        )


def decode_headers(
    headers: Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> dict[str, str]:
    """Kafka headers (list of (name, bytes)) as a dict of text."""
    out: dict[str, str] = {}
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for name, value in items:
        if value is None:
            continue
        out[name] = value.decode() if isinstance(value, bytes) else value
    return out
