"""Smoke: the real PostgreSQL and Kafka of `make services` work the way reconcile uses them."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

pytestmark = pytest.mark.integration


def test_postgres_round_trip_with_sqlalchemy(pg_url: str) -> None:
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    meta = sa.MetaData()
    t = sa.Table("stock", meta, sa.Column("sku", sa.Text, primary_key=True), sa.Column("on_hand", sa.Integer))
    meta.create_all(engine)
    rows = [{"sku": f"A-{i}", "on_hand": i} for i in range(500)]
    with engine.begin() as conn:
        conn.execute(t.insert(), rows)
    with engine.connect() as conn:
        got = conn.execute(sa.select(t.c.sku, t.c.on_hand).order_by(t.c.on_hand)).mappings().all()
        assert [dict(r) for r in got] == rows
        assert (
            conn.execute(sa.text("SELECT current_setting('server_version_num')::int")).scalar() or 0
        ) >= 150000
    engine.dispose()


def test_kafka_1000_messages_idempotent_producer_and_committed_offsets(
    kafka_bootstrap: str, topic: str
) -> None:
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    delivered: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))

    for i in range(1000):
        producer.produce(topic, key=f"k{i % 37}", value=f"v{i}".encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors and len(delivered) == 1000

    group = f"smoke-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    for _ in range(600):
        msgs = consumer.consume(num_messages=500, timeout=0.5)
        for m in msgs:
            assert m.error() is None, m.error()
            seen.add(m.value() or b"")
        if msgs:
            consumer.commit(asynchronous=False)
        if len(seen) == 1000:
            break
    assert seen == {f"v{i}".encode() for i in range(1000)}
    committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    consumer.close()
    highs = {p: hi for p in range(3) for _lo, hi in [_watermarks(kafka_bootstrap, topic, p)]}
    assert sum(tp.offset for tp in committed) == 1000
    assert {tp.partition: tp.offset for tp in committed} == highs


def _watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)  # type: ignore[no-any-return]
    finally:
        c.close()
