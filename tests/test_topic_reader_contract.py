"""The topic-reading port's contract, run against every adapter: the real Kafka broker and the
embedded log. A fixed extent, every message inside it with its position, windows, committed
offsets, and a missing topic that stays missing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconcile.errors import SourceError, SpecError
from reconcile.events.kafka import KafkaSettings
from reconcile.events.reader import NEVER_COMMITTED, TopicReader, open_reader

from .topic_cases import Msg, commit_group, delete_topic, make_topic, produce, topic_names

Put = Callable[[list[Msg]], None]
Commit = Callable[[str, dict[int, int]], None]


def read_all(reader: TopicReader, extent) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    return [m for batch in reader.read(extent, batch=3) for m in batch]


def text(raw: object) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw  # type: ignore[return-value]


def headers(raw: Any) -> dict[str, str]:
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {k: str(text(v)) for k, v in items}


class ReaderContract:
    """Every topic-reader adapter passes these."""

    partitions: int = 1

    @pytest.fixture
    def reader(self) -> Iterator[TopicReader]:
        raise NotImplementedError

    @pytest.fixture
    def topic(self) -> Iterator[str]:
        raise NotImplementedError

    @pytest.fixture
    def put(self, topic: str) -> Put:
        raise NotImplementedError

    @pytest.fixture
    def commit(self, topic: str) -> Commit:
        raise NotImplementedError

    def msgs(self, n: int, start: int = 0) -> list[Msg]:
        return [
            Msg({"n": i}, f"k{i}", {"ce_id": f"ev-{i}"}, partition=i % self.partitions)
            for i in range(start, start + n)
        ]

    def test_extent_is_fixed_when_taken(self, reader: TopicReader, topic: str, put: Put) -> None:
        put(self.msgs(6))
        extent = reader.extent(topic, None)
        put(self.msgs(3, start=6))  # produced after the run started: not part of it
        got = read_all(reader, extent)
        assert sorted(headers(m[5])["ce_id"] for m in got) == [f"ev-{i}" for i in range(6)]
        assert extent.messages == 6 and extent.partitions == list(range(self.partitions))
        assert extent.to_dict()["offsets"] == 6 and extent.to_dict()["topic"] == topic

    def test_messages_keep_position_key_value_headers_and_time(
        self, reader: TopicReader, topic: str, put: Put
    ) -> None:
        before = datetime.now(UTC) - timedelta(seconds=5)
        put(self.msgs(4) + [Msg(None, "gone", {"ce_id": "ev-t"}, partition=0)])
        got = read_all(reader, reader.extent(topic, None))
        assert len(got) == 5
        seen: dict[int, list[int]] = {}
        for p, o, ms, key, value, hdrs in got:
            seen.setdefault(p, []).append(o)
            assert datetime.fromtimestamp(ms / 1000, UTC) >= before
            h = headers(hdrs)
            if h["ce_id"] == "ev-t":
                assert value is None and text(key) == "gone"  # a tombstone keeps its key
            else:
                n = int(h["ce_id"][3:])
                assert text(key) == f"k{n}" and text(value) == f'{{"n": {n}}}'
        assert all(offsets == sorted(offsets) for offsets in seen.values())  # offset order per partition

    def test_a_window_after_every_message_is_empty(self, reader: TopicReader, topic: str, put: Put) -> None:
        put(self.msgs(3))
        extent = reader.extent(topic, datetime.now(UTC) + timedelta(hours=1))
        assert extent.messages == 0 and read_all(reader, extent) == []
        assert extent.since is not None and extent.to_dict()["since"].endswith("Z")

    def test_a_missing_topic_is_named_and_never_created(self, reader: TopicReader) -> None:
        name = f"test.missing.{uuid.uuid4().hex[:8]}"
        with pytest.raises(SpecError, match=f"topic '{name}' does not exist"):
            reader.extent(name, None)
        with pytest.raises(SpecError):
            reader.partitions(name)

    def test_committed_offsets_and_known_groups(
        self, reader: TopicReader, topic: str, put: Put, commit: Commit
    ) -> None:
        put(self.msgs(6))
        group = f"g-{uuid.uuid4().hex[:8]}"
        parts = list(range(self.partitions))
        assert not reader.group_known(group)
        assert reader.committed(group, topic, parts) == {p: NEVER_COMMITTED for p in parts}
        commit(group, {0: 1})
        assert reader.group_known(group)
        got = reader.committed(group, topic, parts)
        assert got[0] == 1 and all(got[p] == NEVER_COMMITTED for p in parts[1:])


class TestEmbeddedReader(ReaderContract):
    partitions = 1

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'log.db'}"

    @pytest.fixture
    def reader(self, url: str) -> Iterator[TopicReader]:
        r = open_reader("embedded", embedded_url=url)
        yield r
        r.close()

    @pytest.fixture
    def topic(self) -> Iterator[str]:
        yield f"t.{uuid.uuid4().hex[:8]}"

    @pytest.fixture
    def put(self, url: str, topic: str) -> Iterator[Put]:
        from reconcile.events.embedded import EmbeddedLog

        log = EmbeddedLog(url)
        yield lambda msgs: log.append([(topic, m.key, m.headers, m.text_value()) for m in msgs])
        log.dispose()

    @pytest.fixture
    def commit(self, url: str, topic: str) -> Iterator[Commit]:
        from reconcile.events.embedded import EmbeddedLog

        log = EmbeddedLog(url)
        first: dict[str, int] = {}

        def do(group: str, offsets: dict[int, int]) -> None:
            # The embedded log's offsets are its own row ids: commit relative to the topic's first.
            if "offset" not in first:
                first["offset"] = open_reader("embedded", embedded_url=url).extent(topic, None).start[0]
            with log.engine.begin() as conn:
                log.commit(conn, group, topic, first["offset"] + offsets[0])

        yield do
        log.dispose()

    def test_committed_offsets_and_known_groups(  # type: ignore[override]
        self, reader: TopicReader, topic: str, put: Put, commit: Commit
    ) -> None:
        put(self.msgs(6))
        group = f"g-{uuid.uuid4().hex[:8]}"
        assert not reader.group_known(group)
        assert reader.committed(group, topic, [0]) == {0: NEVER_COMMITTED}
        commit(group, {0: 1})
        start = reader.extent(topic, None).start[0]
        assert reader.group_known(group) and reader.committed(group, topic, [0]) == {0: start + 1}


@pytest.mark.integration
class TestKafkaReader(ReaderContract):
    partitions = 3

    @pytest.fixture
    def reader(self, kafka_bootstrap: str) -> Iterator[TopicReader]:
        r = open_reader("kafka", kafka=KafkaSettings(kafka_bootstrap), timeout_s=15)
        yield r
        r.close()

    @pytest.fixture
    def topic(self, kafka_bootstrap: str) -> Iterator[str]:
        name = make_topic(kafka_bootstrap, self.partitions)
        yield name
        delete_topic(kafka_bootstrap, name)

    @pytest.fixture
    def put(self, kafka_bootstrap: str, topic: str) -> Put:
        return lambda msgs: produce(kafka_bootstrap, topic, msgs)

    @pytest.fixture
    def commit(self, kafka_bootstrap: str, topic: str) -> Commit:
        return lambda group, offsets: commit_group(kafka_bootstrap, topic, group, offsets)

    def test_a_missing_topic_is_named_and_never_created(self, reader: TopicReader) -> None:  # type: ignore[override]
        super().test_a_missing_topic_is_named_and_never_created(reader)
        bootstrap = reader.where.split()[-1]  # type: ignore[attr-defined]
        assert not any(t.startswith("test.missing.") for t in topic_names(bootstrap))

    def test_a_window_starts_at_the_first_offset_at_or_after_since(
        self, reader: TopicReader, topic: str, put: Put
    ) -> None:
        now = datetime.now(UTC)
        old = int((now - timedelta(days=2)).timestamp() * 1000)
        recent = int((now - timedelta(minutes=5)).timestamp() * 1000)
        put([Msg({"n": i}, f"k{i}", {"ce_id": f"old-{i}"}, partition=0, timestamp_ms=old) for i in range(4)])
        put(
            [
                Msg({"n": i}, f"k{i}", {"ce_id": f"new-{i}"}, partition=0, timestamp_ms=recent)
                for i in range(2)
            ]
        )
        extent = reader.extent(topic, now - timedelta(hours=24))
        assert extent.start[0] == 4 and extent.end[0] == 6
        assert extent.start[1] == extent.end[1] == 0  # empty partitions: an empty range
        assert sorted(headers(m[5])["ce_id"] for m in read_all(reader, extent)) == ["new-0", "new-1"]

    def test_an_unreachable_broker_fails_fast_with_one_line(self) -> None:
        import socket
        import time

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        reader = open_reader("kafka", kafka=KafkaSettings(f"127.0.0.1:{port}"), timeout_s=20)
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="cannot reach the broker") as e:
            reader.extent("anything", None)
        assert time.monotonic() - t0 < 10 and "\n" not in str(e.value)
