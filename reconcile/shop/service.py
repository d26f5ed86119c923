"""The order service: places orders in its database and publishes ``OrderPlaced`` events.

Two publishing modes, the two halves of the article's incident:

* ``direct`` — commit the order, then publish from the request handler. If the broker is
  unreachable (a blip) or the process dies between the two, the order is committed but its
  event is lost: the dual-write bug that makes the inventory projection drift silently.
* ``outbox`` — the event row is written in the same transaction as the order; a relay
  publishes it later and retries until the broker confirms. Nothing is lost.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from ..schemas import validate_datum
from .channel import Channel
from .world import engine, order_lines, orders, shop_outbox, stock_levels

__all__ = ["OrderService", "ShopRelay", "PlacedOrder", "ORDERS_TOPIC", "ORDER_PLACED"]

ORDERS_TOPIC = "shop.orders"
ORDER_PLACED = "OrderPlaced"
Mode = Literal["direct", "outbox"]


@dataclass(frozen=True)
class PlacedOrder:
    """What one committed order changed: its event and the stock versions it produced."""

    event_id: str
    order_id: int
    warehouse: str
    lines: tuple[tuple[str, int, int], ...]  # (sku, quantity, stock_version)
    committed_at: float  # time.monotonic() after the commit


class OrderService:
    """Places orders; publishes OrderPlaced directly or through its outbox."""

    def __init__(
        self,
        truth_url: str,
        channel: Channel,
        *,
        mode: Mode = "direct",
        topic: str = ORDERS_TOPIC,
        on_published: Callable[[PlacedOrder, bool, str | None], None] | None = None,
    ):
        self.engine = engine(truth_url)
        self.channel = channel
        self.mode = mode
        self.topic = topic
        self.on_published = on_published
        self.crash_after_commit = False  # fault: die between commit and publish (direct mode)

    def place_order(self, warehouse: str, lines: Sequence[tuple[str, int]]) -> PlacedOrder:
        """Commit one order (stock decremented, versions bumped); then publish per the mode."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            inserted = conn.execute(
                orders.insert().values(warehouse=warehouse, placed_at=now)
            ).inserted_primary_key
            assert inserted is not None
            order_id = inserted[0]
            placed = []
            for sku, qty in sorted(lines):
                conn.execute(order_lines.insert().values(order_id=order_id, sku=sku, quantity=qty))
                version = conn.execute(
                    stock_levels.update()
                    .where(stock_levels.c.warehouse == warehouse, stock_levels.c.sku == sku)
                    .values(
                        on_hand=stock_levels.c.on_hand - qty,
                        version=stock_levels.c.version + 1,
                        updated_at=now,
                    )
                    .returning(stock_levels.c.version)
                ).scalar_one()
                placed.append((sku, qty, int(version)))
            event_id = uuid.uuid4().hex
            headers, value = self._event(event_id, int(order_id), warehouse, now, placed)
            conn.execute(
                orders.update().where(orders.c.order_id == order_id).values(event_id=event_id, payload=value)
            )
            if self.mode == "outbox":
                conn.execute(
                    shop_outbox.insert().values(
                        event_id=event_id,
                        topic=self.topic,
                        message_key=warehouse,
                        headers=headers,
                        payload=value,
                    )
                )
        order = PlacedOrder(event_id, int(order_id), warehouse, tuple(placed), time.monotonic())
        if self.mode == "direct":
            if self.crash_after_commit:
                self._report(order, False, "crashed between commit and publish")
            else:
                self.channel.publish(
                    self.topic, warehouse, headers, value, lambda ok, err: self._report(order, ok, err)
                )
        return order

    def _report(self, order: PlacedOrder, ok: bool, err: str | None) -> None:
        if self.on_published is not None:
            self.on_published(order, ok, err)

    def _event(
        self, event_id: str, order_id: int, warehouse: str, at: datetime, lines: list[tuple[str, int, int]]
    ) -> tuple[dict[str, str], str]:
        data: dict[str, Any] = {
            "order_id": order_id,
            "warehouse": warehouse,
            "placed_at": int(at.timestamp() * 1000),
            "lines": [{"sku": s, "quantity": q, "stock_version": v} for s, q, v in lines],
            "channel": "web",
        }
        # Avro's Python form of a timestamp-millis is a datetime; the wire form is the millis.
        validate_datum("shop.OrderPlaced", {**data, "placed_at": at})
        headers = {
            "ce_specversion": "1.0",
            "ce_id": event_id,
            "ce_source": "shop/order-service",
            "ce_type": ORDER_PLACED,
            "ce_subject": str(order_id),
            "ce_time": at.isoformat().replace("+00:00", "Z"),
            "content-type": "application/json",
        }
        return headers, json.dumps(data, separators=(",", ":"))

    def dispose(self) -> None:
        self.engine.dispose()


class ShopRelay:
    """Publishes the shop's outbox rows, oldest first, marking each published when confirmed."""

    def __init__(self, truth_url: str, channel: Channel):
        self.engine = engine(truth_url)
        self.channel = channel
        self.published = 0
        self.halted = threading.Event()  # a fault: the relay stops publishing (rows stay unpublished)

    def pass_once(self, limit: int = 500) -> int:
        """Publish what is waiting; return how many the broker confirmed."""
        if self.halted.is_set():
            return 0
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(shop_outbox)
                .where(shop_outbox.c.published_at.is_(None))
                .order_by(shop_outbox.c.id)
                .limit(limit)
            ).all()
        ok_ids: list[int] = []

        def confirmed(row_id: int) -> Callable[[bool, str | None], None]:
            return lambda ok, _err: ok_ids.append(row_id) if ok else None

        for r in rows:
            self.channel.publish(r.topic, r.message_key, dict(r.headers), r.payload, confirmed(r.id))
        self.channel.flush(10)
        if ok_ids:
            with self.engine.begin() as conn:
                conn.execute(
                    shop_outbox.update()
                    .where(shop_outbox.c.id.in_(ok_ids))
                    .values(published_at=datetime.now(UTC))
                )
        self.published += len(ok_ids)
        return len(ok_ids)

    def run(self, stop: threading.Event, interval_s: float = 0.05) -> None:
        """Relay until ``stop`` is set and the outbox is drained (retrying through blips)."""
        while True:
            n = self.pass_once()
            if n == 0:
                if stop.is_set() and (self.halted.is_set() or self.backlog() == 0):
                    return
                time.sleep(interval_s)

    def event_ids(self) -> list[str]:
        """The ids of every event written to the shop's outbox so far."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(shop_outbox.c.event_id)).scalars())

    def backlog(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(shop_outbox)
                    .where(shop_outbox.c.published_at.is_(None))
                ).scalar()
                or 0
            )

    def dispose(self) -> None:
        self.engine.dispose()
