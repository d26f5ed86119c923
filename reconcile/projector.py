"""A reference projector: applies corrective events to a projection table, each id once.

It is what the tests and the demo use as "the service that builds the projection", and a
template for real projectors: read a batch, apply it and record every applied event id in the
projection database in ONE transaction, then commit the consumer offset. A crash between the
two redelivers the batch, and the applied-ids table turns the redelivery into a no-op.

* state event -> the entity's row is replaced by the key + state (deleting duplicates too);
  with ``version_field``, an event older than the row's version is skipped as stale;
* tombstone (no value) -> the entity's rows are deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from .events.cloudevent import decode_headers
from .events.embedded import EmbeddedLog
from .events.kafka import KafkaSettings
from .sources.sql import make_engine
from .spec import Spec

__all__ = ["ProjectionWriter", "Projector", "ProjectorStats", "Incoming"]

_applied_meta = sa.MetaData()
applied_events = sa.Table(
    "reconcile_applied_events",
    _applied_meta,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


@dataclass
class ProjectorStats:
    """Counts of one projector run."""

    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    messages: int = 0


@dataclass(frozen=True)
class Incoming:
    """One corrective event as the projector sees it."""

    event_id: str
    key: dict[str, Any]
    state: dict[str, Any] | None  # None: tombstone


def _coerce(value: Any, column: sa.Column[Any]) -> Any:
    """JSON values into the column's Python type (ISO text -> datetime, float -> Decimal)."""
    if value is None:
        return None
    t = column.type
    if isinstance(t, sa.DateTime) and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(t, sa.Date) and isinstance(value, str):
        return date.fromisoformat(value[:10])
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float) and isinstance(value, float):
        return Decimal(repr(value))
    return value


class ProjectionWriter:
    """Applies corrective events to one projection table, remembering applied event ids."""

    def __init__(self, url: str, table: str, *, version_field: str | None = None, schema: str | None = None):
        self.engine = make_engine(url)
        self.table = sa.Table(table, sa.MetaData(), autoload_with=self.engine, schema=schema)
        self.version_field = version_field
        _applied_meta.create_all(self.engine, checkfirst=True)

    def apply(self, events: Iterable[Incoming], stats: ProjectorStats) -> None:
        """Apply a batch in one transaction, together with the ids it applied.

        Set-based, so a batch costs a handful of statements: ids already applied are skipped,
        the last event per entity wins (events of one entity arrive in order), rows of the
        touched entities are replaced.
        """
        t = self.table
        batch = list(events)
        stats.messages += len(batch)
        with self.engine.begin() as conn:
            ids = list(dict.fromkeys(ev.event_id for ev in batch))
            done: set[str] = set()
            for i in range(0, len(ids), 1000):
                done.update(
                    conn.execute(
                        sa.select(applied_events.c.event_id).where(
                            applied_events.c.event_id.in_(ids[i : i + 1000])
                        )
                    ).scalars()
                )
            latest: dict[tuple[Any, ...], Incoming] = {}
            fresh: list[str] = []
            for ev in batch:
                if ev.event_id in done:
                    stats.duplicates += 1
                    continue
                done.add(ev.event_id)
                fresh.append(ev.event_id)
                key = tuple(sorted(ev.key.items()))
                if key in latest:
                    stats.applied += 1  # superseded inside the batch by a newer event of the entity
                latest[key] = ev
            if not fresh:
                return
            conn.execute(applied_events.insert(), [{"event_id": i} for i in fresh])
            todo = list(latest.values())
            if self.version_field:
                todo = self._drop_stale(conn, todo, stats)
            for group in _by_key_shape(todo):
                names = list(group[0].key)
                cols = [t.c[n] for n in names]
                keys = [tuple(_coerce(ev.key[n], t.c[n]) for n in names) for ev in group]
                for i in range(0, len(keys), 500):
                    chunk = keys[i : i + 500]
                    cond = (
                        cols[0].in_([k[0] for k in chunk]) if len(cols) == 1 else sa.tuple_(*cols).in_(chunk)
                    )
                    conn.execute(t.delete().where(cond))
            rows = [
                {k: _coerce(v, t.c[k]) for k, v in {**ev.key, **ev.state}.items()}
                for ev in todo
                if ev.state is not None
            ]
            if rows:
                conn.execute(t.insert(), rows)
            stats.applied += len(todo)

    def _drop_stale(self, conn: sa.Connection, todo: list[Incoming], stats: ProjectorStats) -> list[Incoming]:
        """Events whose state is older than the row's version are skipped (counted stale)."""
        t, vf = self.table, str(self.version_field)
        keep = []
        for ev in todo:
            if ev.state is None or vf not in ev.state:
                keep.append(ev)
                continue
            where = [t.c[k] == _coerce(v, t.c[k]) for k, v in ev.key.items()]
            current = conn.execute(sa.select(sa.func.max(t.c[vf])).where(*where)).scalar()
            if current is not None and current > ev.state[vf]:
                stats.stale += 1
            else:
                keep.append(ev)
        return keep

    def dispose(self) -> None:
        self.engine.dispose()


