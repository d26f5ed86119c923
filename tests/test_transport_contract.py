"""The transport port's contract, run against every adapter: the real Kafka broker and the
embedded log. Publish, consume, lag, redelivery of what was not committed, ids kept."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconcile.events import open_transport
from reconcile.events.transport import Message, Transport


@dataclass(frozen=True)
class Row:
    """An outgoing event, shaped like an outbox row."""

    id: int
    topic: str
    message_key: str
    headers: dict[str, str]
    payload: str | None


def rows(topic: str, n: int) -> list[Row]:
    return [
        Row(i, topic, f'{{"sku":"K{i % 3}"}}', {"ce_id": f"ev-{i}", "ce_type": "T"}, f'{{"n":{i}}}')
        for i in range(1, n + 1)
    ]


def drain(transport: Transport, group: str, topic: str, want: int, *, commit: bool) -> list[Message]:
    consumer = transport.consumer(group, [topic])
    got: list[Message] = []
    try:
        for _ in range(60):
            got += consumer.poll(100, timeout_s=0.5)
            if len(got) >= want:
                break
        if commit:
            consumer.commit()
    finally:
        consumer.close()
    return got


class TransportContract:
    """Every transport adapter passes these."""

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        raise NotImplementedError

    @pytest.fixture
    def topic(self) -> str:
        raise NotImplementedError

    def test_publish_confirms_every_row(self, transport: Transport, topic: str) -> None:
        report = transport.publish(rows(topic, 5))
        assert sorted(report.confirmed) == [1, 2, 3, 4, 5] and report.failed == []

    def test_consume_keeps_ids_keys_values_and_per_key_order(self, transport: Transport, topic: str) -> None:
        transport.publish(rows(topic, 6))
        got = drain(transport, "g-" + uuid.uuid4().hex[:8], topic, 6, commit=True)
        assert sorted(m.headers["ce_id"] for m in got) == [f"ev-{i}" for i in range(1, 7)]
        by_key: dict[str | None, list[int]] = {}
        for m in got:
            assert m.topic == topic and m.value == f'{{"n":{m.headers["ce_id"][3:]}}}'
            by_key.setdefault(m.key, []).append(int(m.headers["ce_id"][3:]))
        assert all(v == sorted(v) for v in by_key.values())  # one entity's events stay in order

    def test_lag_counts_what_the_group_has_not_committed(self, transport: Transport, topic: str) -> None:
        group = "g-" + uuid.uuid4().hex[:8]
        transport.publish(rows(topic, 4))
        assert transport.lag(group, topic) == 4  # a group that never committed lags by everything
        drain(transport, group, topic, 4, commit=True)
        assert transport.lag(group, topic) == 0
        transport.publish(rows(topic, 2))
        assert transport.lag(group, topic) == 2

    def test_what_was_not_committed_is_redelivered_with_the_same_ids(
        self, transport: Transport, topic: str
    ) -> None:
        group = "g-" + uuid.uuid4().hex[:8]
        transport.publish(rows(topic, 3))
        first = drain(transport, group, topic, 3, commit=False)  # "crashed" before committing
        again = drain(transport, group, topic, 3, commit=True)
        ids = sorted(m.headers["ce_id"] for m in first)
        assert ids == sorted(m.headers["ce_id"] for m in again) == ["ev-1", "ev-2", "ev-3"]
        assert drain(transport, group, topic, 0, commit=True) == []

    def test_lag_of_a_topic_nobody_wrote_is_zero(self, transport: Transport) -> None:
        assert transport.lag("nobody", "t-" + uuid.uuid4().hex[:8]) == 0


class TestEmbeddedTransport(TransportContract):
    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[Transport]:
        t = open_transport("embedded", embedded_url=f"sqlite:///{tmp_path / 'log.db'}")
        yield t
        t.close()

    @pytest.fixture
    def topic(self) -> str:
        return "t-" + uuid.uuid4().hex[:8]


@pytest.mark.integration
class TestKafkaTransport(TransportContract):
    @pytest.fixture
    def transport(self, kafka_bootstrap: str) -> Iterator[Transport]:
        from reconcile.events.kafka import KafkaSettings

        t = open_transport("kafka", kafka=KafkaSettings(kafka_bootstrap), timeout_s=20)
        yield t
        t.close()

    @pytest.fixture
    def topic(self, topic: str) -> str:  # the conftest's fresh 3-partition topic
        return topic

    def test_lag_of_a_topic_nobody_wrote_is_zero(self, transport: Transport) -> None:
        from confluent_kafka.admin import AdminClient

        name = "t-" + uuid.uuid4().hex[:8]
        assert transport.lag("nobody", name) == 0
        # measuring lag never creates the topic
        assert name not in AdminClient({"bootstrap.servers": transport.where}).list_topics(timeout=10).topics


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of kafka, embedded"):
        open_transport("carrier-pigeon")
