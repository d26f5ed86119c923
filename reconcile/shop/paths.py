"""The reference shop's event path, for specs that attribute causes (``path:``).

In ``outbox`` mode every ``shop_outbox`` row becomes one event (published when the relay has
``published_at``); in ``direct`` mode every ``orders`` row does (the order service publishes it
from the request handler). Either way the events land on the orders topic, the inventory
projector's group consumes them and journals every applied event id.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from ..spec import EventPath, Spec

__all__ = ["shop_path", "with_path"]


def shop_path(
    mode: Literal["direct", "outbox"],
    topic: str,
    group: str,
    *,
    transport: Literal["kafka", "embedded"] = "kafka",
    publish_grace: timedelta = timedelta(minutes=1),
    settle: timedelta = timedelta(seconds=30),
    window: timedelta = timedelta(hours=24),
) -> EventPath:
    """The path of the shop's OrderPlaced events into the inventory projection."""
    source: dict[str, Any]
    if mode == "outbox":  # the row's time: ce_time in its headers column
        source = {
            "table": "shop_outbox",
            "event_id": "event_id",
            "payload": "payload",
            "published": "published_at",
        }
    else:
        source = {"table": "orders", "event_id": "event_id", "payload": "payload", "written": "placed_at"}
    return EventPath.model_validate(
        {
            "topic": topic,
            "consumer_group": group,
            "event_id": "header:ce_id",
            "window": window,
            "entities": {"each": "$.data.lines[*]", "key": {"warehouse": "$.data.warehouse", "sku": "sku"}},
            "source": source,
            "applied": {"table": "reconcile_applied_events", "event_id": "event_id"},
            "publish_grace": publish_grace,
            "settle": settle,
            "transport": transport,
        }
    )


def with_path(spec: Spec, path: EventPath) -> Spec:
    """The shop's inventory spec with its event path (causes, positions instead of the grace)."""
    return spec.model_copy(update={"path": path})
