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

import threading
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
    """The entities (canonical key tuples) one event value changes, per ``path.entities``.

    Runs once per event of the window (a million of them), so the paths outside ``each`` are read
    once per event, and ``$.data.x`` on a bare event value (a binary-mode CloudEvent's value, an
    outbox payload) reads its ``x``: such a value is looked at as ``{"data": value}``.
    """

    def __init__(
        self,
        key_paths: Mapping[str, str],
        key_names: Sequence[str],
        each: str | None = None,
        canon: Callable[[Sequence[Any]], Key] | None = None,
        simple: Sequence[type | None] | None = None,
        texts: Sequence[bool] | None = None,
    ):
        self.each: JsonPath | None = compile_path(each) if each else None
        self.names = list(key_names)
        # (index in the key, path) of the parts read from the event, and of those read per element
        self.absolute: list[tuple[int, JsonPath]] = []
        self.relative: list[tuple[int, JsonPath]] = []
        for i, name in enumerate(self.names):
            expr = key_paths[name]
            if expr.startswith("$"):
                self.absolute.append((i, compile_path(expr)))
            else:
                self.relative.append((i, compile_path("$." + expr)))
        heads = [p.head for _, p in self.absolute] + ([self.each.head] if self.each else [])
        self.wrap = "data" in heads
        self.canon = canon or tuple
        self.simple_types = list(simple) if simple is not None else None
        # Per key part: its canonical form is the value's text (a str as it is, str(v) otherwise),
        # as ``canon`` makes it for a text key. Only such parts can reject a raw event by its text.
        self.texts = list(texts) if texts is not None else [False] * len(self.names)
        self.restrict(set())

    def __call__(self, value: Any) -> list[Key]:
        """Every entity the event value names (none when a key part is missing or unreadable)."""
        if value is None:
            return []
        if self.wrap and not (type(value) is dict and "data" in value):
            value = {"data": value}
        parts: list[Any] = [None] * len(self.names)
        for i, path in self.absolute:
            v = path.first(value)
            if v is MISSING or v is None or (path.wildcard and not v):
                return []
            parts[i] = v
        if self.each is None:
            return self._canon(parts)
        elements = self.each.first(value)
        if elements is MISSING:
            return []
        if not self.each.wildcard:
            elements = [elements]
        out: list[Key] = []
        for el in elements:
            ok = True
            for i, path in self.relative:
                v = path.first(el)
                if v is MISSING or v is None:
                    ok = False
                    break
                parts[i] = v
            if ok:
                out += self._canon(parts)
        return out

    def restrict(self, keys: set[Key], simple: Sequence[type | None] | None = None) -> None:
        """Prepare :meth:`touching` for these keys: ``simple`` says, per key part, the Python type
        whose values are canonical as they are (``str`` for text, ``int`` for int keys), so a
        value of that type not among the keys' values rejects the event before any key is made."""
        self.keys = keys
        self.simple = list(simple) if simple is not None else [None] * len(self.names)
        self.allowed = [{k[i] for k in keys} for i in range(len(self.names))]
        self._walks = [(i, _walk(p)) for i, p in self.absolute]
        self._rel = [(i, _walk(p)) for i, p in self.relative]
        self._each = _elements(self.each) if self.each is not None else None
        # ``needles``: the values whose presence in a raw text ``maybe`` looks for (see _text_filter)
        self.needles = _needles([self.allowed[i] for i, t in enumerate(self.texts) if t])
        self.maybe = _text_filter(self.needles) if self.needles is not None else None

    def touching(self, value: Any) -> tuple[Key, ...]:
        """The entities of :meth:`restrict`'s keys this event value touches (usually none): the
        hot loop of a window's pass, rejecting most events after a few dictionary look-ups."""
        if value is None:
            return ()
        if self.wrap and not (type(value) is dict and "data" in value):
            value = {"data": value}
        allowed, simple, keys = self.allowed, self.simple, self.keys
        parts: list[Any] = [None] * len(self.names)
        for i, walk in self._walks:
            v = walk(value)
            if v is MISSING or v is None:
                return ()
            if v.__class__ is simple[i] and v not in allowed[i]:
                return ()
            parts[i] = v
        if self._each is None:
            k = self._canon(parts)
            return (k[0],) if k and k[0] in keys else ()
        out: list[Key] = []
        for el in self._each(value):
            ok = True
            for i, walk in self._rel:
                v = walk(el)
                if v is MISSING or v is None or (v.__class__ is simple[i] and v not in allowed[i]):
                    ok = False
                    break
                parts[i] = v
            if ok:
                k = self._canon(parts)
                if k and k[0] in keys:
                    out.append(k[0])
        return tuple(out)

    def _canon(self, parts: list[Any]) -> list[Key]:
        try:
            return [self.canon(parts)]
        except (ValueError, TypeError):
            return []


def _plain(value: Any) -> bool:
    """Whether a text key value can only be the canonical form of a JSON *string* (never the
    ``str()`` of a number, a boolean, an array or an object that a text key would also accept)."""
    if value.__class__ is not str or value in ("True", "False") or value[:1] in ("[", "{"):
        return False
    try:
        float(value)  # every str() of an int or a float parses: "12", "1.5", "1e+20", "inf", "nan"
    except ValueError:
        return True
    return False


def _needles(allowed: Sequence[set[Any]]) -> frozenset[str] | None:
    """The values of the text key part with only :func:`_plain` values and the most of them (it
    rejects the most events); None when no text key part has only plain values."""
    best: set[Any] | None = None
    for vals in allowed:
        if all(_plain(v) for v in vals) and (best is None or len(vals) > len(best)):
            best = vals
    return frozenset(best) if best is not None else None


