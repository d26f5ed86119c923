"""The reference shop under load on real PostgreSQL and Kafka, one fault at a time, audited with
its event path: the cause of every finding is checked against the ground truth the shop records,
precision and recall 1.0 per cause (printed with pytest -s).

* a broker blip with direct publishing -> ``lost``
* a stopped outbox relay -> pending within ``publish_grace``, then ``not_published``
* a projector that commits its offsets and dies before applying -> ``not_applied``
* a projector bug that applies one SKU's quantity wrong -> ``misapplied``
* a manual UPDATE of truth that publishes nothing -> ``unexplained``
* a projector lagging far behind ``freshness.grace`` -> no drift at all (pending, then waited for)
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app.incident import Faults, Incident
from reconcile.causes import Cause
from reconcile.events.kafka import KafkaSettings, ensure_topic
from reconcile.findings import RunResult
from reconcile.shop import KafkaChannel, spec_path, wait_until
from reconcile.shop.paths import shop_path, with_path
from reconcile.shop.service import ORDERS_TOPIC
from reconcile.spec import load_spec

pytestmark = pytest.mark.integration
Entity = tuple[str, str]


def make_incident(monkeypatch, make_pg_db, make_store, bootstrap: str, mode: str, **kw: Any) -> Incident:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SHOP_TRUTH_URL", make_pg_db("shop"))
    monkeypatch.setenv("SHOP_PROJECTION_URL", make_pg_db("inventory"))
    monkeypatch.setenv("SHOP_TRANSPORT", "kafka")
    monkeypatch.setenv("SHOP_GRACE", "1s")  # far below the projector's lag in these stories
    monkeypatch.setenv("SHOP_TOPIC_SUFFIX", f".{suffix}")
    spec = load_spec(spec_path())
    kafka = KafkaSettings(bootstrap)
    orders_topic = f"{ORDERS_TOPIC}.{suffix}"
    assert spec.correction is not None and spec.correction.consumer_group
    for t in (orders_topic, spec.correction.topic):
        ensure_topic(kafka, t)
    inc = Incident(
        spec=spec,
        store=make_store(make_pg_db("store")),
        channel=KafkaChannel(kafka),
        kafka=kafka,
        orders_topic=orders_topic,
        mode=mode,  # type: ignore[arg-type]
        warehouses=2,
        per_warehouse=30,
        rate=25,
        seconds=4,
        **kw,
    )
    inc.spec = with_path(spec, path(inc))
    return inc


@pytest.fixture
def make(monkeypatch, make_pg_db, make_store, kafka_bootstrap):  # type: ignore[no-untyped-def]
    """Factory: a shop incident (mode, faults ...) on fresh databases and topics, with its path."""

    def build(mode: str, **kw: Any) -> Incident:
        return make_incident(monkeypatch, make_pg_db, make_store, kafka_bootstrap, mode, **kw)

    return build


def path(inc: Incident, **kw: Any) -> Any:
    assert inc.spec.correction is not None and inc.spec.correction.consumer_group
    return shop_path(inc.mode, inc.orders_topic, inc.spec.correction.consumer_group, **kw)


def audit(inc: Incident, **kw: Any) -> RunResult:
    from reconcile.app import audit as run_audit

    inc.spec = with_path(inc.spec, path(inc, **kw))
    return run_audit(inc.ctx, inc.spec)


def scores(result: RunResult, expected: dict[str, set[Entity]]) -> dict[str, tuple[float, float]]:
    """Precision and recall per cause of the findings against the ground truth."""
    found: dict[str, set[Entity]] = {c.value: set() for c in Cause}
    for f in result.findings:
        assert f.cause is not None, f
        found[f.cause].add((f.key["warehouse"], f.key["sku"]))
    out = {}
    for c in Cause:
        got, want = found[c.value], expected.get(c.value, set())
        hits = len(got & want)
        out[c.value] = (hits / len(got) if got else 1.0, hits / len(want) if want else 1.0)
    print({c: f"precision {p:.2f} recall {r:.2f}" for c, (p, r) in out.items()}, result.causes)
    return out


PERFECT = {c.value: (1.0, 1.0) for c in Cause}


def applied_all(inc: Incident, ids: list[str], timeout_s: float = 60) -> None:
    assert wait_until(lambda: inc.projector.applied(ids) == len(ids), timeout_s, 0.2), "projector stuck"


def delivered(inc: Incident) -> list[str]:
    with inc.truth.lock:
        return [e for e, ok in inc.truth.delivered.items() if ok]


def test_broker_blip_with_direct_publishing_is_lost(make: Any) -> None:
    inc = make("direct", faults=Faults(blip_at=1.5, blip_seconds=0.6))
    try:
        truth = inc.play()
        applied_all(inc, delivered(inc))
        assert truth.lost_entities, "the blip lost nothing: no story"
        result = audit(inc, settle=timedelta(seconds=10))
        assert scores(result, {"lost": set(truth.lost_entities)}) == PERFECT
        assert result.cut is not None and result.cut["reached"] is True
        lost = next(f for f in result.findings)
        assert any(e["stage"] == "lost" and e["event_id"] in truth.lost_events for e in lost.evidence)
    finally:
        inc.close()


def test_stopped_relay_is_pending_then_not_published(make: Any) -> None:
    inc = make("outbox")
    try:
        assert inc.relay is not None
        halt = threading.Timer(2.0, inc.relay.halted.set)
        halt.start()
        inc.play()
        halt.join()
        engine = sa.create_engine(inc.truth_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT event_id, payload, published_at FROM shop_outbox")).all()
        engine.dispose()
        import json

        unpublished: set[Entity] = set()
        for _eid, payload, published_at in rows:
            if published_at is None:
                data = json.loads(payload)
                unpublished |= {(data["warehouse"], ln["sku"]) for ln in data["lines"]}
        assert unpublished, "the relay stopped too late: no story"
        applied_all(inc, [eid for eid, _p, at in rows if at is not None])

        young = audit(inc, publish_grace=timedelta(minutes=5), settle=timedelta(seconds=10))
        assert young.findings == [] and young.summary.pending == len(unpublished)
        old = audit(inc, publish_grace=timedelta(0), settle=timedelta(seconds=10))
        assert scores(old, {"not_published": unpublished}) == PERFECT
    finally:
        inc.close()


def test_projector_committing_before_applying_is_not_applied(make: Any) -> None:
    inc = make("direct")
    try:
        inc.start()
        time.sleep(2.0)
        inc.projector.crash_after_commit.set()
        assert wait_until(lambda: not inc._projector_thread.is_alive(), 30, 0.05)
        inc._projector_thread = inc._start_projector()  # restarts after its committed offsets
        inc.wait()
        dropped = set(inc.projector.dropped)
        assert dropped, "the crash hit a batch without orders: no story"
        applied_all(inc, [e for e in delivered(inc) if e not in dropped])
        result = audit(inc, settle=timedelta(seconds=10))
        assert scores(result, {"not_applied": inc.projector.dropped_entities}) == PERFECT
    finally:
        inc.close()


def test_projector_bug_is_misapplied(make: Any) -> None:
    inc = make("direct")
    try:
        inc.projector.bug = inc.entities[0]
        inc.play()
        w, s = inc.entities[0]
        inc.service.place_order(w, [(s, 1)])  # the buggy SKU certainly sees an order
        inc.channel.flush()
        time.sleep(0.5)
        applied_all(inc, delivered(inc))
        result = audit(inc, settle=timedelta(seconds=10))
        assert inc.projector.misapplied == {inc.entities[0]}
        assert scores(result, {"misapplied": inc.projector.misapplied}) == PERFECT
    finally:
        inc.close()


def test_manual_update_of_truth_is_unexplained(make: Any) -> None:
    inc = make("direct")
    try:
        inc.play()
        applied_all(inc, delivered(inc))
        time.sleep(1.2)  # the manual write comes well after the last event
        touched = set(inc.entities[:3])
        engine = sa.create_engine(inc.truth_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            for w, s in touched:
                conn.execute(
                    sa.text(
                        "UPDATE stock_levels SET on_hand = on_hand - 7, updated_at = now() "
                        "WHERE warehouse = :w AND sku = :s"
                    ),
                    {"w": w, "s": s},
                )
        engine.dispose()
        result = audit(inc, settle=timedelta(seconds=10))
        assert scores(result, {"unexplained": touched}) == PERFECT
    finally:
        inc.close()


def test_projector_lagging_far_behind_the_grace_is_no_drift(make: Any) -> None:
    inc = make("direct")
    try:
        inc.start()
        time.sleep(1.0)
        inc._stop_projector.set()  # the projector stalls; orders keep coming
        inc._projector_thread.join(30)
        inc.wait()
        time.sleep(1.5)  # every order is now older than freshness.grace (1s)
        behind = audit(inc, settle=timedelta(0))
        assert behind.findings == [] and behind.summary.pending > 0
        assert behind.cut is not None and behind.cut["reached"] is False
        inc._projector_thread = inc._start_projector()
        caught = audit(inc, settle=timedelta(seconds=60))
        assert caught.findings == [], [f.to_dict() for f in caught.findings]
        assert caught.cut is not None and caught.cut["reached"] is True  # waited, or caught up already
    finally:
        inc.close()
