"""The reference shop's event channel: Apache Kafka, or the embedded table-backed log.

The order service publishes through a :class:`Channel`; the inventory projector consumes
through a :class:`Subscription`. ``Channel.blip(seconds)`` makes the channel unreachable from
the producer's side for a while (every publish fails, as when the broker cannot be reached) —
the fault the incident replay injects. With Kafka, tests can also stop a real broker.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..events.cloudevent import decode_headers
from ..events.embedded import EmbeddedLog
from ..events.kafka import KafkaSettings

log = logging.getLogger("reconcile.shop")

__all__ = ["Channel", "Subscription", "Message", "KafkaChannel", "EmbeddedChannel", "Delivered"]

Delivered = Callable[[bool, str | None], None]  # (ok, error) for one published message


@dataclass(frozen=True)
class Message:
    """One consumed message."""

    topic: str
    key: str | None
    headers: dict[str, str]
    value: str | None


class Subscription(ABC):
    """A consumer group's view of some topics."""

    @abstractmethod
    def poll(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        """The next messages (possibly none)."""

    @abstractmethod
    def commit(self) -> None:
        """Commit everything returned by poll so far."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group without committing more."""


class Channel(ABC):
    """Publishes domain events; can be made unreachable for a while (a blip)."""

    def __init__(self) -> None:
        self._down_until = 0.0
        self._lock = threading.Lock()

    def blip(self, seconds: float) -> None:
        """From now on, for ``seconds``, every publish fails as if the broker were unreachable."""
        with self._lock:
            self._down_until = time.monotonic() + seconds

    @property
    def reachable(self) -> bool:
        return time.monotonic() >= self._down_until

    def publish(
        self, topic: str, key: str, headers: dict[str, str], value: str, on_result: Delivered
    ) -> None:
        """Send one message; ``on_result`` reports whether the broker confirmed it."""
        if not self.reachable:
            on_result(False, "broker unreachable (blip)")
            return
        self._publish(topic, key, headers, value, on_result)

    @abstractmethod
    def _publish(
        self, topic: str, key: str, headers: dict[str, str], value: str, on_result: Delivered
    ) -> None: ...

    def flush(self, timeout_s: float = 10.0) -> None:  # noqa: B027 - synchronous channels need nothing
        """Wait for outstanding delivery reports."""

    @abstractmethod
    def subscribe(self, group: str, topics: Sequence[str]) -> Subscription:
        """A consumer-group subscription."""

    def close(self) -> None:  # noqa: B027
        """Release resources."""


class EmbeddedChannel(Channel):
    """The embedded log as a channel: an append is confirmed when its transaction commits."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.log = EmbeddedLog(url)

    def _publish(
        self, topic: str, key: str, headers: dict[str, str], value: str, on_result: Delivered
    ) -> None:
        try:
            self.log.append([(topic, key, headers, value)])
        except Exception as e:  # noqa: BLE001 - a failed append is a lost event, reported
            on_result(False, str(e).splitlines()[0])
            return
        on_result(True, None)

    def subscribe(self, group: str, topics: Sequence[str]) -> Subscription:
        return _EmbeddedSubscription(EmbeddedLog(self.url), group, list(topics))

    def close(self) -> None:
        self.log.dispose()


class _EmbeddedSubscription(Subscription):
    def __init__(self, log: EmbeddedLog, group: str, topics: list[str]):
        self.log, self.group, self.topics = log, group, topics
        self._pending: dict[str, int] = {}

    def poll(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        records = self.log.read(self.group, self.topics, max_messages, positions=self._pending)
        if not records:
            time.sleep(min(timeout_s, 0.05))
            return []
        for r in records:
            self._pending[r.topic] = r.offset + 1
        return [Message(r.topic, r.key, r.headers, r.value) for r in records]

    def commit(self) -> None:
        with self.log.engine.begin() as conn:
            for topic, nxt in self._pending.items():
                self.log.commit(conn, self.group, topic, nxt)

    def close(self) -> None:
        self.log.dispose()


class KafkaChannel(Channel):
    """Kafka as the channel. ``acks=all``; a message not confirmed within ``timeout_s`` is lost."""

    def __init__(self, settings: KafkaSettings, *, timeout_s: float = 2.0):
        from confluent_kafka import Producer

        super().__init__()
        self.settings = settings
        self.producer = Producer(
            settings.config(**{"acks": "all", "linger.ms": 5, "message.timeout.ms": int(timeout_s * 1000)})
        )

    def _publish(
        self, topic: str, key: str, headers: dict[str, str], value: str, on_result: Delivered
    ) -> None:
        from confluent_kafka import KafkaException

        def done(err, _msg) -> None:  # type: ignore[no-untyped-def]
            on_result(err is None, None if err is None else str(err.str()))

        hdrs: list[tuple[str, str | bytes | None]] = [(k, v.encode()) for k, v in headers.items()]
        try:
            self.producer.produce(
                topic, key=key.encode(), value=value.encode(), headers=hdrs, on_delivery=done
            )
        except (BufferError, KafkaException) as e:
            on_result(False, str(e))
        self.producer.poll(0)

    def flush(self, timeout_s: float = 10.0) -> None:
        self.producer.flush(timeout_s)

    def subscribe(self, group: str, topics: Sequence[str]) -> Subscription:
        return _KafkaSubscription(self.settings, group, list(topics))

    def close(self) -> None:
        self.producer.flush(5)


class _KafkaSubscription(Subscription):
    def __init__(self, settings: KafkaSettings, group: str, topics: list[str]):
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            settings.config(
                **{
                    "group.id": group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": 10000,
                    "topic.metadata.refresh.interval.ms": 1000,
                }
            )
        )
        self.consumer.subscribe(topics)

    def poll(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        out = []
        for m in self.consumer.consume(num_messages=max_messages, timeout=timeout_s):
            if m.error() is not None:
                continue
            key, value = m.key(), m.value()
            out.append(
                Message(
                    str(m.topic()),
                    key.decode() if isinstance(key, bytes) else key,
                    decode_headers(m.headers()),
                    value.decode() if isinstance(value, bytes) else value,
                )
            )
        return out

    def commit(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            # NO_OFFSET: nothing new to commit. Otherwise (a rebalance or broker restart took the
            # group away) the batch is simply redelivered later; the applied-ids table dedups it.
            if "NO_OFFSET" not in str(e):
                log.warning("projector commit failed, the batch will be redelivered: %s", e)

    def close(self) -> None:
        self.consumer.close()