def _text_filter(needles: frozenset[str]) -> Callable[[Any], bool]:
    """A test on an event's raw JSON text (str or bytes) that is False only when the decoded value
    cannot touch the keys: it holds none of ``needles`` (one text key part's values) as a string.

    Why it is exact: JSON text without a backslash has no escapes, so every ``"`` in it delimits a
    string and each string's content is a piece of ``text.split('"')``, as the decoder returns it.
    A touched entity's key part is one of the needles, and a plain value can only come from a JSON
    string equal to it. A text with a backslash is let through (an escape may spell the value)."""
    as_str, as_bytes = needles, frozenset(v.encode("utf-8") for v in needles)
    str_disjoint, bytes_disjoint = as_str.isdisjoint, as_bytes.isdisjoint

    def maybe(raw: Any) -> bool:
        if raw.__class__ is bytes:
            return b"\\" in raw or not bytes_disjoint(raw.split(b'"'))
        if raw.__class__ is str:
            return "\\" in raw or not str_disjoint(raw.split('"'))
        return True  # already decoded, or some other shape: not decided here

    return maybe


def _walk(path: JsonPath) -> Callable[[Any], Any]:
    """A function reading one path (no wildcard): member names walked inline."""
    names = path.names
    if names is None or path.wildcard:
        return path.first
    if len(names) == 1:
        (a,) = names
        return lambda doc: doc.get(a, MISSING) if doc.__class__ is dict else MISSING
    if len(names) == 2:
        a, b = names

        def two(doc: Any) -> Any:
            if doc.__class__ is not dict:
                return MISSING
            x = doc.get(a, MISSING)
            return x.get(b, MISSING) if x.__class__ is dict else MISSING

        return two
    return path.first


def _elements(path: JsonPath) -> Callable[[Any], list[Any]]:
    """A function listing the elements ``each`` names (a wildcard path: every one; else one)."""
    steps = path.steps
    names = [arg for kind, arg in steps[:-1]] if steps and all(k == 0 for k, _ in steps[:-1]) else None
    if path.wildcard and names is not None and steps[-1][0] == 2:

        def members(doc: Any) -> list[Any]:
            cur = doc
            for name in names:
                if cur.__class__ is not dict:
                    return []
                cur = cur.get(name)
            if cur.__class__ is list:
                return cur  # type: ignore[no-any-return]
            return list(cur.values()) if cur.__class__ is dict else []

        return members
    if path.wildcard:
        return path.find

    def one(doc: Any) -> list[Any]:
        got = path.first(doc)
        return [] if got is MISSING else [got]

    return one


def _anything(raw: Any) -> bool:
    return True


@dataclass
class Collector:
    """Gathers, in one pass per input, the events that touch the drifted entities."""

    keys: set[Key]
    extract: EntityExtractor
    events: dict[str, EventTrace] = field(default_factory=dict)
    source_rows: int = 0
    messages: int = 0
    # The source table and the topic may be read at once (two threads): events are made under it.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
        touched = self.touching(value)
        if touched and event_id is not None:
            self.add_source(event_id, touched, published=published, written_at=written_at, row=row)

    def __post_init__(self) -> None:
        if getattr(self.extract, "keys", None) is not self.keys:
            self.extract.restrict(self.keys, getattr(self.extract, "simple_types", None))

    def touching(self, value: Any) -> tuple[Key, ...]:
        """The drifted entities an event value touches (usually none)."""
        return self.extract.touching(value)

    def add_source(
        self,
        event_id: Any,
        touched: tuple[Key, ...],
        *,
        published: bool | None,
        written_at: datetime | None = None,
        row: dict[str, Any] | None = None,
    ) -> None:
        """Keep a source row that touches drifted entities (see :meth:`touching`)."""
        eid = str(event_id)
        with self.lock:
            ev = self.events.get(eid)
            if ev is None:
                ev = self.events[eid] = EventTrace(eid)
            ev.entities = touched
            ev.in_source, ev.published, ev.written_at = True, published, written_at
            ev.source_row = row if row is not None else {"event_id": eid}

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
            touched = self.touching(doc)
            if not touched:
                return
            eid = eid if eid is not None else f"{partition}:{offset}"
            with self.lock:
                ev = self.events.get(eid)
                if ev is None:
                    ev = self.events[eid] = EventTrace(eid, touched)
        if ev.offset is None:  # a redelivered copy: the first one counts
            ev.partition, ev.offset, ev.timestamp = partition, offset, timestamp

    def message_batch(
        self, batch: Iterable[tuple[Any, int, int, int, Any]], decode: Callable[[Any], Any]
    ) -> None:
        """Many messages at once, as (event id, partition, offset, timestamp ms or -1, raw value):
        :meth:`message` without a call per message (a window holds millions). ``decode`` turns a
        raw value into the event value; it is called only for events not known already."""
        events, touching = self.events, self.extract.touching
        maybe = self.extract.maybe or _anything
        n = 0
        for eid, p, o, ms, raw in batch:
            n += 1
            ev = events.get(eid) if eid is not None else None
            if ev is None:
                if not maybe(raw):  # touches no drifted entity, by its text: not decoded
                    continue
                touched = touching(decode(raw))
                if not touched:
                    continue
                eid = str(eid) if eid is not None else f"{p}:{o}"
                with self.lock:
                    ev = events.get(eid)
                    if ev is None:
                        ev = events[eid] = EventTrace(eid, touched)
            if ev.offset is None:
                ev.partition, ev.offset = p, o
                ev.timestamp = datetime.fromtimestamp(ms / 1000, UTC) if ms is not None and ms >= 0 else None
        self.messages += n

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
