"""The embedded log as a topic-reading port adapter: one partition (0) per topic.

Offsets are the log's own (they only grow, so an extent taken now stays fixed while records are
appended), timestamps the append times. A topic exists once it has a record or a group has an
offset on it: the embedded log keeps no list of topics of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from ..db import map_errors
from ..errors import SourceError, SpecError, mask_url
from .embedded import EmbeddedLog, _log, _offsets
from .reader import NEVER_COMMITTED, Extent, RawMessage, TopicReader

__all__ = ["EmbeddedTopicReader"]


def _ms(value: datetime | None) -> int:
    if value is None:
        return -1
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return int(aware.timestamp() * 1000)


class EmbeddedTopicReader(TopicReader):
    """Reads extents of topics of the embedded log."""

    def __init__(self, url: str):
        self.url = url
        with map_errors("embedded log", url, SourceError):
            self.log = EmbeddedLog(url)

    @property
    def where(self) -> str:
        return f"embedded log {mask_url(self.url)}"

    def _errors(self):  # type: ignore[no-untyped-def]
        return map_errors(self.where, self.url, SourceError)

    def partitions(self, topic: str) -> list[int]:
        with self._errors(), self.log.engine.connect() as conn:
            has = conn.execute(sa.select(_log.c.offset).where(_log.c.topic == topic).limit(1)).first()
            if has is None:
                has = conn.execute(
                    sa.select(_offsets.c.topic).where(_offsets.c.topic == topic).limit(1)
                ).first()
            if has is None:
                names = list(conn.execute(sa.select(_log.c.topic).distinct().limit(9)).scalars())
        if has is None:
            hint = f" (topics there: {', '.join(sorted(names)[:8])})" if names else ""
            raise SpecError(f"topic {topic!r} does not exist in the {self.where}{hint}")
        return [0]

    def extent(self, topic: str, since: datetime | None) -> Extent:
        self.partitions(topic)
        taken = datetime.now(UTC)
        with self._errors(), self.log.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(_log.c.offset)).where(_log.c.topic == topic)).scalar()
            end = int(last) + 1 if last is not None else 0
            first = conn.execute(sa.select(sa.func.min(_log.c.offset)).where(_log.c.topic == topic)).scalar()
            start = int(first) if first is not None else end
            if since is not None:
                at = conn.execute(
                    sa.select(sa.func.min(_log.c.offset)).where(
                        _log.c.topic == topic, _log.c.appended_at >= since, _log.c.offset < end
                    )
                ).scalar()
                start = int(at) if at is not None else end
        return Extent(topic, {0: start}, {0: end}, taken, since, self.where)

    def read(self, extent: Extent, batch: int = 10_000) -> Iterator[list[RawMessage]]:
        start, end = extent.start.get(0, 0), extent.end.get(0, 0)
        if start >= end:
            return
        stmt = (
            sa.select(_log.c.offset, _log.c.appended_at, _log.c.key, _log.c.value, _log.c.headers)
            .where(_log.c.topic == extent.topic, _log.c.offset >= start, _log.c.offset < end)
            .order_by(_log.c.offset)
        )
        with self._errors(), self.log.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            for chunk in result.partitions(batch):
                yield [
                    (0, int(o), _ms(at), key, value, json.loads(headers) if headers else None)
                    for o, at, key, value, headers in chunk
                ]

    def committed(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        with self._errors(), self.log.engine.connect() as conn:
            got = conn.execute(
                sa.select(_offsets.c.next_offset).where(
                    _offsets.c.group_id == group, _offsets.c.topic == topic
                )
            ).scalar()
        return {p: (int(got) if got is not None else NEVER_COMMITTED) for p in partitions}

    def group_known(self, group: str) -> bool:
        with self._errors(), self.log.engine.connect() as conn:
            return (
                conn.execute(sa.select(_offsets.c.topic).where(_offsets.c.group_id == group).limit(1)).first()
                is not None
            )

    def close(self) -> None:
        self.log.dispose()
