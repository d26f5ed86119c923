"""The inventory-desync incident as a reusable scenario (the demo and the replay tests).

Build the shop, start the inventory projector (and, in outbox mode, the shop's relay), put it
under load, inject faults on a schedule — a broker blip, a crash between commit and publish, a
projector crash and restart — and keep the ground truth of which events were lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from ..events.kafka import KafkaSettings
from ..findings import RunResult
from ..shop.channel import Channel
from ..shop.load import GroundTruth, LoadGenerator, Score
from ..shop.projector import InventoryProjector, wait_until
from ..shop.service import ORDERS_TOPIC, OrderService, ShopRelay
from ..shop.world import create_world
from ..spec import Spec
from ..store import AuditStore
from .audit import audit
from .context import Context
from .heal import HealResult, heal

__all__ = ["Incident", "Faults"]


@dataclass
class Faults:
    """When (seconds into the load) each fault strikes; None = never."""

    blip_at: float | None = None
    blip_seconds: float = 2.0
    crash_between_commit_and_publish_at: float | None = None
    crash_orders: int = 3
    projector_crash_at: float | None = None
    projector_down_seconds: float = 2.0


@dataclass
class Incident:
    """One replay of the incident against one set of databases and one channel."""

    spec: Spec
    store: AuditStore
    channel: Channel
    mode: Literal["direct", "outbox"] = "direct"
    rate: float = 50.0
    seconds: float = 6.0
    warehouses: int = 3
    per_warehouse: int = 40
    faults: Faults = field(default_factory=Faults)
    kafka: KafkaSettings | None = None
    orders_topic: str = ORDERS_TOPIC
    truth: GroundTruth = field(default_factory=GroundTruth)
    events: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, what happened)
    # How a blip is made: default the channel's own (publishes fail for N s); tests may stop a
    # real broker instead (a callable taking the seconds).
    blip_hook: Callable[[float], None] | None = None

    def __post_init__(self) -> None:
        c = self.spec.correction
        assert c is not None and c.consumer_group
        self.ctx = Context.of(self.store, kafka=self.kafka)
        self.truth_url = str(self.spec.truth.url)
        self.projection_url = str(self.spec.projection.url)
        self.entities = create_world(
            self.truth_url, self.projection_url, warehouses=self.warehouses, per_warehouse=self.per_warehouse
        )
        self.service = OrderService(self.truth_url, self.channel, mode=self.mode, topic=self.orders_topic)
        self.projector = InventoryProjector(
            self.projection_url, self.channel, topics=[self.orders_topic, c.topic], group=c.consumer_group
        )
        self._stop_projector = threading.Event()
        self._crash_projector = threading.Event()
        self._projector_thread = self._start_projector()
        self.relay: ShopRelay | None = None
        self._stop_relay = threading.Event()
        if self.mode == "outbox":
            self.relay = ShopRelay(self.truth_url, self.channel)
            self._relay_thread = threading.Thread(
                target=self.relay.run, args=(self._stop_relay,), daemon=True
            )
            self._relay_thread.start()

    def _start_projector(self) -> threading.Thread:
        self._stop_projector.clear()
        self._crash_projector.clear()
        t = threading.Thread(
            target=self.projector.run,
            args=(self._stop_projector,),
            kwargs={"crash": self._crash_projector},
            name="projector",
            daemon=True,
        )
        t.start()
        return t

    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    # -- the story -------------------------------------------------------------------------
    def play(self) -> GroundTruth:
        """Run the load with the scheduled faults to the end; return the ground truth."""
        self.start()
        return self.wait()

    def start(self) -> None:
        """Start the load and arm the fault timers; returns at once (the load runs on)."""
        self._load = LoadGenerator(
            self.service, self.entities, rate=self.rate, seconds=self.seconds, truth=self.truth
        )
        self._started = time.monotonic()
        self._load.start()
        self.note("load started")
        f = self.faults
        self._timers: list[threading.Timer] = []
        if f.blip_at is not None:
            self._timers.append(threading.Timer(f.blip_at, self._blip))
        if f.crash_between_commit_and_publish_at is not None:
            self._timers.append(threading.Timer(f.crash_between_commit_and_publish_at, self._crash_service))
        if f.projector_crash_at is not None:
            self._timers.append(threading.Timer(f.projector_crash_at, self._crash_and_restart_projector))
        for t in self._timers:
            t.daemon = True
            t.start()

    @property
    def loading(self) -> bool:
        """The load generator is still placing orders."""
        return self._load.thread.is_alive()

    def faults_done(self) -> bool:
        """Every scheduled fault has struck and finished."""
        return all(t.finished.is_set() and not t.is_alive() for t in self._timers)

    def wait(self, stop: bool = False) -> GroundTruth:
        """Wait for the load to end (or stop it now) and for the faults to finish."""
        if stop:
            self._load.stop.set()
        self._load.join(self.seconds + 120)
        for t in self._timers:
            t.join()
        self.note(f"load finished: {self.truth.orders} orders in {time.monotonic() - self._started:.1f}s")
        return self.truth

    def _blip(self) -> None:
        self.note(f"broker blip: unreachable for {self.faults.blip_seconds:g}s")
        if self.blip_hook is not None:
            self.blip_hook(self.faults.blip_seconds)
            self.note("broker back")
        else:
            self.channel.blip(self.faults.blip_seconds)

    def _crash_service(self) -> None:
        self.note(f"order service crashes between commit and publish ({self.faults.crash_orders} orders)")
        self.service.crash_after_commit = True
        before = self.truth.orders
        wait_until(lambda: self.truth.orders >= before + self.faults.crash_orders, 30, 0.01)
        self.service.crash_after_commit = False

    def _crash_and_restart_projector(self) -> None:
        self.note("projector crashes (a batch applied, its offsets not committed)")
        self._crash_projector.set()
        self._projector_thread.join(30)
        time.sleep(self.faults.projector_down_seconds)
        self.note("projector restarts")
        self._projector_thread = self._start_projector()

    def caught_up(self, timeout_s: float = 60.0) -> bool:
        """Wait until the projector has applied every order event published before this call
        (in outbox mode: every event in the shop's outbox at this call, once relayed).

        Checked by event id, not by counting: a relay retrying through a blip delivers an older
        event after newer ones, so "as many applied as published" would be true too early."""
        if self.relay is not None:
            ids = self.relay.event_ids()
        else:
            with self.truth.lock:
                ids = [e for e, ok in self.truth.delivered.items() if ok]
        return wait_until(lambda: self.projector.applied(ids) == len(ids), timeout_s, 0.2)

    def audit(self, grace_s: float) -> tuple[RunResult, Score]:
        """Audit now; score the findings against the ground truth."""
        at = time.monotonic()
        result = audit(self.ctx, self.spec)
        found = {(f.key["warehouse"], f.key["sku"]) for f in result.findings}
        with self.truth.lock:
            lost = list(self.truth.lost_events)
        # A produce reported failed may have been written all the same (a timeout is ambiguous):
        # what the projector applied was not lost.
        self.truth.arrived_after_all(e for e in lost if self.projector.applied([e]) == 1)
        return result, self.truth.score(found, grace_s, at)

    def heal(self, timeout: timedelta = timedelta(seconds=60), *, force: bool = False) -> HealResult:
        """`reconcile run --verify --skip-preflight [--force]` while the projector keeps consuming.

        The replay skips the preflight gate: its world is built in the same second, so there is
        no earlier full audit to hold row counts against, and the gate is tested on its own.
        """
        return heal(self.ctx, self.spec, verify=True, timeout=timeout, preflight=False, force=force)

    def close(self) -> None:
        self._stop_relay.set()
        if self.relay is not None:
            self._relay_thread.join(30)
            self.relay.dispose()
        self._stop_projector.set()
        self._projector_thread.join(30)
        self.projector.dispose()
        self.service.dispose()
        self.channel.close()
        self.ctx.close()
