"""The reference shop's tables: the order service's truth and the inventory projection.

Truth (the order service's database): ``orders``, ``order_lines``, ``stock_levels`` (one row per
warehouse and SKU, with a ``version`` bumped by every change and ``updated_at``), and
``shop_outbox`` for the outbox publishing mode. Projection (the inventory service's database):
``stock_view`` (warehouse, sku, on_hand, version), built from the events.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from ..db import make_engine

__all__ = [
    "truth_meta",
    "projection_meta",
    "stock_levels",
    "orders",
    "order_lines",
    "shop_outbox",
    "stock_view",
    "create_world",
    "skus",
]

truth_meta = sa.MetaData()
orders = sa.Table(
    "orders",
    truth_meta,
    sa.Column(
        "order_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("warehouse", sa.String(10), nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    # The order's OrderPlaced event, written with the order: each row of this facts table becomes
    # one event, so a spec's `path.source` can name it (direct publishing has no outbox).
    sa.Column("event_id", sa.String(64), nullable=True),
    sa.Column("payload", sa.Text, nullable=True),
)
order_lines = sa.Table(
    "order_lines",
    truth_meta,
    sa.Column("order_id", sa.BigInteger, sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("sku", sa.String(20), primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
)
stock_levels = sa.Table(
    "stock_levels",
    truth_meta,
    sa.Column("warehouse", sa.String(10), primary_key=True),
    sa.Column("sku", sa.String(20), primary_key=True),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
shop_outbox = sa.Table(
    "shop_outbox",
    truth_meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("message_key", sa.Text, nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
)

projection_meta = sa.MetaData()
stock_view = sa.Table(
    "stock_view",
    projection_meta,
    sa.Column("warehouse", sa.String(10), nullable=False),
    sa.Column("sku", sa.String(20), nullable=False),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Index("ix_stock_view_key", "warehouse", "sku"),
)
# The projector's own bookkeeping. The journal holds every delta it applied (version ->
# quantity): deltas then commute (each applies once, in any order), and a corrective event
# carrying the truth at version V is rebased over the deltas applied after V. The base is the
# version the row's on-hand count is known to include everything up to (snapshot or correction).
stock_base = sa.Table(
    "stock_base",
    projection_meta,
    sa.Column("warehouse", sa.String(10), primary_key=True),
    sa.Column("sku", sa.String(20), primary_key=True),
    sa.Column("base_version", sa.BigInteger, nullable=False),
)
stock_journal = sa.Table(
    "stock_journal",
    projection_meta,
    sa.Column("warehouse", sa.String(10), primary_key=True),
    sa.Column("sku", sa.String(20), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
)


def skus(warehouses: int, per_warehouse: int) -> list[tuple[str, str]]:
    """The (warehouse, sku) entities of a shop of this size."""
    return [(f"W{w}", f"SKU-{s:04d}") for w in range(1, warehouses + 1) for s in range(1, per_warehouse + 1)]


def engine(url: str) -> sa.Engine:
    """An engine on one of the shop's own databases (WAL on SQLite: a writer and readers at once)."""
    return make_engine(url, sqlite_wal=True)


def create_world(
    truth_url: str,
    projection_url: str,
    *,
    warehouses: int = 3,
    per_warehouse: int = 40,
    on_hand: int = 1_000_000,
) -> list[tuple[str, str]]:
    """(Re)create both databases' tables and stock every SKU; the projection starts in sync
    (the snapshot a projector bootstraps from). Returns the entities."""
    entities = skus(warehouses, per_warehouse)
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)
    t, p = engine(truth_url), engine(projection_url)
    try:
        truth_meta.drop_all(t)
        truth_meta.create_all(t)
        projection_meta.drop_all(p)
        projection_meta.create_all(p)
        with p.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS reconcile_applied_events"))
        with t.begin() as conn:
            conn.execute(
                stock_levels.insert(),
                [
                    {"warehouse": w, "sku": s, "on_hand": on_hand, "version": 1, "updated_at": long_ago}
                    for w, s in entities
                ],
            )
        with p.begin() as conn:
            conn.execute(
                stock_view.insert(),
                [{"warehouse": w, "sku": s, "on_hand": on_hand, "version": 1} for w, s in entities],
            )
            conn.execute(
                stock_base.insert(), [{"warehouse": w, "sku": s, "base_version": 1} for w, s in entities]
            )
    finally:
        t.dispose()
        p.dispose()
    return entities