def _by_key_shape(events: list[Incoming]) -> list[list[Incoming]]:
    shapes: dict[tuple[str, ...], list[Incoming]] = {}
    for ev in events:
        shapes.setdefault(tuple(ev.key), []).append(ev)
    return list(shapes.values())


def _incoming(key: str | bytes | None, headers: Mapping[str, str], value: str | bytes | None) -> Incoming:
    event_id = headers.get("ce_id")
    if not event_id:
        raise ValueError("message without a ce_id header")
    if value is None:
        if key is None:
            raise ValueError(f"tombstone {event_id} without a key")
        return Incoming(event_id, json.loads(key), None)
    data = json.loads(value)
    if data.get("tombstone"):
        return Incoming(event_id, dict(data["key"]), None)
    return Incoming(event_id, dict(data["key"]), dict(data["state"] or {}))


class Projector:
    """Consumes a spec's corrective topic (Kafka or the embedded log) into its projection."""

    def __init__(
        self,
        spec: Spec,
        *,
        projection_url: str | None = None,
        kafka: KafkaSettings | None = None,
        embedded_url: str | None = None,
        version_field: str | None = None,
        group: str | None = None,
    ):
        if spec.correction is None or not spec.projection.table:
            raise ValueError(f"spec {spec.name}: the projector needs correction: and projection.table")
        self.spec = spec
        self.topic = spec.correction.topic
        self.group = group or spec.correction.consumer_group or f"{spec.name}-projector"
        self.writer = ProjectionWriter(
            projection_url or spec.projection.url or "",
            spec.projection.table,
            version_field=version_field,
            schema=spec.projection.schema_,
        )
        self.kafka = kafka
        self.embedded_url = embedded_url
        self.stats = ProjectorStats()

    def run(
        self,
        *,
        idle_timeout_s: float = 3.0,
        max_seconds: float = 120.0,
        stop: Callable[[], bool] | None = None,
        on_batch: Callable[[ProjectorStats], None] | None = None,
    ) -> ProjectorStats:
        """Consume until nothing arrived for ``idle_timeout_s`` (or ``stop()``, or ``max_seconds``)."""
        if self.spec.correction and self.spec.correction.transport == "embedded":
            return self._run_embedded(idle_timeout_s, max_seconds, stop, on_batch)
        return self._run_kafka(idle_timeout_s, max_seconds, stop, on_batch)

    def _run_kafka(
        self,
        idle_timeout_s: float,
        max_seconds: float,
        stop: Callable[[], bool] | None,
        on_batch: Callable[[ProjectorStats], None] | None,
    ) -> ProjectorStats:
        from confluent_kafka import Consumer

        settings = self.kafka or KafkaSettings.from_env()
        consumer = Consumer(
            settings.config(
                **{
                    "group.id": self.group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": 10000,
                }
            )
        )
        consumer.subscribe([self.topic])
        started = last = time.monotonic()
        try:
            while time.monotonic() - started < max_seconds and not (stop and stop()):
                msgs = consumer.consume(num_messages=2000, timeout=0.5)
                batch = []
                for m in msgs:
                    if m.error() is not None:
                        continue
                    batch.append(_incoming(m.key(), decode_headers(m.headers()), m.value()))
                if batch:
                    self.writer.apply(batch, self.stats)
                    consumer.commit(asynchronous=False)
                    last = time.monotonic()
                    if on_batch:
                        on_batch(self.stats)
                elif time.monotonic() - last >= idle_timeout_s:
                    break
        finally:
            consumer.close()
        return self.stats

    def _run_embedded(
        self,
        idle_timeout_s: float,
        max_seconds: float,
        stop: Callable[[], bool] | None,
        on_batch: Callable[[ProjectorStats], None] | None,
    ) -> ProjectorStats:
        log = EmbeddedLog(self.embedded_url or "")
        started = last = time.monotonic()
        try:
            while time.monotonic() - started < max_seconds and not (stop and stop()):
                records = log.read(self.group, [self.topic], limit=2000)
                if records:
                    self.writer.apply([_incoming(r.key, r.headers, r.value) for r in records], self.stats)
                    with log.engine.begin() as conn:
                        log.commit(conn, self.group, self.topic, records[-1].offset + 1)
                    last = time.monotonic()
                    if on_batch:
                        on_batch(self.stats)
                elif time.monotonic() - last >= idle_timeout_s:
                    break
                else:
                    time.sleep(0.05)
        finally:
            log.dispose()
        return self.stats

    def close(self) -> None:
        self.writer.dispose()
