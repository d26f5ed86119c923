"""The inventory projector: builds ``stock_view`` from the shop's events.

``OrderPlaced`` lines decrement a SKU's stock. Every line carries the stock version its order
produced and is journaled, so each applies exactly once and in any order (deltas commute: a
relay that retries may deliver an older event after a newer one). Corrective events
(``StockLevelReconciled``, from reconcile) carry the truth at some version V: the row becomes
that truth plus the deltas applied after V (orders keep flowing while reconcile heals), and
deltas up to V are from then on known to be included. Every applied event id is recorded with
the writes, so a redelivered event changes nothing.

A lost ``OrderPlaced`` is never noticed here: later lines of the same SKU move the version on,
and the on-hand count stays wrong — the silent drift reconcile exists to find.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..sources.writer import applied_events
from .channel import Channel, Message
from .service import ORDER_PLACED
from .world import engine, stock_base, stock_journal, stock_view

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
        # Faults for the replay tests (ground truth of the causes):
        # a bug that applies every line of this entity one unit wrong (misapplied) ...
        self.bug: tuple[str, str] | None = None
        self.misapplied: set[tuple[str, str]] = set()
        # ... and a crash after committing a batch's offsets but before applying it (not_applied).
        self.crash_after_commit = threading.Event()
        self.dropped: list[str] = []  # ids of the OrderPlaced events consumed but never applied
        self.dropped_entities: set[tuple[str, str]] = set()

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
        """Apply a run of OrderPlaced events set-based: a handful of statements per batch.

        Each line applies once, in any order (deltas commute): lines at or below the row's base
        version are already included; lines already in the journal were applied before.
        """
        by_id: dict[str, dict[str, Any]] = {}
        for m in messages:
            by_id.setdefault(m.headers["ce_id"], json.loads(m.value or "{}"))
        with self.engine.begin() as conn:
            ids = list(by_id)
            done = set(
                conn.execute(
                    sa.select(applied_events.c.event_id).where(applied_events.c.event_id.in_(ids))
                ).scalars()
            )
            self.counts.duplicates += len(messages) - len(ids) + len(done)
            fresh = [i for i in ids if i not in done]
            if not fresh:
                return
            conn.execute(applied_events.insert(), [{"event_id": i} for i in fresh])
            lines = [
                (by_id[i]["warehouse"], ln["sku"], int(ln["stock_version"]), int(ln["quantity"]))
                for i in fresh
                for ln in by_id[i]["lines"]
            ]
            entities = sorted({(w, s) for w, s, _, _ in lines})
            base = {
                (w, s): b
                for w, s, b in conn.execute(
                    sa.select(stock_base.c.warehouse, stock_base.c.sku, stock_base.c.base_version).where(
                        sa.tuple_(stock_base.c.warehouse, stock_base.c.sku).in_(entities)
                    )
                )
            }
            journaled = {
                tuple(r)
                for r in conn.execute(
                    sa.select(stock_journal.c.warehouse, stock_journal.c.sku, stock_journal.c.version).where(
                        sa.tuple_(
                            stock_journal.c.warehouse, stock_journal.c.sku, stock_journal.c.version
                        ).in_([(w, s, v) for w, s, v, _ in lines])
                    )
                )
            }
            new_lines = []
            for w, s, v, q in lines:
                if v <= base.get((w, s), 0) or (w, s, v) in journaled:
                    continue
                journaled.add((w, s, v))
                new_lines.append((w, s, v, q))
            if new_lines:
                conn.execute(
                    stock_journal.insert(),
                    [{"warehouse": w, "sku": s, "version": v, "quantity": q} for w, s, v, q in new_lines],
                )
                totals: dict[tuple[str, str], list[int]] = {}
                for w, s, v, q in new_lines:
                    t = totals.setdefault((w, s), [0, 0])
                    if (w, s) == self.bug:  # the fault: one unit too many, every line
                        q += 1
                        self.misapplied.add((w, s))
                    t[0] += q
                    t[1] = max(t[1], v)
                conn.execute(
                    stock_view.update()
                    .where(
                        stock_view.c.warehouse == sa.bindparam("b_w"), stock_view.c.sku == sa.bindparam("b_s")
                    )
                    .values(
                        on_hand=stock_view.c.on_hand - sa.bindparam("b_q"),
                        version=sa.case(
                            (stock_view.c.version < sa.bindparam("b_v"), sa.bindparam("b_v")),
                            else_=stock_view.c.version,
                        ),
                    ),
                    [{"b_w": w, "b_s": s, "b_q": q, "b_v": v} for (w, s), (q, v) in totals.items()],
                )
        self.counts.orders += len(fresh)  # only once committed: `caught_up` trusts this count

    def applied(self, event_ids: Sequence[str]) -> int:
        """How many of these events this projection has applied (committed)."""
        n = 0
        with self.engine.connect() as conn:
            for i in range(0, len(event_ids), 1000):
                n += int(
                    conn.execute(
                        sa.select(sa.func.count())
                        .select_from(applied_events)
                        .where(applied_events.c.event_id.in_(event_ids[i : i + 1000]))
                    ).scalar()
                    or 0
                )
        return n

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
        wh, sku, at = key["warehouse"], key["sku"], int(state["version"])
        where = (stock_view.c.warehouse == wh, stock_view.c.sku == sku)
        bwhere = (stock_base.c.warehouse == wh, stock_base.c.sku == sku)
        with self.engine.begin() as conn:
            if not self._first_time(conn, m.headers.get("ce_id", "")):
                return
            base = conn.execute(sa.select(stock_base.c.base_version).where(*bwhere)).scalar()
            if base is not None and at <= base:
                return  # an older correction than what the row already includes
            # The truth at version `at`, plus the deltas this projector applied after it.
            since, newest = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(stock_journal.c.quantity), 0),
                    sa.func.max(stock_journal.c.version),
                ).where(
                    stock_journal.c.warehouse == wh, stock_journal.c.sku == sku, stock_journal.c.version > at
                )
            ).one()
            conn.execute(stock_view.delete().where(*where))  # also drops duplicated rows
            conn.execute(
                stock_view.insert().values(
                    warehouse=wh,
                    sku=sku,
                    on_hand=int(state["on_hand"]) - int(since),
                    version=max(at, newest or 0),
                )
            )
            conn.execute(stock_base.delete().where(*bwhere))
            conn.execute(stock_base.insert().values(warehouse=wh, sku=sku, base_version=at))
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
                if self.crash_after_commit.is_set():
                    sub.commit()  # the offsets are committed ... and the process dies before applying
                    self.crash_after_commit.clear()
                    for m in batch:
                        if m.headers.get("ce_type") == ORDER_PLACED:
                            self.dropped.append(m.headers["ce_id"])
                            data = json.loads(m.value or "{}")
                            self.dropped_entities |= {(data["warehouse"], ln["sku"]) for ln in data["lines"]}
                    return
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
