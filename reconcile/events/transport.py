"""The events port: a transport publishes events, hands them to consumers, and reports lag.

Two adapters, made by one factory (:func:`reconcile.events.open_transport`):

* ``kafka`` — :class:`~reconcile.events.kafka.KafkaTransport`, a real broker (production);
* ``embedded`` — :class:`~reconcile.events.embedded.EmbeddedTransport`, a table-backed log in
  a SQL database (the default for trying reconcile without infrastructure).

The relay marks an outbox row sent only when its transport confirmed it; a consumer commits
its position only after it applied what it read, so a crash in between redelivers (ids kept,
so a projector can dedupe).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = [
    "TRANSPORTS",
    "Outgoing",
    "Message",
    "PublishReport",
    "EventConsumer",
    "Transport",
]

TRANSPORTS = ("kafka", "embedded")


class Outgoing(Protocol):
    """What a transport publishes (an outbox row has these fields)."""

    @property
    def id(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def message_key(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def payload(self) -> str | None: ...


@dataclass(frozen=True)
class Message:
    """One event as a consumer reads it."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: str | None
    timestamp: datetime | None = None


@dataclass
class PublishReport:
    """What one publish call achieved: confirmed row ids; failed row ids (worth retrying: the
    broker was unreachable, a timeout) with the first error; and rejected rows (the destination
    refused them for good — too large, invalid) with each one's reason."""

    confirmed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    first_error: str | None = None
    rejected: dict[int, str] = field(default_factory=dict)


class EventConsumer(ABC):
    """A consumer group's reader of some topics: poll, apply, then commit."""

    @abstractmethod
    def poll(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        """The next messages after this consumer's position (empty after ``timeout_s``)."""

    @abstractmethod
    def commit(self) -> None:
        """Commit the group's position past every message polled so far."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group without committing."""


class Transport(ABC):
    """Publishes events, reads them back for a consumer group, and measures a group's lag."""

    name: str = "transport"

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the events go, for messages (bootstrap servers, masked database URL)."""

    @abstractmethod
    def publish(self, rows: Sequence[Outgoing]) -> PublishReport:
        """Send the rows in order; report which the destination confirmed durable."""

    @abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> EventConsumer:
        """A consumer in ``group`` on ``topics``, starting at the group's committed position
        (from the earliest message when the group never committed)."""

    @abstractmethod
    def lag(self, group: str, topic: str) -> int:
        """Messages of ``topic`` the group has not committed yet (a missing topic has none)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
