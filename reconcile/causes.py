"""Why each entity drifted: the first broken stage of its events' path. Plain Python, no I/O.

A spec's ``path`` says how the projection is fed: rows of a **source** table (an outbox, or the
facts table) become events on a **topic**, which the projector's **consumer group** consumes and
records in its **applied** journal. The stages are written -> published -> consumed -> applied.

An audit hands the drifted keys to a :class:`Collector`, then feeds it, in one pass each, the
source rows and the topic messages of the window (only events that touch a drifted entity are
kept: memory grows with the findings, not with the topic), then the applied journal's answer for
those events. :func:`attribute` then decides, per finding, from positions alone:

* **pending** (not a finding): an event touching the entity is still in flight — unpublished
  and younger than ``publish_grace``, or on the topic at or past the offset the group had
  committed when the projection was read;
* ``not_published``: an unpublished source row older than ``publish_grace``;
* ``lost``: a source row (published, or with no published column) that is not on the topic;
* ``not_applied``: consumed (below the committed offset) but not in the applied journal;
* ``misapplied``: every event reached the projection and it still differs;
* ``unexplained``: no event explains it (a write that bypassed the events, a path that says too
  little).

The earliest broken stage wins. **Evidence** lists the events involved with their stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .compare import jsonable
from .findings import Finding
from .jsonpath import MISSING, JsonPath, compile_path

__all__ = [
    "Cause",
    "Stage",
    "EventTrace",
    "Positions",
    "Collector",
    "EntityExtractor",
    "Attribution",
    "attribute",
    "verdict",
    "MAX_EVIDENCE",
]

Key = tuple[Any, ...]
MAX_EVIDENCE = 20  # events quoted per finding (the oldest broken ones first)


class Cause(StrEnum):
    """Why an entity drifted, named by the first broken stage of its path."""

    NOT_PUBLISHED = "not_published"
    LOST = "lost"
    NOT_APPLIED = "not_applied"
    MISAPPLIED = "misapplied"
    UNEXPLAINED = "unexplained"


# The order causes are judged in: the earliest stage along the path first.
_ORDER = (Cause.NOT_PUBLISHED, Cause.LOST, Cause.NOT_APPLIED)


class Stage(StrEnum):
    """How far one event got along the path."""

    WRITTEN = "written"  # in the source table, not published yet (in flight)
    NOT_PUBLISHED = "not_published"  # in the source table, unpublished for longer than the grace
    LOST = "lost"  # published (per the source table) but not on the topic
    ON_TOPIC = "on_topic"  # on the topic, not consumed yet (in flight)
    CONSUMED = "consumed"  # below the group's committed offset, no applied journal to ask
    NOT_APPLIED = "not_applied"  # consumed, but not in the applied journal
    APPLIED = "applied"  # in the applied journal
    UNKNOWN = "unknown"  # a source row outside the topic's window: not judged


_BROKEN = {
    Stage.NOT_PUBLISHED: Cause.NOT_PUBLISHED,
    Stage.LOST: Cause.LOST,
    Stage.NOT_APPLIED: Cause.NOT_APPLIED,
}
_IN_FLIGHT = (Stage.WRITTEN, Stage.ON_TOPIC)


@dataclass(slots=True)
class EventTrace:
    """What the path shows of one event that touches at least one drifted entity."""

    event_id: str
    entities: tuple[Key, ...] = ()
    in_source: bool = False
    published: bool | None = None  # None: the source table has no published column
    written_at: datetime | None = None
    source_row: dict[str, Any] | None = None  # the source row's identity (event id, published at)
    partition: int | None = None
    offset: int | None = None
    timestamp: datetime | None = None
    applied: bool | None = None  # None: no applied journal (or not asked)

    @property
    def on_topic(self) -> bool:
        return self.offset is not None

    @property
    def time(self) -> datetime | None:
        """When the event happened: the source row's time, else the message's."""
        return self.written_at or self.timestamp

    def to_dict(self, stage: Stage) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "stage": stage.value}
        if self.source_row is not None:
            out["source_row"] = jsonable(self.source_row)
        if self.on_topic:
            out["partition"], out["offset"] = self.partition, self.offset
        if self.time is not None:
            out["timestamp"] = jsonable(self.time)
        return out


@dataclass(frozen=True)
class Positions:
    """Where the path stood when the projection was read: what attribution decides by."""

    committed: Mapping[int, int]  # the group's committed offset per partition (-1: never)
    now: datetime
    publish_grace: timedelta = timedelta(minutes=1)
    has_applied: bool = False  # an applied journal was asked
    window_start: datetime | None = None  # source rows written before it are not judged lost
    topic_from_earliest: bool = False  # the topic window holds every message still retained


def stage(ev: EventTrace, pos: Positions) -> Stage:
    """The stage one event reached, decided by positions (and the publish grace)."""
    if ev.on_topic:
        assert ev.partition is not None and ev.offset is not None
        if ev.offset >= pos.committed.get(ev.partition, -1):
            return Stage.ON_TOPIC
        if not pos.has_applied:
            return Stage.CONSUMED
        return Stage.APPLIED if ev.applied else Stage.NOT_APPLIED
    if ev.in_source:
        if ev.published is False:
            young = ev.written_at is not None and pos.now - ev.written_at < pos.publish_grace
            return Stage.WRITTEN if young else Stage.NOT_PUBLISHED
        if ev.written_at is not None and pos.window_start is not None and ev.written_at < pos.window_start:
            return Stage.UNKNOWN  # its message may be older than the window read
        if ev.written_at is None and not pos.topic_from_earliest:
            return Stage.UNKNOWN
        return Stage.LOST
    return Stage.UNKNOWN  # not reached: an event is kept because it is in the source or on the topic


@dataclass(frozen=True)
class Verdict:
    """One entity's verdict: pending, or drifted with a cause and the events behind it."""

    pending: bool
    cause: Cause | None
    events: tuple[tuple[EventTrace, Stage], ...]

    def evidence(self, limit: int = MAX_EVIDENCE) -> list[dict[str, Any]]:
        """The events behind the verdict (the broken or in-flight ones first), as JSON values."""
        rank = {
            Stage.NOT_PUBLISHED: 0,
            Stage.LOST: 1,
            Stage.NOT_APPLIED: 2,
            Stage.WRITTEN: 3,
            Stage.ON_TOPIC: 3,
        }
        ordered = sorted(self.events, key=lambda e: (rank.get(e[1], 9), _sort_time(e[0])))
        return [ev.to_dict(st) for ev, st in ordered[:limit]]


