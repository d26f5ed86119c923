"""The inventory projector: builds ``stock_view`` from the shop's events.

``OrderPlaced`` lines decrement a SKU's stock; every line carries the stock version the order
produced, and a line applies only when it is newer than the row's version, so redelivered or
stale events change nothing. Corrective events (``StockLevelReconciled``, from reconcile) set a
row's absolute state through :class:`reconcile.projector.ProjectionWriter`, under the same
version rule. Every applied event id is recorded with the writes, so each applies once.

A lost ``OrderPlaced`` is never noticed here: later lines of the same SKU move the version on,
and the on-hand count stays wrong — the silent drift reconcile exists to find.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..projector import Incoming, ProjectionWriter, ProjectorStats, applied_events
from .channel import Channel, Message
from .service import ORDER_PLACED
from .world import stock_view

__all__ = ["InventoryProjector"]


@dataclass
class _Counts:
    orders: int = 0
    corrections: int = 0
    duplicates: int = 0


class InventoryProjector:
    """Consumes shop.orders and the corrections topic into stock_view."""

    def __init__(self, projection_url: str, channel: Channel, *, topics: Sequence[str], group: str):
        self.writer = ProjectionWriter(projection_url, "stock_view", version_field="version")
        self.engine = self.writer.engine
        self.channel = channel
        self.topics = list(topics)
        self.group = group
        self.counts = _Counts()
        self.corrections = ProjectorStats()

    def apply(self, messages: Sequence[Message]) -> None:
        """Apply a batch: runs of order events in one transaction, corrections through the writer."""
        run: list[Message] = []
        for m in messages:
            if m.headers.get("ce_type") == ORDER_PLACED:
                run.append(m)
                continue
            if run:
                self._orders(run)
                run = []
            self._correction(m)
        if run:
            self._orders(run)

    def _orders(self, messages: Sequence[Message]) -> None:
        with self.engine.begin() as conn:
            for m in messages:
                event_id = m.headers["ce_id"]
                if conn.execute(
                    sa.select(applied_events.c.event_id).where(applied_events.c.event_id == event_id)
                ).first():
                    self.counts.duplicates += 1
                    continue
                conn.execute(applied_events.insert().values(event_id=event_id))
                data = json.loads(m.value or "{}")
                for line in data["lines"]:
                    conn.execute(
                        stock_view.update()
                        .where(
                            stock_view.c.warehouse == data["warehouse"],
                            stock_view.c.sku == line["sku"],
                            stock_view.c.version < line["stock_version"],
                        )
                        .values(
                            on_hand=stock_view.c.on_hand - line["quantity"], version=line["stock_version"]
                        )
                    )
                self.counts.orders += 1

    def _correction(self, m: Message) -> None:
        event_id = m.headers.get("ce_id", "")
        if m.value is None:
            incoming = Incoming(event_id, json.loads(m.key or "{}"), None)
        else:
            data = json.loads(m.value)
            incoming = Incoming(
                event_id, dict(data["key"]), None if data.get("tombstone") else dict(data["state"])
            )
        before = self.corrections.duplicates
        self.writer.apply([incoming], self.corrections)
        if self.corrections.duplicates > before:
            self.counts.duplicates += 1
        else:
            self.counts.corrections += 1

    def run(self, stop: threading.Event, *, crash: threading.Event | None = None) -> None:
        """Consume until ``stop``; if ``crash`` is set, die after applying a batch but before
        committing its offsets (the batch is redelivered to the next incarnation)."""
        sub = self.channel.subscribe(self.group, self.topics)
        try:
            while not stop.is_set():
                batch = sub.poll(500, 0.2)
                if not batch:
                    continue
                self.apply(batch)
                if crash is not None and crash.is_set():
                    return  # no commit: the crash
                sub.commit()
        finally:
            sub.close()

    def dispose(self) -> None:
        self.writer.dispose()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is true or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
