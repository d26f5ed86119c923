"""The topic-reading port: a topic's recorded extent, its messages in that extent, a group's offsets.

An audit that reads a topic as a side first fixes its **extent**: every partition's end offset
when the run starts, and where the window begins (the first offset at or after ``now - since``,
or the earliest). It reads exactly that extent, whatever is produced meanwhile, and records it
with the run, so a run's view of the topic is fixed and can be named later. The consumer group's
committed offsets, taken at the same moment, say which messages are still in flight.

Reading never creates a topic and never joins or commits for a consumer group. Two adapters,
made by :func:`open_reader`: Kafka (:mod:`reconcile.events.kafka_reader`) and the embedded log
(:mod:`reconcile.events.embedded_reader`).

Messages come in batches of plain tuples (cheap to make a million of)::

    (partition, offset, timestamp_ms or -1, key, value, headers)

with ``key`` and ``value`` as bytes or str (None for a null key / a tombstone) and ``headers``
a list of (name, bytes) pairs, a dict, or None.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kafka import KafkaSettings

__all__ = ["Extent", "RawMessage", "TopicReader", "open_reader", "NEVER_COMMITTED"]

RawMessage = tuple[int, int, int, Any, Any, Any]
NEVER_COMMITTED = -1  # a partition the group has no committed offset for


@dataclass(frozen=True)
class Extent:
    """The part of a topic one run reads: per partition, ``start <= offset < end``."""

    topic: str
    start: Mapping[int, int]
    end: Mapping[int, int]  # the end offsets (high watermarks) when the run started
    taken_at: datetime
    since: datetime | None = None  # None: from the earliest offset
    where: str = ""  # the broker (or log) it was read from, masked

    @property
    def partitions(self) -> list[int]:
        return sorted(self.end)

    @property
    def messages(self) -> int:
        """Offsets in the extent (an upper bound on messages: compaction and transactions leave gaps)."""
        return sum(max(0, self.end[p] - self.start.get(p, 0)) for p in self.end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "where": self.where,
            "taken_at": self.taken_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "since": self.since.astimezone(UTC).isoformat().replace("+00:00", "Z") if self.since else None,
            "partitions": {str(p): [self.start.get(p, 0), self.end[p]] for p in self.partitions},
            "offsets": self.messages,
        }


class TopicReader(ABC):
    """Reads topics of one broker (or log): extents, messages in an extent, committed offsets."""

    @property
    @abstractmethod
    def where(self) -> str:
        """The broker or log, for messages (masked)."""

    @abstractmethod
    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; raises SpecError (naming the topic) when it does not exist."""

    @abstractmethod
    def extent(self, topic: str, since: datetime | None) -> Extent:
        """Fix the extent now: end offsets of every partition, start at ``since`` (None: earliest)."""

    @abstractmethod
    def read(self, extent: Extent, batch: int = 10_000) -> Iterator[list[RawMessage]]:
        """Every message inside ``extent``, in batches (each partition in offset order)."""

    @abstractmethod
    def committed(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The group's committed offset per partition (NEVER_COMMITTED where it has none)."""

    @abstractmethod
    def group_known(self, group: str) -> bool:
        """Whether the broker knows the consumer group (it has joined or committed)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_reader(
    kind: str,
    *,
    kafka: KafkaSettings | None = None,
    embedded_url: str | None = None,
    timeout_s: float = 30.0,
) -> TopicReader:
    """The reader for ``kind`` (``kafka`` or ``embedded``), configured once by the caller."""
    if kind == "embedded":
        from .embedded_reader import EmbeddedTopicReader

        if not embedded_url:
            raise ValueError("the embedded log reader needs the URL of its database")
        return EmbeddedTopicReader(embedded_url)
    if kind == "kafka":
        from .kafka import KafkaSettings
        from .kafka_reader import KafkaTopicReader

        return KafkaTopicReader(kafka or KafkaSettings.from_env(), timeout_s=timeout_s)
    raise ValueError(f"topic reader {kind!r} is not one of kafka, embedded")