def _sort_time(ev: EventTrace) -> tuple[int, float]:
    t = ev.time
    return (1, 0.0) if t is None else (0, t.timestamp())


def verdict(
    events: Sequence[EventTrace], pos: Positions, truth_changed_at: datetime | None = None
) -> Verdict:
    """Judge one drifted entity from the events touching it.

    ``truth_changed_at``: when truth last changed the entity (``freshness.truth_column``), if
    known: truth changed after the last event touching it means a write bypassed the events
    (``unexplained``), not a projector that applied them wrongly.
    """
    staged = tuple((ev, stage(ev, pos)) for ev in events)
    if any(st in _IN_FLIGHT for _, st in staged):
        return Verdict(True, None, staged)
    broken = {_BROKEN[st] for _, st in staged if st in _BROKEN}
    for cause in _ORDER:
        if cause in broken:
            return Verdict(False, cause, staged)
    reached = [ev for ev, st in staged if st in (Stage.APPLIED, Stage.CONSUMED)]
    if not reached:
        return Verdict(False, Cause.UNEXPLAINED, staged)
    if truth_changed_at is not None:
        last = max((t for ev in reached if (t := ev.time) is not None), default=None)
        if last is not None and _utc(truth_changed_at) > _utc(last) + _SAME_WRITE:
            return Verdict(False, Cause.UNEXPLAINED, staged)
    return Verdict(False, Cause.MISAPPLIED, staged)


# Truth's change time and its event's time come from one transaction (or the event is stamped
# just after it): a truth change later than the last event by more than this bypassed the events.
_SAME_WRITE = timedelta(seconds=1)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


class EntityExtractor:
    """The entities (canonical key tuples) one event value changes, per ``path.entities``."""

    def __init__(
        self,
        key_paths: Mapping[str, str],
        key_names: Sequence[str],
        each: str | None = None,
        canon: Callable[[Sequence[Any]], Key] | None = None,
    ):
        self.each: JsonPath | None = compile_path(each) if each else None
        self.paths: list[tuple[bool, JsonPath]] = []
        for name in key_names:
            expr = key_paths[name]
            absolute = expr.startswith("$")
            self.paths.append((absolute, compile_path(expr if absolute else "$." + expr)))
        self.canon = canon or tuple

    def __call__(self, value: Any) -> list[Key]:
        """Every entity the event value names (none when a key part is missing or unreadable)."""
        if value is None:
            return []
        if self.each is None:
            k = self._key(value, value)
            return [] if k is None else [k]
        elements = self.each.find(value) if self.each.wildcard else [self.each.first(value)]
        if not elements or elements == [MISSING]:
            elements = _data_fallback(self.each, value, many=True)
        out = []
        for el in elements:
            if el is MISSING:
                continue
            k = self._key(value, el)
            if k is not None:
                out.append(k)
        return out

    def _key(self, doc: Any, element: Any) -> Key | None:
        parts = []
        for absolute, path in self.paths:
            v = path.first(doc if absolute else element)
            if v is MISSING or v is None:
                v = _data_fallback(path, doc) if absolute else MISSING
                if v is MISSING or v is None:
                    return None
            parts.append(v)
        try:
            return self.canon(parts)
        except (ValueError, TypeError):
            return None


