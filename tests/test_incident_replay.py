"""The inventory-desync incident, replayed end to end on real PostgreSQL and Kafka.

1. direct publishing, live load, a real broker outage (a private broker stopped and restarted):
   the audit, run while orders keep flowing, reports exactly the entities whose events were
   lost; `run --verify` heals them; a final audit is clean.
2. outbox publishing, same load and outage: no findings at all.
3. a projector crash and restart mid-load: no findings after it catches up.
Precision, recall and the time from the blip to verified zero drift are printed (pytest -s).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from reconcile.app.incident import Faults, Incident
from reconcile.events.kafka import KafkaSettings, ensure_topic
from reconcile.shop import KafkaChannel, spec_path, wait_until
from reconcile.shop.service import ORDERS_TOPIC
from reconcile.spec import load_spec

pytestmark = pytest.mark.integration
GRACE_S = 3.0
# The outbox adds a hop (the shop's relay) that drains a backlog after the outage while orders
# keep coming: its grace must cover that pipeline's lag, as a user's would.
OUTBOX_GRACE_S = 8.0


def make_incident(
    monkeypatch, make_pg_db, make_store, bootstrap: str, grace_s: float = GRACE_S, **kw: Any
) -> Incident:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SHOP_TRUTH_URL", make_pg_db("shop"))
    monkeypatch.setenv("SHOP_PROJECTION_URL", make_pg_db("inventory"))
    monkeypatch.setenv("SHOP_TRANSPORT", "kafka")
    monkeypatch.setenv("SHOP_GRACE", f"{grace_s:g}s")
    monkeypatch.setenv("SHOP_TOPIC_SUFFIX", f".{suffix}")
    spec = load_spec(spec_path())
    kafka = KafkaSettings(bootstrap)
    orders_topic = f"{ORDERS_TOPIC}.{suffix}"
    for t in (orders_topic, spec.correction.topic):  # type: ignore[union-attr]
        ensure_topic(kafka, t)
    return Incident(
        spec=spec,
        store=make_store(make_pg_db("store")),
        channel=KafkaChannel(kafka),
        kafka=kafka,
        orders_topic=orders_topic,
        warehouses=3,
        per_warehouse=100,
        **kw,
    )


def outage(ctl) -> Any:  # type: ignore[no-untyped-def]
    """A blip made of a real broker stop and restart."""

    def blip(seconds: float) -> None:
        ctl("stop")
        time.sleep(seconds)
        ctl("start")

    return blip


def test_direct_mode_blip_is_found_exactly_and_healed(
    monkeypatch, make_pg_db, make_store, private_broker
) -> None:  # type: ignore[no-untyped-def]
    bootstrap, ctl = private_broker
    inc = make_incident(
        monkeypatch,
        make_pg_db,
        make_store,
        bootstrap,
        mode="direct",
        rate=30,
        seconds=180,
        faults=Faults(blip_at=2.0, blip_seconds=3.0),
    )
    inc.blip_hook = outage(ctl)
    try:
        inc.start()
        assert wait_until(inc.faults_done, 120)
        blip_at = next(t for t, what in inc.events if what.startswith("broker blip"))
        assert inc.truth.lost_events, "the outage must lose events for this test to mean anything"
        time.sleep(GRACE_S + 1.5)  # orders keep flowing; in-flight ones stay inside the grace
        assert inc.caught_up(60)
        result, score = inc.audit(GRACE_S)
        assert inc.loading, "the audit must run while orders keep flowing"
        print(
            f"\ndirect+blip: {inc.truth.orders} orders, {len(inc.truth.lost_events)} events lost, "
            f"{len(result.findings)} findings, pending {result.summary.pending}, score {score.to_dict()}"
        )
        assert score.precision == 1.0 and score.recall == 1.0, score.to_dict()
        assert score.expected > 0

        # Heal while orders keep flowing: each correction sent heals, or a newer order overtakes
        # it (pending). Entities in flight at this moment are left for the next run. The share
        # of drifted stock levels grows with how long the broker takes to come back (slower on a
        # busy machine), so the blast-radius guard (tested on its own) is forced here, as an
        # on-call person would after reading the findings.
        outcome = inc.heal(force=True)
        assert outcome.verify is not None and outcome.verify.escalated == 0, outcome.to_dict()["verify"]
        assert outcome.verify.resolved > 0
        # Orders stop; once the last ones leave the grace, the next run heals the rest.
        inc.wait(stop=True)
        assert inc.caught_up(60)
        time.sleep(GRACE_S + 0.5)
        second = inc.heal(force=True)
        assert second.exit_code == 0, second.to_dict()["verify"]
        healed_at = time.monotonic()
        final, _ = inc.audit(GRACE_S)
        assert final.findings == [], [f.to_dict() for f in final.findings[:5]]
        resolved = outcome.verify.resolved + (second.verify.resolved if second.verify else 0)
        print(f"direct+blip: blip to verified zero drift {healed_at - blip_at:.1f}s ({resolved} resolved)")
    finally:
        inc.close()


def test_outbox_mode_same_blip_no_findings(monkeypatch, make_pg_db, make_store, private_broker) -> None:  # type: ignore[no-untyped-def]
    bootstrap, ctl = private_broker
    inc = make_incident(
        monkeypatch,
        make_pg_db,
        make_store,
        bootstrap,
        mode="outbox",
        grace_s=OUTBOX_GRACE_S,
        rate=30,
        seconds=180,
        faults=Faults(blip_at=2.0, blip_seconds=3.0),
    )
    inc.blip_hook = outage(ctl)
    try:
        inc.start()
        assert wait_until(inc.faults_done, 120)
        time.sleep(OUTBOX_GRACE_S + 1.5)
        assert inc.caught_up(180)  # returns once caught up; the relay backs off after an outage
        result, score = inc.audit(OUTBOX_GRACE_S)
        assert inc.loading
        print(
            f"\noutbox+blip: {inc.truth.orders} orders, {len(result.findings)} findings, "
            f"pending {result.summary.pending}, published {inc.relay.published if inc.relay else 0}"
        )
        assert result.findings == [], [f.to_dict() for f in result.findings[:5]]
        assert score.expected == 0 and score.precision == 1.0 and score.recall == 1.0
    finally:
        inc.wait(stop=True)
        inc.close()


def test_projector_crash_and_restart_mid_load(monkeypatch, make_pg_db, make_store, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    inc = make_incident(
        monkeypatch,
        make_pg_db,
        make_store,
        kafka_bootstrap,
        mode="direct",
        rate=40,
        seconds=8,
        faults=Faults(projector_crash_at=3.0, projector_down_seconds=2.0),
    )
    try:
        inc.play()
        assert any(what == "projector restarts" for _, what in inc.events)
        assert not inc.truth.lost_events
        assert inc.caught_up(60)
        time.sleep(GRACE_S + 0.5)
        result, score = inc.audit(GRACE_S)
        print(
            f"\nprojector crash: {inc.truth.orders} orders, {inc.projector.counts.duplicates} redelivered "
            f"events skipped, {len(result.findings)} findings"
        )
        assert result.findings == [] and score.precision == 1.0 and score.recall == 1.0
    finally:
        inc.close()


def test_crash_between_commit_and_publish_is_found_and_healed(
    monkeypatch, make_pg_db, make_store, kafka_bootstrap
) -> None:  # type: ignore[no-untyped-def]
    inc = make_incident(
        monkeypatch,
        make_pg_db,
        make_store,
        kafka_bootstrap,
        mode="direct",
        rate=40,
        seconds=5,
        faults=Faults(crash_between_commit_and_publish_at=1.0, crash_orders=4),
    )
    try:
        inc.play()
        assert len(inc.truth.lost_events) == 4
        assert inc.caught_up(60)
        time.sleep(GRACE_S + 1.2)
        result, score = inc.audit(GRACE_S)
        assert score.precision == 1.0 and score.recall == 1.0 and score.expected > 0, score.to_dict()
        outcome = inc.heal()
        assert outcome.exit_code == 0, outcome.to_dict()["verify"]
        assert inc.audit(GRACE_S)[0].findings == []
    finally:
        inc.close()
