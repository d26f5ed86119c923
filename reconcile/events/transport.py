"""The events-out port: a transport publishes outbox rows and reports which were confirmed.

Two adapters: :class:`~reconcile.events.kafka.KafkaTransport` (production) and
:class:`~reconcile.events.embedded.EmbeddedTransport` (a table-backed log, the default for
trying reconcile without infrastructure). The relay marks a row sent only when its transport
confirmed it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..store import OutboxRow

__all__ = ["Transport", "PublishReport"]


@dataclass
class PublishReport:
    """What one publish call achieved: confirmed row ids, failed row ids, the first error."""

    confirmed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    first_error: str | None = None


class Transport(ABC):
    """Publishes corrective events; one instance per relay run."""

    name: str = "transport"

    @abstractmethod
    def publish(self, rows: Sequence[OutboxRow]) -> PublishReport:
        """Send the rows in order; report which the destination confirmed durable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
