"""The load generator and the ground truth it records.

Orders arrive at a steady rate for a duration, each for 1-3 random SKUs of one warehouse. The
generator remembers, per entity (warehouse, sku), when it last changed and whether any of its
events was lost, so a test can check the audit's findings exactly: the entities that must be
found are those with a lost event whose last change is older than the freshness grace.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .service import OrderService, PlacedOrder

__all__ = ["LoadGenerator", "GroundTruth", "Score"]

Entity = tuple[str, str]


@dataclass
class Score:
    """Findings against the ground truth."""

    expected: int
    found: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.expected if self.expected else 1.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "expected": self.expected,
            "found": self.found,
            "true_positives": self.true_positives,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
        }


@dataclass
class GroundTruth:
    """What really happened: every order, every lost event, each entity's last change."""

    orders: int = 0
    published: int = 0
    lost_events: list[str] = field(default_factory=list)
    lost_orders: list[int] = field(default_factory=list)  # the orders of the lost events
    lost_entities: set[Entity] = field(default_factory=set)
    lost_lines: dict[str, list[Entity]] = field(default_factory=dict)  # lost event id -> its entities
    last_change: dict[Entity, float] = field(default_factory=dict)  # time.monotonic()
    events_of: dict[Entity, list[str]] = field(default_factory=dict)  # event ids, in order
    delivered: dict[str, bool] = field(default_factory=dict)  # event id -> broker confirmed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_order(self, order: PlacedOrder) -> None:
        with self.lock:
            self.orders += 1
            for sku, _qty, _v in order.lines:
                self.last_change[(order.warehouse, sku)] = order.committed_at
                self.events_of.setdefault((order.warehouse, sku), []).append(order.event_id)

    def record_delivery(self, order: PlacedOrder, ok: bool, _err: str | None) -> None:
        with self.lock:
            self.delivered[order.event_id] = ok
            if ok:
                self.published += 1
                return
            self.lost_events.append(order.event_id)
            self.lost_orders.append(order.order_id)
            self.lost_lines[order.event_id] = [(order.warehouse, sku) for sku, _qty, _v in order.lines]
            self.lost_entities.update(self.lost_lines[order.event_id])

    def arrived_after_all(self, event_ids: Iterable[str]) -> None:
        """These events were reported lost but reached the projection anyway.

        A produce that timed out on the client may still have been written by the broker: Kafka
        cannot tell the producer which (without idempotence). Such an event is not lost, and its
        entities stay lost only through another lost event.
        """
        with self.lock:
            arrived = set(event_ids) & set(self.lost_lines)
            if not arrived:
                return
            pairs = zip(self.lost_events, self.lost_orders, strict=True)
            kept = [(e, o) for e, o in pairs if e not in arrived]
            self.lost_events = [e for e, _ in kept]
            self.lost_orders = [o for _, o in kept]
            for e in arrived:
                del self.lost_lines[e]
            self.lost_entities = {x for lines in self.lost_lines.values() for x in lines}

    def score(self, found: set[Entity], grace_s: float, at: float) -> Score:
        """Precision/recall of the entities an audit that started at ``at`` reported.

        Must be found: entities with a lost event and no change since ``at - grace - 1s``.
        Must not be found: entities that never lost an event. Lost entities that changed later
        than that are in flight or changed while the audit read them (pending, or drift seen
        just before the change): either verdict is right, so they count neither way. The 1 s
        margin absorbs the clock gap between this process and the database's timestamps.
        """
        with self.lock:
            cut = at - grace_s - 1.0
            must = {e for e in self.lost_entities if self.last_change.get(e, 0.0) <= cut}
            either = self.lost_entities - must
        got = found - either
        return Score(len(must), len(got), len(must & got))


class LoadGenerator:
    """Places orders at ``rate`` per second for ``seconds`` in a background thread."""

    def __init__(
        self,
        service: OrderService,
        entities: list[Entity],
        *,
        rate: float = 50.0,
        seconds: float = 10.0,
        seed: int = 7,
        truth: GroundTruth | None = None,
    ):
        self.service = service
        self.entities = entities
        self.rate = rate
        self.seconds = seconds
        self.random = random.Random(seed)
        self.truth = truth or GroundTruth()
        service.on_published = self.truth.record_delivery
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.error: BaseException | None = None
        by_wh: dict[str, list[str]] = {}
        for wh, sku in entities:
            by_wh.setdefault(wh, []).append(sku)
        self.by_warehouse = by_wh

    def start(self) -> LoadGenerator:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            start = time.monotonic()
            n = 0
            while not self.stop.is_set() and time.monotonic() - start < self.seconds:
                wh = self.random.choice(sorted(self.by_warehouse))
                picked = self.random.sample(self.by_warehouse[wh], k=self.random.randint(1, 3))
                order = self.service.place_order(wh, [(s, self.random.randint(1, 5)) for s in picked])
                self.truth.record_order(order)
                n += 1
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.service.channel.flush(15)
        except BaseException as e:  # noqa: BLE001 - surfaced by join()
            self.error = e

    def join(self, timeout: float | None = None) -> GroundTruth:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.truth
