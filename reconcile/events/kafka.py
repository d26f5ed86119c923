"""Kafka adapter: settings, the relay's producer transport, consumer-group lag.

Delivery is asynchronous (confluent-kafka): every row is produced with an ``on_delivery``
callback, ``poll(0)`` serves callbacks while producing, ``flush`` waits for the rest, and a row
counts as confirmed only in its delivery report. The producer is idempotent with ``acks=all``,
so librdkafka's own retries (with backoff, up to ``message.timeout.ms``) never duplicate or
reorder a message within a run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PublishError, VerifyError
from ..store import OutboxRow
from .transport import PublishReport, Transport

__all__ = ["KafkaSettings", "KafkaTransport", "consumer_lag", "ensure_topic"]

# librdkafka's own log lines ("Connect to ... failed") go here, not to stderr: the CLI's
# contract is one error line, and delivery reports already carry what matters.
log = logging.getLogger("reconcile.kafka")
log.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is and any extra librdkafka settings (security, client id...)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, bootstrap: str | None = None) -> KafkaSettings:
        """``KAFKA_BOOTSTRAP_SERVERS``; ``RECONCILE_KAFKA_<SETTING>`` adds librdkafka settings
        (``RECONCILE_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` -> ``security.protocol``)."""
        extra = {
            k.removeprefix("RECONCILE_KAFKA_").lower().replace("_", "."): v
            for k, v in os.environ.items()
            if k.startswith("RECONCILE_KAFKA_")
        }
        return cls(bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), extra)

    def config(self, **more: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap servers, extras, then ``more``."""
        return {"bootstrap.servers": self.bootstrap_servers, "logger": log, **self.extra, **more}


class KafkaTransport(Transport):
    """Publishes outbox rows with an idempotent, acks=all producer."""

    name = "kafka"

    def __init__(self, settings: KafkaSettings, *, timeout_s: float = 30.0):
        from confluent_kafka import Producer

        self.settings = settings
        self.timeout_s = timeout_s
        self.producer = Producer(
            settings.config(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 20,
                    "batch.num.messages": 10000,
                    "compression.type": "lz4",
                    "queue.buffering.max.messages": 200000,
                    # librdkafka retries with backoff until this timeout, then reports the error.
                    "message.timeout.ms": int(timeout_s * 1000),
                    "retry.backoff.ms": 200,
                    "retry.backoff.max.ms": 2000,
                    "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000) // 2),
                }
            )
        )

    def publish(self, rows: Sequence[OutboxRow]) -> PublishReport:
        from confluent_kafka import KafkaException

        report = PublishReport()

        def on_delivery(row_id: int):  # type: ignore[no-untyped-def]
            def done(err, _msg) -> None:  # type: ignore[no-untyped-def]
                if err is None:
                    report.confirmed.append(row_id)
                else:
                    report.failed.append(row_id)
                    report.first_error = report.first_error or str(err.str())

            return done

        for row in rows:
            headers: list[tuple[str, str | bytes | None]] = [(k, v.encode()) for k, v in row.headers.items()]
            value = row.payload.encode() if row.payload is not None else None
            while True:
                try:
                    self.producer.produce(
                        row.topic,
                        key=row.message_key.encode(),
                        value=value,
                        headers=headers,
                        on_delivery=on_delivery(row.id),
                    )
                    break
                except BufferError:  # local queue full: serve callbacks, then retry
                    self.producer.poll(0.5)
                except KafkaException as e:
                    report.failed.append(row.id)
                    report.first_error = report.first_error or str(e)
                    break
            self.producer.poll(0)
        remaining = self.producer.flush(self.timeout_s + 10)
        if remaining:
            pending = {r.id for r in rows} - set(report.confirmed) - set(report.failed)
            report.failed += sorted(pending)
            report.first_error = (
                report.first_error or f"{remaining} message(s) not delivered before the timeout"
            )
        return report

    def close(self) -> None:
        self.producer.flush(5)


def _admin(settings: KafkaSettings, timeout_s: float):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return AdminClient(settings.config(**{"socket.connection.setup.timeout.ms": int(timeout_s * 1000)}))


def ensure_topic(settings: KafkaSettings, topic: str, partitions: int = 3, timeout_s: float = 30.0) -> None:
    """Create a topic if it does not exist yet."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(settings, timeout_s)
    try:
        if topic in admin.list_topics(timeout=timeout_s).topics:
            return
        fut = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
        try:
            fut.result(timeout_s)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    except KafkaException as e:
        raise PublishError(f"kafka {settings.bootstrap_servers}: cannot create topic {topic}: {e}") from None


def consumer_lag(settings: KafkaSettings, group: str, topic: str, timeout_s: float = 15.0) -> int:
    """Messages of ``topic`` the consumer group has not committed yet (sum over partitions).

    Committed offsets come from the AdminClient; high watermarks from ``list_offsets(latest)``.
    A partition the group never committed counts in full.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = _admin(settings, timeout_s)
    try:
        md = admin.list_topics(topic=topic, timeout=timeout_s)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return 0
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
        committed = {tp.partition: tp.offset for tp in futures[group].result(timeout_s).topic_partitions}
        latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout_s)
        lag = 0
        for tp, fut in latest.items():
            high = fut.result(timeout_s).offset
            done = committed.get(tp.partition, -1)
            lag += max(0, high - max(done, 0))
        return lag
    except KafkaException as e:
        raise VerifyError(
            f"kafka {settings.bootstrap_servers}: cannot read lag of group {group}: {e}"
        ) from None
