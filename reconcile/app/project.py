"""Use case: the reference projector — consume a spec's corrective events into its projection.

It is what the tests and the demo use as "the service that builds the projection", and a
template for real projectors: poll a batch from the transport (Kafka or the embedded log),
apply it and record every applied event id in the projection database in ONE transaction
(:class:`~reconcile.sources.writer.ProjectionWriter`), then commit the consumer group's
position. A crash between the two redelivers the batch, and the applied-ids table turns the
redelivery into a no-op.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from ..sources.writer import Incoming, ProjectionWriter, ProjectorStats
from ..spec import Spec
from .context import Context

__all__ = ["Projector", "ProjectorStats", "Incoming"]


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
        ctx: Context,
        spec: Spec,
        *,
        version_field: str | None = None,
        group: str | None = None,
    ):
        if spec.correction is None or not spec.projection.table:
            raise ValueError(f"spec {spec.name}: the projector needs correction: and projection.table")
        self.spec = spec
        self.topic = spec.correction.topic
        self.group = group or spec.correction.consumer_group or f"{spec.name}-projector"
        self.ctx = ctx
        self.writer = ProjectionWriter(
            ctx.side_url(spec.projection) or "",
            spec.projection.table,
            version_field=version_field,
            schema=spec.projection.schema_,
        )
        self.stats = ProjectorStats()

    def run(
        self,
        *,
        idle_timeout_s: float | None = 3.0,
        max_seconds: float = 120.0,
        stop: Callable[[], bool] | None = None,
        on_batch: Callable[[ProjectorStats], None] | None = None,
    ) -> ProjectorStats:
        """Consume until nothing arrived for ``idle_timeout_s`` (or ``stop()``, or ``max_seconds``).

        ``idle_timeout_s`` None: run until ``stop()`` or ``max_seconds``.
        """
        assert self.spec.correction is not None
        consumer = self.ctx.transport(self.spec.correction.transport).consumer(self.group, [self.topic])
        started = last = time.monotonic()
        try:
            while time.monotonic() - started < max_seconds and not (stop and stop()):
                messages = consumer.poll(2000, timeout_s=0.5)
                if messages:
                    self.writer.apply([_incoming(m.key, m.headers, m.value) for m in messages], self.stats)
                    consumer.commit()
                    last = time.monotonic()
                    if on_batch:
                        on_batch(self.stats)
                elif idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                    break
        finally:
            consumer.close()
        return self.stats

    def close(self) -> None:
        self.writer.dispose()
