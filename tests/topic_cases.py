"""Builders for topic-side tests: messages on a real topic (or the embedded log), outbox tables, specs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from reconcile.spec import Spec, spec_from_dict

from .builders import make_table


@dataclass
class Msg:
    """One message to put on a topic."""

    value: Any  # dict/list -> JSON; str/bytes as is; None -> tombstone
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    partition: int | None = None
    timestamp_ms: int | None = None

    def text_value(self) -> str | None:
        """The value as the embedded log stores it (text)."""
        raw = self.wire_value()
        return None if raw is None else raw.decode("utf-8", "replace")

    def wire_value(self) -> bytes | None:
        if self.value is None:
            return None
        if isinstance(self.value, bytes):
            return self.value
        if isinstance(self.value, str):
            return self.value.encode()
        return json.dumps(self.value).encode()


def event(
    event_id: str, data: dict[str, Any], *, key: str | None = None, mode: str = "binary", **kw: Any
) -> Msg:
    """An ``OrderPlaced`` CloudEvent in binary (ce_* headers) or structured (whole event as value) mode."""
    if mode == "structured":
        doc = {"specversion": "1.0", "id": event_id, "type": "OrderPlaced", "source": "shop", "data": data}
        return Msg(doc, key, {"content-type": "application/cloudevents+json"}, **kw)
    headers = {
        "ce_specversion": "1.0",
        "ce_id": event_id,
        "ce_type": "OrderPlaced",
        "ce_source": "shop",
        "content-type": "application/json",
    }
    return Msg(data, key, headers, **kw)


def produce(bootstrap: str, topic: str, msgs: Iterable[Msg]) -> None:
    """Produce in order and wait until the broker confirmed every message."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    errors: list[str] = []
    for m in msgs:
        kw: dict[str, Any] = {}
        if m.partition is not None:
            kw["partition"] = m.partition
        if m.timestamp_ms is not None:
            kw["timestamp"] = m.timestamp_ms
        p.produce(
            topic,
            key=m.key,
            value=m.wire_value(),
            headers=list(m.headers.items()),
            on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
            **kw,
        )
        p.poll(0)
    assert p.flush(30) == 0 and not errors, errors


def commit_group(bootstrap: str, topic: str, group: str, offsets: dict[int, int]) -> None:
    """Commit ``group``'s offsets (partition -> next offset) as a projector would."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def make_topic(bootstrap: str, partitions: int = 3, config: dict[str, str] | None = None) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"test.topic.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
    )[name].result(30)
    return name


def delete_topic(bootstrap: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    admin.delete_topics([name])[name].result(30)


def topic_names(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def outbox(url: str, rows: Sequence[dict[str, Any]], name: str = "shop_outbox") -> None:
    """An outbox table: one row per event that should be published."""
    make_table(
        url,
        name,
        [
            sa.Column("event_id", sa.String(64), primary_key=True),
            sa.Column("order_id", sa.BigInteger, nullable=False),
            sa.Column("amount", sa.Numeric(12, 2), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        ],
        rows,
    )


def journal(url: str, ids: Sequence[str], name: str = "applied_events") -> None:
    """A projector's journal of applied event ids (not unique: a projector bug may apply one twice)."""
    make_table(
        url, name, [sa.Column("event_id", sa.String(64), nullable=False)], [{"event_id": i} for i in ids]
    )


def spec(doc: dict[str, Any]) -> Spec:
    return spec_from_dict(doc, "test.yaml")


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
