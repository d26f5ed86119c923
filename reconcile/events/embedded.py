"""The embedded event channel: a real, table-backed append-only log in any SQL database.

It is the default transport for trying reconcile without PostgreSQL or Kafka (``make demo``):
producers append records (topic, key, headers, value) and consumer groups read them in order
and commit their next offset, like a single-partition Kafka topic. Offsets are the table's
autoincrement ids, so they only grow; a consumer's lag is the records after its offset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from ..db import make_engine, map_errors
from ..errors import PublishError, mask_url
from .transport import EventConsumer, Message, Outgoing, PublishReport, Transport

__all__ = ["EmbeddedLog", "EmbeddedTransport", "EmbeddedConsumer", "LogRecord", "embedded_log_url"]

_meta = sa.MetaData()
_log = sa.Table(
    "reconcile_event_log",
    _meta,
    sa.Column("offset", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(249), nullable=False, index=True),
    sa.Column("key", sa.Text, nullable=True),
    sa.Column("headers", sa.Text, nullable=False),
    sa.Column("value", sa.Text, nullable=True),
    sa.Column("appended_at", sa.DateTime(timezone=True), nullable=False),
)
_offsets = sa.Table(
    "reconcile_log_offsets",
    _meta,
    sa.Column("group_id", sa.String(200), primary_key=True),
    sa.Column("topic", sa.String(249), primary_key=True),
    sa.Column("next_offset", sa.Integer, nullable=False),
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def embedded_log_url(store_url: str) -> str:
    """Where the embedded log lives: $RECONCILE_EMBEDDED_LOG_URL, else the audit store's database."""
    import os

    return os.environ.get("RECONCILE_EMBEDDED_LOG_URL") or store_url


@dataclass(frozen=True)
class LogRecord:
    """One record of the embedded log."""

    offset: int
    topic: str
    key: str | None
    headers: dict[str, str]
    value: str | None
    appended_at: datetime | None = None


class EmbeddedLog:
    """An append-only log with consumer-group offsets, in one SQL database."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url, sqlite_wal=True)
        try:
            _meta.create_all(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError as e:
            raise PublishError(
                f"embedded log {mask_url(url)}: {str(getattr(e, 'orig', e)).splitlines()[0]}"
            ) from None

    def append(self, records: Sequence[tuple[str, str | None, dict[str, str], str | None]]) -> None:
        """Append (topic, key, headers, value) records in one transaction."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                _log.insert(),
                [
                    {
                        "topic": t,
                        "key": k,
                        "headers": json.dumps(h, sort_keys=True),
                        "value": v,
                        "appended_at": now,
                    }
                    for t, k, h, v in records
                ],
            )

    def read(
        self, group: str, topics: Sequence[str], limit: int = 1000, positions: dict[str, int] | None = None
    ) -> list[LogRecord]:
        """The next records for a group on the topics, oldest first: from ``positions`` (a
        consumer's own read position per topic) where given, else from the committed offset."""
        out: list[LogRecord] = []
        with self.engine.connect() as conn:
            for topic in topics:
                start = (positions or {}).get(topic)
                if start is None:
                    start = self._next_offset(conn, group, topic)
                rows = conn.execute(
                    sa.select(_log)
                    .where(_log.c.topic == topic, _log.c.offset >= start)
                    .order_by(_log.c.offset)
                    .limit(limit)
                )
                out += [
                    LogRecord(r.offset, r.topic, r.key, json.loads(r.headers), r.value, _utc(r.appended_at))
                    for r in rows
                ]
        return sorted(out, key=lambda r: r.offset)[:limit]

    def commit(self, conn: sa.Connection, group: str, topic: str, next_offset: int) -> None:
        """Store a group's next offset inside the caller's transaction (exactly-once with its writes)."""
        updated = conn.execute(
            _offsets.update()
            .where(_offsets.c.group_id == group, _offsets.c.topic == topic)
            .values(next_offset=next_offset)
        ).rowcount
        if not updated:
            conn.execute(_offsets.insert().values(group_id=group, topic=topic, next_offset=next_offset))

    def _next_offset(self, conn: sa.Connection, group: str, topic: str) -> int:
        got = conn.execute(
            sa.select(_offsets.c.next_offset).where(_offsets.c.group_id == group, _offsets.c.topic == topic)
        ).scalar()
        return int(got or 0)

    def lag(self, group: str, topic: str) -> int:
        """Records of the topic the group has not consumed yet."""
        with self.engine.connect() as conn:
            start = self._next_offset(conn, group, topic)
            n = conn.execute(
                sa.select(sa.func.count())
                .select_from(_log)
                .where(_log.c.topic == topic, _log.c.offset >= start)
            ).scalar()
        return int(n or 0)

    def end_offset(self, topic: str) -> int:
        """One past the last record's offset of the topic (0 when empty)."""
        with self.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.max(_log.c.offset)).where(_log.c.topic == topic)).scalar()
        return int(n or 0) + 1 if n is not None else 0

    def dispose(self) -> None:
        self.engine.dispose()


class EmbeddedTransport(Transport):
    """The embedded log as a transport: a committed append is the confirmation."""

    name = "embedded"

    def __init__(self, log: EmbeddedLog):
        self.log = log

    @property
    def where(self) -> str:
        return f"embedded log {mask_url(self.log.url)}"

    def consumer(self, group: str, topics: Sequence[str]) -> EventConsumer:
        return EmbeddedConsumer(self.log, group, topics)

    def lag(self, group: str, topic: str) -> int:
        from ..errors import VerifyError

        with map_errors("embedded log", self.log.url, VerifyError):
            return self.log.lag(group, topic)

    def publish(self, rows: Sequence[Outgoing]) -> PublishReport:
        try:
            self.log.append([(r.topic, r.message_key, r.headers, r.payload) for r in rows])
        except sa.exc.SQLAlchemyError as e:
            first = str(getattr(e, "orig", e)).splitlines()[0]
            return PublishReport(failed=[r.id for r in rows], first_error=mask_url(first))
        return PublishReport(confirmed=[r.id for r in rows])

    def close(self) -> None:
        self.log.dispose()


class EmbeddedConsumer(EventConsumer):
    """A consumer group's reader of the embedded log (one partition per topic: partition 0)."""

    def __init__(self, log: EmbeddedLog, group: str, topics: Sequence[str]):
        self.log, self.group, self.topics = log, group, list(topics)
        self.positions: dict[str, int] = {}

    def poll(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.log.read(self.group, self.topics, limit=max_messages, positions=self.positions)
            if records or time.monotonic() >= deadline:
                break
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        for r in records:
            self.positions[r.topic] = max(self.positions.get(r.topic, 0), r.offset + 1)
        return [Message(r.topic, 0, r.offset, r.key, r.headers, r.value, r.appended_at) for r in records]

    def commit(self) -> None:
        if not self.positions:
            return
        with self.log.engine.begin() as conn:
            for topic, offset in self.positions.items():
                self.log.commit(conn, self.group, topic, offset)

    def close(self) -> None:
        self.positions.clear()
