"""The inventory projector: builds ``stock_view`` from the shop's events.

``OrderPlaced`` lines decrement a SKU's stock; every line carries the stock version the order
produced, and a line applies only when it is newer than the row's version, so redelivered or
stale events change nothing; applied lines are journaled. Corrective events
(``StockLevelReconciled``, from reconcile) carry the truth at some version V: when V is at least
the row's version they set the row; when newer orders were applied meanwhile, the truth at V is
rebased over the journaled deltas after V (orders keep flowing while reconcile heals). Every
applied event id is recorded with the writes, so each applies once.

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

from ..projector import applied_events
from .channel import Channel, Message
from .service import ORDER_PLACED
from .world import engine, stock_journal, stock_view

__all__ = ["InventoryProjector"]


@dataclass
class _Counts:
    orders: int = 0
    corrections: int = 0
    duplicates: int = 0


class InventoryProjector:
    """Consumes shop.orders and the corrections topic into stock_view."""

    def __init__(self, projection_url: str, channel: Channel, *, topics: Sequence[str], group: str):
        self.engine = engine(projection_url)
        applied_events.create(self.engine, checkfirst=True)
        self.channel = channel
        self.topics = list(topics)
        self.group = group
        self.counts = _Counts()

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
        applied_orders = 0  # counted only once the transaction committed: `caught_up` trusts it
        with self.engine.begin() as conn:
            for m in messages:
                if not self._first_time(conn, m.headers["ce_id"]):
                    continue
                data = json.loads(m.value or "{}")
                wh = data["warehouse"]
                for line in data["lines"]:
                    applied = conn.execute(
                        stock_view.update()
                        .where(
                            stock_view.c.warehouse == wh,
                            stock_view.c.sku == line["sku"],
                            stock_view.c.version < line["stock_version"],
                        )
                        .values(
                            on_hand=stock_view.c.on_hand - line["quantity"], version=line["stock_version"]
                        )
                    ).rowcount
                    if applied:
                        conn.execute(
                            stock_journal.insert().values(
                                warehouse=wh,
                                sku=line["sku"],
                                version=line["stock_version"],
                                quantity=line["quantity"],
                            )
                        )
                applied_orders += 1
        self.counts.orders += applied_orders

    def _first_time(self, conn: sa.Connection, event_id: str) -> bool:
        """Record the event id; False (and counted) when it was applied before."""
        if conn.execute(
            sa.select(applied_events.c.event_id).where(applied_events.c.event_id == event_id)
        ).first():
            self.counts.duplicates += 1
            return False
        conn.execute(applied_events.insert().values(event_id=event_id))
        return True

    def _correction(self, m: Message) -> None:
        if m.value is None:  # a tombstone: this shop never deletes stock rows; nothing to apply
            return
        data = json.loads(m.value)
        key, state = data["key"], data.get("state")
        if data.get("tombstone") or not state:
            return
        wh, sku = key["warehouse"], key["sku"]
        where = (stock_view.c.warehouse == wh, stock_view.c.sku == sku)
        with self.engine.begin() as conn:
            if not self._first_time(conn, m.headers.get("ce_id", "")):
                return
            rows = conn.execute(sa.select(stock_view.c.version).where(*where)).all()
            current = max((r.version for r in rows), default=None)
            if current is None or len(rows) > 1 or state["version"] >= current:
                conn.execute(stock_view.delete().where(*where))
                conn.execute(stock_view.insert().values(warehouse=wh, sku=sku, **state))
            else:  # orders applied after the truth was read: replay them over the corrected base
                since = conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(stock_journal.c.quantity), 0)).where(
                        stock_journal.c.warehouse == wh,
                        stock_journal.c.sku == sku,
                        stock_journal.c.version > state["version"],
                    )
                ).scalar_one()
                conn.execute(stock_view.update().where(*where).values(on_hand=state["on_hand"] - since))
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
        self.engine.dispose()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is true or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
