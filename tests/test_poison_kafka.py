"""Issue 15, cases 5 and 6, against the real PostgreSQL and Kafka: a poison event never blocks
healing, and two relays never publish one row twice."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from reconcile.app import Context, Projector, audit, correct, health, relay, verify
from reconcile.events.kafka import KafkaSettings
from reconcile.findings import FindingStatus

from .builders import execute
from .heal_cases import build_pair, expected_findings, heal_spec, write_spec_file
from .test_heal_kafka import consume_all

pytestmark = pytest.mark.integration


@pytest.fixture
def small_topic(kafka_bootstrap: str) -> Iterator[str]:
    """A topic whose broker refuses messages over 100 kB (what a 1 MB value meets by default)."""
    name = f"test.small.{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics(
        [NewTopic(name, num_partitions=3, replication_factor=1, config={"max.message.bytes": "100000"})]
    )[name].result(30)
    yield name
    admin.delete_topics([name])[name].result(30)


def test_a_poison_event_is_parked_and_never_blocks_healing(
    make_pg_db, make_store, kafka_bootstrap, small_topic
) -> None:  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    build_pair(truth, proj)
    big = secrets.token_urlsafe(300_000)  # incompressible: the producer compresses its batches
    execute(truth, "UPDATE stock SET title = :big WHERE sku = 'S00013'", big=big)  # S00013 is missing
    group = f"projector-{uuid.uuid4().hex[:8]}"
    spec = heal_spec(truth, proj, topic=small_topic, group=group, transport="kafka")
    store = make_store(store_url)
    ctx = Context.of(store, kafka=KafkaSettings(kafka_bootstrap), kafka_timeout_s=15)
    audit(ctx, spec)
    assert correct(ctx, spec).written == expected_findings()

    first = relay(ctx, spec_name=spec.name)  # one pass: the poison row is tried 3 times, then parked
    assert first.sent == expected_findings() - 1 and first.exit_code == 1
    assert len(first.dead) == 1 and "too large" in first.dead[0]["error"].lower(), first.dead
    assert store.outbox_backlog(spec.name)[0] == 0  # nothing left blocking
    n_dead, rows = store.dead_letters(spec.name)
    assert n_dead == 1 and rows[0].attempts == 3 and rows[0].last_error
    poisoned = next(f for f in store.findings(spec.name) if f.key["sku"] == "S00013")
    assert poisoned.status is FindingStatus.OPEN and "parked" in (poisoned.note or "")
    assert relay(ctx, spec_name=spec.name).sent == 0  # later relays do not trip over it again

    projector = Projector(ctx, spec)
    projector.run(idle_timeout_s=3, max_seconds=120)
    projector.close()
    v = verify(ctx, spec)  # the others verify: the parked row does not count as "unsent"
    assert v.resolved == expected_findings() - 1 and v.escalated == 0, v.to_dict()

    report = health(ctx, [spec])
    (h,) = report.specs
    assert h.outbox_dead == 1 and any("parked" in p for p in h.problems) and report.exit_code == 1

    # What the on-call person sees: a gauge that pages (not a backlog that looks stuck), and
    # the dashboard's pipe state with the count.
    from reconcile.app.dashboard import overview
    from reconcile.app.metrics import snapshot
    from reconcile.serve.metrics import render

    snap = snapshot(ctx, [spec], lag=False)
    assert snap.dead[spec.name] == 1 and snap.outbox[spec.name] == (0, None)
    assert f'reconcile_outbox_dead{{spec="{spec.name}"}} 1.0' in render(snap).decode()
    (status,) = overview(ctx, [spec]).specs
    assert status.outbox_dead == 1 and "pipe unhealthy" in status.flags

    again = correct(ctx, spec)  # its event is parked: correct does not pretend to send it again
    assert again.written == 0
    assert next(f for f in store.findings(spec.name) if f.key["sku"] == "S00013").status is FindingStatus.OPEN


def test_correct_refuses_events_over_max_event_bytes(tmp_path: Path, make_pg_db, make_store) -> None:  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    build_pair(truth, proj)
    execute(truth, "UPDATE stock SET title = :big WHERE sku = 'S00013'", big="p" * 1_000_000)
    spec = heal_spec(truth, proj, topic="t", group="g", transport="kafka")
    spec_file = write_spec_file(tmp_path / "s.yaml", spec)
    env = {**os.environ, "RECONCILE_STORE_URL": store_url}
    run = [sys.executable, "-m", "reconcile"]
    assert subprocess.run([*run, "audit", str(spec_file)], env=env, capture_output=True).returncode == 1
    r = subprocess.run(
        [*run, "correct", str(spec_file), "--format", "json"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["written"] == expected_findings() - 1
    assert doc["refused"] == [{"key": {"sku": "S00013"}, "bytes": doc["refused"][0]["bytes"]}]
    assert doc["refused"][0]["bytes"] > 1_000_000 and "over correction.max_event_bytes" in r.stderr
    store = make_store(store_url)
    f = next(f for f in store.findings(spec.name) if f.key["sku"] == "S00013")
    assert f.status is FindingStatus.OPEN and "max_event_bytes" in (f.note or "")
    assert len(store.outbox_events(spec.name)) == expected_findings() - 1


def test_two_relays_never_publish_the_same_row(
    tmp_path: Path, make_pg_db, make_store, kafka_bootstrap, topic
) -> None:  # type: ignore[no-untyped-def]
    from .test_heal_kafka import _big_world

    n = 20_000
    spec, store, store_url = _big_world(make_pg_db, make_store, kafka_bootstrap, topic, n)
    spec_file = write_spec_file(tmp_path / "stock.yaml", spec)
    cmd = [
        sys.executable, "-m", "reconcile", "relay", "--spec", str(spec_file), "--store", store_url,
        "--bootstrap-servers", kafka_bootstrap, "--batch-size", "500", "--format", "json",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    sent = [json.loads(o)["sent"] for o, _ in outs]
    assert sum(sent) == n, sent  # between them every row once (how they share it is up to timing)
    msgs = consume_all(kafka_bootstrap, topic, n)
    ids = [dict(m.headers())["ce_id"] for m in msgs]
    assert len(ids) == n and len(set(ids)) == n  # every event once: nothing doubled, nothing lost
    assert store.outbox_backlog(spec.name)[0] == 0
