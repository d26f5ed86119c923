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
from functools import partial
from typing import Any

from ..errors import PublishError, VerifyError
from .cloudevent import decode_headers
from .transport import EventConsumer, Message, Outgoing, PublishReport, Transport

__all__ = ["KafkaSettings", "KafkaTransport", "KafkaConsumer", "consumer_lag", "ensure_topic"]

# librdkafka's own log lines ("Connect to ... failed") go here, not to stderr: the CLI's
# contract is one error line, and delivery reports already carry what matters.
log = logging.getLogger("reconcile.kafka")
log.addHandler(logging.NullHandler())

# Errors no retry can fix: the broker (or librdkafka) refuses this message itself. Such a row is
# "rejected" (parked after a few attempts), never retried forever and never in the way of others.
_PERMANENT = {
    "MSG_SIZE_TOO_LARGE",
    "INVALID_RECORD",
    "RECORD_LIST_TOO_LARGE",
    "INVALID_MSG",
    "INVALID_MSG_SIZE",
    "_INVALID_ARG",
    "_BAD_MSG",
}


def _permanent(err: Any) -> bool:
    from confluent_kafka import KafkaError

    codes = {getattr(KafkaError, n) for n in _PERMANENT if hasattr(KafkaError, n)}
    try:
        return err.code() in codes
    except AttributeError:
        return False


# RECONCILE_KAFKA_* variables that are reconcile's own, not librdkafka settings.
_NOT_LIBRDKAFKA = frozenset({"RECONCILE_KAFKA_CONN_ID"})


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is and any extra librdkafka settings (security, client id...)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, bootstrap: str | None = None) -> KafkaSettings:
        """``KAFKA_BOOTSTRAP_SERVERS``; ``RECONCILE_KAFKA_<SETTING>`` adds librdkafka settings
        (``RECONCILE_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` -> ``security.protocol``), except
        reconcile's own ``RECONCILE_KAFKA_CONN_ID`` (the Airflow Kafka connection's name)."""
        extra = {
            k.removeprefix("RECONCILE_KAFKA_").lower().replace("_", "."): v
            for k, v in os.environ.items()
            if k.startswith("RECONCILE_KAFKA_") and k not in _NOT_LIBRDKAFKA
        }
        return cls(bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), extra)

    def config(self, **more: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap servers, extras, then ``more``."""
        return {"bootstrap.servers": self.bootstrap_servers, "logger": log, **self.extra, **more}


class KafkaTransport(Transport):
    """A real broker: an idempotent, acks=all producer; consumer groups; lag from the AdminClient."""

    name = "kafka"

    def __init__(self, settings: KafkaSettings, *, timeout_s: float = 30.0):
        self.settings = settings
        self.timeout_s = timeout_s
        self._producer: Any = None

    @property
    def where(self) -> str:
        return self.settings.bootstrap_servers

    @property
    def producer(self) -> Any:
        """The producer, made on first use (a transport that only measures lag never makes one)."""
        if self._producer is None:
            self._producer = self._make_producer()
        return self._producer

    def _make_producer(self) -> Any:
        from confluent_kafka import Producer

        settings, timeout_s = self.settings, self.timeout_s
        return Producer(
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

    def publish(self, rows: Sequence[Outgoing]) -> PublishReport:
        from confluent_kafka import KafkaException

        report = PublishReport()

        def done(row_id: int, err, _msg) -> None:  # type: ignore[no-untyped-def]
            if err is None:
                report.confirmed.append(row_id)
            elif _permanent(err):
                report.rejected[row_id] = f"kafka refused it: {err.str()}"
            else:
                report.failed.append(row_id)
                report.first_error = report.first_error or str(err.str())

        # Each row's report names its row id (partial: no closure made per row). str key/value
        # and a dict of str headers go out as their UTF-8 bytes, in order: the
        # same message as encoding them here, without a Python loop per header.
        produce, poll = self.producer.produce, self.producer.poll
        for n, row in enumerate(rows, start=1):
            while True:
                try:
                    produce(
                        row.topic,
                        key=row.message_key,
                        value=row.payload,
                        headers=row.headers,  # type: ignore[arg-type]  # dict[str, str] is read-only here
                        on_delivery=partial(done, row.id),
                    )
                    break
                except BufferError:  # local queue full: serve callbacks, then retry
                    poll(0.5)
                except KafkaException as e:
                    if e.args and _permanent(e.args[0]):
                        size = len(row.payload or "") + len(row.message_key)
                        report.rejected[row.id] = f"kafka refused it ({size:,} bytes): {e.args[0].str()}"
                    else:
                        report.failed.append(row.id)
                        report.first_error = report.first_error or str(e)
                    break
            if n % 1000 == 0:  # serve delivery reports as they come, without a call per row
                poll(0)
        remaining = self.producer.flush(self.timeout_s + 10)
        if remaining:
            pending = {r.id for r in rows} - set(report.confirmed) - set(report.failed) - set(report.rejected)
            report.failed += sorted(pending)
            report.first_error = (
                report.first_error or f"{remaining} message(s) not delivered before the timeout"
            )
        return report

    def consumer(self, group: str, topics: Sequence[str]) -> EventConsumer:
        return KafkaConsumer(self.settings, group, topics)

    def lag(self, group: str, topic: str) -> int:
        return consumer_lag(self.settings, group, topic, timeout_s=min(self.timeout_s, 15.0))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)


class KafkaConsumer(EventConsumer):
    """A consumer-group member with manual commits (commit only after the batch was applied)."""

    def __init__(self, settings: KafkaSettings, group: str, topics: Sequence[str]):
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            settings.config(
                **{
                    "group.id": group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": 10000,
                    "allow.auto.create.topics": False,
                }
            )
        )
        self.consumer.subscribe(list(topics))
        self._polled = False

    def poll(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        from datetime import UTC, datetime

        out: list[Message] = []
        for m in self.consumer.consume(num_messages=max_messages, timeout=timeout_s):
            if m.error() is not None:
                continue
            kind, ms = m.timestamp()
            key, value = m.key(), m.value()
            out.append(
                Message(
                    topic=str(m.topic()),
                    partition=int(m.partition() or 0),
                    offset=int(m.offset() or 0),
                    key=key.decode() if isinstance(key, bytes) else key,
                    headers=decode_headers(m.headers()),
                    value=value.decode() if isinstance(value, bytes) else value,
                    timestamp=datetime.fromtimestamp(ms / 1000, UTC) if kind and ms >= 0 else None,
                )
            )
        self._polled = self._polled or bool(out)
        return out

    def commit(self) -> None:
        from confluent_kafka import KafkaException

        if not self._polled:
            return
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            raise PublishError(f"kafka: cannot commit the consumer's offsets: {e}") from None
        self._polled = False

    def close(self) -> None:
        self.consumer.close()


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
        # All topics' metadata, not this topic's: a metadata request naming a topic makes a broker
        # with auto.create.topics.enable create it, and measuring must never create anything.
        meta = admin.list_topics(timeout=timeout_s).topics.get(topic)
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
