"""The healing loop against the real PostgreSQL and Kafka: wire format, verify by consumer lag,
SIGKILL of the relay mid-batch, and a broker that stops during the relay."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from cloudevents.v1.kafka import KafkaMessage, from_binary
from confluent_kafka import Consumer

from reconcile.app import Context, Projector, audit, correct, relay, verify
from reconcile.errors import PublishError
from reconcile.events.kafka import KafkaSettings, consumer_lag, ensure_topic
from reconcile.findings import FindingStatus
from reconcile.store import AuditStore  # noqa: F401 - type of make_store's result

from .builders import make_table
from .conftest import free_port
from .heal_cases import build_pair, expected_findings, heal_spec, write_spec_file

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def consume_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 60) -> list:  # type: ignore[type-arg]
    c = Consumer(
        KafkaSettings(bootstrap).config(
            **{
                "group.id": f"check-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout_s
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        msgs = [m for m in c.consume(1000, timeout=0.5) if m.error() is None]
        got += msgs
        if msgs:
            idle_since = time.monotonic()
        elif len(got) >= expect and time.monotonic() - idle_since > 1.5:
            break
    c.close()
    return got


def test_events_on_the_wire_are_cloudevents_and_heal_the_projection(
    make_pg_db, make_store, kafka_bootstrap, topic
) -> None:  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    build_pair(truth, proj)
    group = f"projector-{uuid.uuid4().hex[:8]}"
    spec = heal_spec(truth, proj, topic=topic, group=group, transport="kafka")
    store = make_store(store_url)
    kafka = KafkaSettings(kafka_bootstrap)
    first = audit(Context.of(store), spec)
    assert len(first.findings) == expected_findings()
    correct(Context.of(store), spec)
    assert relay(Context.of(store, kafka=kafka), spec_name=spec.name).sent == expected_findings()

    msgs = consume_all(kafka_bootstrap, topic, expected_findings())
    assert len(msgs) == expected_findings()
    by_subject = {}
    for m in msgs:
        headers = {k: v for k, v in m.headers()}
        if m.value() is None:  # orphan: a Kafka tombstone, attributes still in the headers
            assert headers[b"ce_type".decode()] == b"StockLevelReconciled"
            assert headers["reconcile_finding_kind"] == b"orphan"
            continue
        event = from_binary(KafkaMessage(headers=headers, key=m.key(), value=m.value()))
        assert event["specversion"] == "1.0" and event["type"] == "StockLevelReconciled"
        assert event["source"] == f"reconcile/{spec.name}"
        assert m.key().decode() == event["subject"]
        assert headers["reconcile_run_id"].decode() == first.run_id
        by_subject[event["subject"]] = event.data
    assert by_subject['{"product_id":"S00003"}']["state"] == {"on_hand": 3, "title": "item 3"}
    assert by_subject['{"product_id":"S00005"}']["kind"] == "mismatch"

    assert consumer_lag(kafka, group, topic) == expected_findings()
    projector = Projector(Context.of(store, kafka=kafka), spec)
    stats = projector.run(idle_timeout_s=2)
    projector.close()
    assert stats.applied == expected_findings()
    assert consumer_lag(kafka, group, topic) == 0
    v = verify(Context.of(store, kafka=kafka), spec)
    assert (v.resolved, v.escalated, v.exit_code) == (expected_findings(), 0, 0)
    assert audit(Context.of(store), spec).findings == []


def _big_world(make_pg_db, make_store, kafka_bootstrap: str, topic: str, n: int):  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    make_table(
        truth,
        "stock",
        [
            sa.Column("sku", sa.String(20), primary_key=True),
            sa.Column("on_hand", sa.Integer),
            sa.Column("title", sa.Text),
        ],
        [{"sku": f"S{i:06d}", "on_hand": i, "title": "t"} for i in range(n)],
    )
    make_table(
        proj,
        "stock_view",
        [
            sa.Column("product_id", sa.String(20)),
            sa.Column("on_hand", sa.Integer),
            sa.Column("title", sa.Text),
        ],
        [],
    )
    group = f"projector-{uuid.uuid4().hex[:8]}"
    spec = heal_spec(truth, proj, topic=topic, group=group, transport="kafka", max_ratio=1.0, max_count=10**6)
    store = make_store(store_url)
    audit(Context.of(store), spec)
    assert correct(Context.of(store), spec).written == n
    return spec, store, store_url


def _relay_cmd(spec_file: Path, store_url: str, bootstrap: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconcile",
            "relay",
            "--spec",
            str(spec_file),
            "--store",
            store_url,
            "--bootstrap-servers",
            bootstrap,
            "--batch-size",
            "100",
            "--format",
            "json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_some_sent(store: AuditStore, spec_name: str, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sent = len(store.outbox_events(spec_name, sent=True))
        if sent > 0:
            return sent
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    raise AssertionError("relay never marked a row sent")


def test_sigkill_mid_batch_loses_nothing_and_doubles_no_id(
    tmp_path, make_pg_db, make_store, kafka_bootstrap, topic
) -> None:  # type: ignore[no-untyped-def]
    n = 20_000
    spec, store, store_url = _big_world(make_pg_db, make_store, kafka_bootstrap, topic, n)
    spec_file = write_spec_file(tmp_path / "stock.yaml", spec)
    proc = _relay_cmd(spec_file, store_url, kafka_bootstrap)
    _wait_for_some_sent(store, spec.name, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    sent_before = len(store.outbox_events(spec.name, sent=True))
    assert 0 < sent_before < n, "the kill must land mid-relay for this test to mean anything"

    rerun = _relay_cmd(spec_file, store_url, kafka_bootstrap)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert store.outbox_backlog(spec.name)[0] == 0

    ids = {r.event_id for r in store.outbox_events(spec.name)}
    msgs = consume_all(kafka_bootstrap, topic, n)
    seen = [dict(m.headers())["ce_id"].decode() for m in msgs]
    assert set(seen) == ids  # every event reached the topic, under its one id
    assert len(seen) >= n  # some may have been delivered twice, never under two ids

    projector = Projector(Context.of(store, kafka=KafkaSettings(kafka_bootstrap)), spec)
    stats = projector.run(idle_timeout_s=3, max_seconds=180)
    projector.close()
    assert stats.applied == n and stats.duplicates == len(seen) - n
    assert audit(Context.of(store), spec).findings == []


def test_broker_stopped_during_relay_then_back(tmp_path, make_pg_db, make_store, private_broker) -> None:  # type: ignore[no-untyped-def]
    bootstrap, ctl = private_broker
    topic = f"stock.{uuid.uuid4().hex[:8]}"
    ensure_topic(KafkaSettings(bootstrap), topic)
    n = 20_000
    spec, store, store_url = _big_world(make_pg_db, make_store, bootstrap, topic, n)
    spec_file = write_spec_file(tmp_path / "stock.yaml", spec)
    proc = _relay_cmd(spec_file, store_url, bootstrap, "--timeout", "5s")
    _wait_for_some_sent(store, spec.name, proc)
    ctl("stop")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "stay in the outbox" in err
    unsent = store.outbox_backlog(spec.name)[0]
    assert 0 < unsent < n

    ctl("start")
    result = relay(Context.of(store, kafka=KafkaSettings(bootstrap), kafka_timeout_s=30), spec_name=spec.name)
    assert result.sent == unsent and store.outbox_backlog(spec.name)[0] == 0
    ids = {r.event_id for r in store.outbox_events(spec.name)}
    seen = {dict(m.headers())["ce_id"].decode() for m in consume_all(bootstrap, topic, n)}
    assert seen == ids


def test_relay_to_an_unreachable_broker_exits_2_and_keeps_rows(tmp_path, make_pg_db, make_store) -> None:  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    build_pair(truth, proj)
    spec = heal_spec(truth, proj, topic="t", group="g", transport="kafka")
    store = make_store(store_url)
    audit(Context.of(store), spec)
    correct(Context.of(store), spec)
    with pytest.raises(PublishError, match=r"not delivered to kafka 127.0.0.1:\d+ within 2s"):
        relay(
            Context.of(store, kafka=KafkaSettings(f"127.0.0.1:{free_port()}"), kafka_timeout_s=2),
            spec_name=spec.name,
        )
    assert store.outbox_backlog(spec.name)[0] == expected_findings()
    assert {f.status for f in store.findings(spec.name)} == {FindingStatus.CORRECTING}
