"""Builders for cause tests: a small shop on real PostgreSQL and Kafka whose path can be broken
at each stage (outbox row unpublished, published but lost, consumed but not applied, applied wrong)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .builders import execute, make_table
from .topic_cases import Msg, commit_group, event, produce

WAREHOUSE = "W1"


def order_event(event_id: str, *skus: str, at: datetime | None = None) -> Msg:
    data = {"warehouse": WAREHOUSE, "lines": [{"sku": s, "quantity": 1} for s in skus]}
    msg = event(event_id, data, key=WAREHOUSE, partition=0)
    if at is not None:
        msg.timestamp_ms = int(at.timestamp() * 1000)
    return msg


@dataclass
class Shop:
    """Truth (stock_levels + shop_outbox), projection (stock_view + applied_events), a topic, a group."""

    truth_url: str
    projection_url: str
    bootstrap: str
    topic: str
    group: str = field(default_factory=lambda: f"test.projector.{uuid.uuid4().hex[:10]}")
    offset: int = 0
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def create(self) -> Shop:
        make_table(
            self.truth_url,
            "stock_levels",
            [
                sa.Column("warehouse", sa.String(10), primary_key=True),
                sa.Column("sku", sa.String(20), primary_key=True),
                sa.Column("on_hand", sa.Integer, nullable=False),
                sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            ],
            [],
        )
        make_table(
            self.truth_url,
            "shop_outbox",
            [
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("event_id", sa.String(64), nullable=False, unique=True),
                sa.Column("payload", sa.Text, nullable=False),
                sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
            ],
            [],
        )
        make_table(
            self.projection_url,
            "stock_view",
            [
                sa.Column("warehouse", sa.String(10), primary_key=True),
                sa.Column("sku", sa.String(20), primary_key=True),
                sa.Column("on_hand", sa.Integer, nullable=False),
            ],
            [],
        )
        make_table(self.projection_url, "applied_events", [sa.Column("event_id", sa.String(64))], [])
        return self

    # -- the stages ------------------------------------------------------------------------
    def truth(self, sku: str, on_hand: int, at: datetime | None = None) -> None:
        execute(
            self.truth_url,
            "INSERT INTO stock_levels VALUES ('W1', :sku, :n, :at) "
            "ON CONFLICT (warehouse, sku) DO UPDATE SET on_hand = :n, updated_at = :at",
            sku=sku,
            n=on_hand,
            at=at or self.now,
        )

    def view(self, sku: str, on_hand: int) -> None:
        execute(
            self.projection_url,
            "INSERT INTO stock_view VALUES ('W1', :sku, :n) "
            "ON CONFLICT (warehouse, sku) DO UPDATE SET on_hand = :n",
            sku=sku,
            n=on_hand,
        )

    def written(self, eid: str, *skus: str, at: datetime, published: bool) -> None:
        payload = json.dumps({"warehouse": WAREHOUSE, "lines": [{"sku": s, "quantity": 1} for s in skus]})
        execute(
            self.truth_url,
            "INSERT INTO shop_outbox (event_id, payload, created_at, published_at) VALUES (:e, :p, :c, :pub)",
            e=eid,
            p=payload,
            c=at,
            pub=at if published else None,
        )

    def publish(self, eid: str, *skus: str, at: datetime) -> int:
        produce(self.bootstrap, self.topic, [order_event(eid, *skus, at=at)])
        self.offset += 1
        return self.offset - 1

    def applied(self, *eids: str) -> None:
        for e in eids:
            execute(self.projection_url, "INSERT INTO applied_events VALUES (:e)", e=e)

    def commit(self, offset: int) -> None:
        commit_group(self.bootstrap, self.topic, self.group, {0: offset})

    # -- the spec --------------------------------------------------------------------------
    def spec(self, **path: Any) -> dict[str, Any]:
        return {
            "name": f"inventory-{uuid.uuid4().hex[:6]}",
            "truth": {"url": self.truth_url, "table": "stock_levels"},
            "projection": {"url": self.projection_url, "table": "stock_view"},
            "key": ["warehouse", "sku"],
            "columns": ["on_hand"],
            "freshness": {"truth_column": "updated_at", "grace": "1s"},
            "path": {
                "topic": self.topic,
                "consumer_group": self.group,
                "event_id": "header:ce_id",
                "window": "1h",
                "entities": {
                    "each": "$.data.lines[*]",
                    "key": {"warehouse": "$.data.warehouse", "sku": "sku"},
                },
                "source": {
                    "table": "shop_outbox",
                    "event_id": "event_id",
                    "payload": "payload",
                    "published": "published_at",
                },
                "applied": {"table": "applied_events", "event_id": "event_id"},
                "publish_grace": "1m",
                "settle": "1s",
                **path,
            },
        }

    def ago(self, **kw: float) -> datetime:
        return self.now - timedelta(**kw)
