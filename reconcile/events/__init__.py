"""Events: corrective events (CloudEvents), and the transports that carry them.

The port is :mod:`reconcile.events.transport`; :func:`open_transport` is its one factory, the
only place that chooses an adapter by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cloudevent import CorrectiveEvent, build_event, event_id, message_key
from .transport import TRANSPORTS, PublishReport, Transport

if TYPE_CHECKING:
    from .kafka import KafkaSettings

__all__ = [
    "CorrectiveEvent",
    "build_event",
    "event_id",
    "message_key",
    "PublishReport",
    "Transport",
    "TRANSPORTS",
    "open_transport",
]


def open_transport(
    kind: str,
    *,
    kafka: KafkaSettings | None = None,
    embedded_url: str | None = None,
    timeout_s: float = 30.0,
) -> Transport:
    """The transport called ``kind`` (``kafka`` or ``embedded``), configured once by the caller."""
    if kind == "embedded":
        from .embedded import EmbeddedLog, EmbeddedTransport

        if not embedded_url:
            raise ValueError("the embedded transport needs the URL of its database")
        return EmbeddedTransport(EmbeddedLog(embedded_url))
    if kind == "kafka":
        from .kafka import KafkaSettings, KafkaTransport

        return KafkaTransport(kafka or KafkaSettings.from_env(), timeout_s=timeout_s)
    raise ValueError(f"transport {kind!r} is not one of {', '.join(TRANSPORTS)}")
