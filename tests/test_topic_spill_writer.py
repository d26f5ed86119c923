"""The topic spill written by a writer process is the spill written in-process, row for row.

From ``SPILL_PROCESS_MIN`` offsets a topic side hands its rows to a second process
(:mod:`reconcile.sources.spill_writer`) that inserts them into SQLite. Both ways are run here on
the same messages — JSON containers (stored as BLOBs), integers past 64 bits, floats, booleans,
nulls, invalid JSON, tombstones, text and bytes keys; the plain read, ``latest_per_key`` and
the in-flight rule of a consumer group — and must leave the same stored rows (values and their
SQLite types, in insertion order), the same counts, and stream the same rows in key order.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import pytest

from reconcile.errors import SourceError
from reconcile.events.reader import Extent
from reconcile.sources.spill_writer import SpillWriteError, SpillWriter
from reconcile.sources.sql import ReadPlan
from reconcile.sources.topic import TopicSource
from reconcile.spec import spec_from_dict


class _ListReader:
    """A topic of three partitions held in a list, read in small batches."""

    where = "test"

    def __init__(self, messages: list[tuple[Any, ...]], committed: dict[int, int] | None = None):
        self.messages = messages
        self._committed = committed or {}

    def extent(self, topic: str, since: Any) -> Extent:
        end = {p: 1 + max((m[1] for m in self.messages if m[0] == p), default=-1) for p in (0, 1, 2)}
        return Extent(topic, {p: 0 for p in end}, end, datetime.now(UTC))

    def read(self, extent: Extent, batch: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        for i in range(0, len(self.messages), 7):
            yield self.messages[i : i + 7]

    def group_known(self, group: str) -> bool:
        return True

    def committed(self, group: str, topic: str, partitions: Any) -> dict[int, int]:
        return {p: self._committed.get(p, -1) for p in partitions}

    def close(self) -> None:
        pass


def _messages() -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    values: list[Any] = [
        {"order_id": 1, "amount": 9.5, "lines": [{"sku": "A"}]},
        {"order_id": 2**70, "amount": {"nested": [1, 2]}},  # too big for SQLite; a container
        {"order_id": True, "amount": None},
        {"order_id": -(2**63), "amount": 1e300},
        {"order_id": "12", "amount": "text"},
        {"amount": 0.1},  # no order_id: NULL
    ]
    for i in range(60):
        p = i % 3
        value: Any = json.dumps(values[i % len(values)]).encode()
        if i % 11 == 5:
            value = b"{not json"
        if i % 13 == 7:
            value = None  # a tombstone
        key: Any = f"k{i % 9}".encode() if i % 4 else f"k{i % 9}"
        headers = [("ce_specversion", b"1.0"), ("ce_id", f"ev-{i % 40:03d}".encode())]
        out.append((p, i // 3, 1_700_000_000_000 + i, key, value, headers))
    return out


def _spec(**projection: Any) -> Any:
    group = projection.pop("_group", False)
    return spec_from_dict(
        {
            "name": "x",
            "truth": {"url": "sqlite:///unused.db", "table": "t"},
            "projection": {
                "topic": "t",
                "transport": "kafka",
                "fields": {
                    "event_id": "header:ce_id",
                    "order_id": "$.data.order_id",
                    "amount": "$.data.amount",
                },
                **projection,
            },
            "key": ["event_id"],
            "columns": ["order_id", "amount"],
            **({"freshness": {"consumer_group": "g"}} if group else {}),
        }
    )


def _spill(process: bool, *, latest: bool = False, group: bool = False) -> tuple[Any, ...]:
    spec = _spec(latest_per_key=latest, _group=group)
    committed = {0: 10, 1: 3} if group else None
    src = TopicSource(
        spec.projection,
        "projection",
        _ListReader(_messages(), committed),
        consumer_group="g" if group else None,
    )
    try:
        src.spill_process = process
        plan = ReadPlan(["event_id"], ["text"], ["order_id", "amount", "_timestamp"], None)
        streamed = list(src.stream(plan))
        conn = sqlite3.connect(src.path)
        try:
            cols = [r[1] for r in conn.execute("PRAGMA table_info(topic_data)")]
            stored = conn.execute(
                f"SELECT {', '.join(f'{c}, typeof({c})' for c in cols)} FROM topic_data ORDER BY rowid"
            ).fetchall()
        finally:
            conn.close()
        stats = src.stats.to_dict()
        stats.pop("read_seconds")
        stats.pop("messages_per_second")
        stats.pop("spill_bytes")
        return stored, stats, streamed, set(src._blobs)
    finally:
        src.dispose()


@pytest.mark.parametrize(
    "mode", [{}, {"latest": True}, {"group": True}], ids=["plain", "latest", "in-flight"]
)
def test_the_writer_process_leaves_the_same_spill(mode: dict[str, bool]) -> None:
    inline, process = _spill(False, **mode), _spill(True, **mode)
    stored, stats, streamed, blobs = process
    assert stored and streamed and blobs  # the messages did make rows, containers among them
    assert process == inline


def test_a_large_extent_uses_the_writer_and_a_small_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    src = TopicSource(_spec().projection, "projection", _ListReader(_messages()))
    try:
        assert not src._writer_wanted()  # 20 offsets a partition
        monkeypatch.setenv("RECONCILE_TOPIC_SPILL_PROCESS_MIN", "0")
        assert src._writer_wanted()
        src.spill_process = False
        assert not src._writer_wanted()
    finally:
        src.dispose()


def test_a_value_marshal_cannot_write_goes_pickled(tmp_path: Any) -> None:
    path = str(tmp_path / "s.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a, b)")
    writer = SpillWriter(path, ["journal_mode=OFF"], "INSERT INTO t (a, b) VALUES (?, ?)")
    try:
        writer.write([(1, "x"), (2, b"y"), (3, None)])
        writer.write([(4, HTTPStatus.OK)])  # an int subclass: marshal refuses it, pickle does not
        writer.finish()
    finally:
        writer.stop()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT a, b, typeof(b) FROM t ORDER BY rowid").fetchall() == [
            (1, "x", "text"),
            (2, b"y", "blob"),
            (3, None, "null"),
            (4, 200, "integer"),
        ]


def test_a_sqlite_error_in_the_writer_is_raised_by_finish(tmp_path: Any) -> None:
    path = str(tmp_path / "s.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a)")
    writer = SpillWriter(path, [], "INSERT INTO t (a) VALUES (?)")
    try:
        writer.write([(Decimal("1.5"),)])  # pickled; the writer's sqlite3 cannot bind it
        with pytest.raises(SpillWriteError, match="Decimal"):
            writer.finish()
    finally:
        writer.stop()


def test_a_failing_writer_is_one_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    original = SpillWriter.__init__

    def bad_insert(self: SpillWriter, path: str, pragmas: Any, insert: str) -> None:
        original(self, path, pragmas, "INSERT INTO nope VALUES (?)")

    monkeypatch.setattr(SpillWriter, "__init__", bad_insert)
    src = TopicSource(_spec().projection, "projection", _ListReader(_messages()))
    try:
        src.spill_process = True
        plan = ReadPlan(["event_id"], ["text"], ["order_id", "amount"], None)
        with pytest.raises(SourceError, match="cannot spill rows to .*no such table: nope"):
            src.load(plan)
    finally:
        src.dispose()


def test_the_writer_is_stopped_when_the_read_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing(_ListReader):
        def read(self, extent: Extent, batch: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
            yield self.messages[:7]
            raise SourceError("kafka test: reading topic 't': broker gone")

    started: list[SpillWriter] = []
    original = SpillWriter.__init__

    def spy(self: SpillWriter, *args: Any) -> None:
        original(self, *args)
        started.append(self)

    monkeypatch.setattr(SpillWriter, "__init__", spy)
    src = TopicSource(_spec().projection, "projection", Failing(_messages()))
    try:
        src.spill_process = True
        with pytest.raises(SourceError, match="broker gone"):
            src.load(ReadPlan(["event_id"], ["text"], ["order_id", "amount"], None))
    finally:
        src.dispose()
    assert len(started) == 1 and started[0].process.poll() is not None