def _data_fallback(path: JsonPath, doc: Any, many: bool = False) -> Any:
    """``$.data.x`` on a bare event value (a binary-mode CloudEvent's value, an outbox payload)."""
    if path.head == "data" and path.after_head is not None and not (type(doc) is dict and "data" in doc):
        rest = path.after_head
        if many:
            return rest.find(doc) if rest.wildcard else [rest.first(doc)]
        return rest.first(doc)
    return [] if many else MISSING


@dataclass
class Collector:
    """Gathers, in one pass per input, the events that touch the drifted entities."""

    keys: set[Key]
    extract: EntityExtractor
    events: dict[str, EventTrace] = field(default_factory=dict)
    source_rows: int = 0
    messages: int = 0

    def source_row(
        self,
        event_id: Any,
        value: Any,
        *,
        published: bool | None,
        written_at: datetime | None = None,
        row: dict[str, Any] | None = None,
    ) -> None:
        """One row of the source table (its event value decoded, or None)."""
        self.source_rows += 1
        if event_id is None:
            return
        touched = tuple(k for k in self.extract(value) if k in self.keys)
        if not touched:
            return
        eid = str(event_id)
        ev = self.events.get(eid) or EventTrace(eid)
        ev.entities = touched
        ev.in_source, ev.published, ev.written_at = True, published, written_at
        ev.source_row = row if row is not None else {"event_id": eid}
        self.events[eid] = ev

    def message(
        self, event_id: Any, partition: int, offset: int, timestamp: datetime | None, value: Any
    ) -> None:
        """One message of the topic's window. ``value`` may be a callable that decodes it (only
        called when the event is not known from the source table already)."""
        self.messages += 1
        eid = None if event_id is None else str(event_id)
        ev = self.events.get(eid) if eid is not None else None
        if ev is None:
            doc = value() if callable(value) else value
            touched = tuple(k for k in self.extract(doc) if k in self.keys)
            if not touched:
                return
            eid = eid if eid is not None else f"{partition}:{offset}"
            ev = self.events[eid] = EventTrace(eid, touched)
        if ev.offset is None:  # a redelivered copy: the first one counts
            ev.partition, ev.offset, ev.timestamp = partition, offset, timestamp

    def wanted_applied(self) -> list[str]:
        """The ids to look up in the applied journal: events consumed per the topic."""
        return [eid for eid, ev in self.events.items() if ev.on_topic]

    def applied(self, ids: Iterable[str], asked: Iterable[str]) -> None:
        """The applied journal's answer: ``ids`` (of ``asked``) are in it."""
        have = set(ids)
        for eid in asked:
            ev = self.events.get(eid)
            if ev is not None:
                ev.applied = eid in have

    def by_key(self) -> dict[Key, list[EventTrace]]:
        out: dict[Key, list[EventTrace]] = {}
        for ev in self.events.values():
            for k in ev.entities:
                out.setdefault(k, []).append(ev)
        return out


@dataclass
class Attribution:
    """Findings with their cause and evidence; the ones still in flight are pending instead."""

    findings: list[Finding]
    pending: list[Finding]

    def counts(self) -> dict[str, int]:
        out = {c.value: 0 for c in Cause}
        for f in self.findings:
            if f.cause:
                out[f.cause] += 1
        return out


def attribute(
    findings: Iterable[Finding],
    collector: Collector,
    pos: Positions,
    key_names: Sequence[str],
    *,
    canon: Callable[[Sequence[Any]], Key] | None = None,
    truth_time: Callable[[Finding], datetime | None] | None = None,
) -> Attribution:
    """Give each finding its cause and evidence; move the ones with an event in flight to pending."""
    canon = canon or tuple
    events = collector.by_key()
    out = Attribution([], [])
    for f in findings:
        key = canon([f.key[n] for n in key_names])
        v = verdict(events.get(key, ()), pos, truth_time(f) if truth_time else None)
        if v.pending:
            out.pending.append(f)
        else:
            assert v.cause is not None
            out.findings.append(replace(f, cause=v.cause.value, evidence=tuple(v.evidence())))
    return out
