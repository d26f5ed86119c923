"""The source table's pass of cause attribution on PostgreSQL (rows rejected by their payload's
text in the statement, the rest through a psycopg cursor) keeps exactly the events the row-by-row
decoded check keeps: text, json and jsonb payload columns, tricky payloads, rows outside the
window; and on SQLite (SQLAlchemy's rows, filtered in Python)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app.path import canon_for
from reconcile.causes import Collector, EntityExtractor
from reconcile.db import normalize_url
from reconcile.sources.path import _as_doc, _read_source
from reconcile.sources.sql import _as_time
from reconcile.spec import EventPath, PathEntities, PathSource

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
KEYS = {("W1", "S1"), ("W1", "Sé"), ("W1", 'a"b'), ("W1", "S7")}
PAYLOADS = [
    '{"warehouse":"W1","lines":[{"sku":"S1","quantity":1}]}',
    '{ "warehouse" : "W1" , "lines" : [ { "sku" : "S7" } ] }',
    '{"warehouse":"W1","lines":[{"sku":"\\u00531"}]}',  # S1 through an escape
    '{"warehouse":"W1","lines":[{"sku":"S\\u00e9"}]}',
    '{"warehouse":"W1","lines":[{"sku":"Sé"}]}',
    '{"warehouse":"W1","lines":[{"sku":"a\\"b"}]}',
    '{"data":{"warehouse":"W1","lines":[{"sku":"S1"}]}}',
    '{"warehouse":"W1","lines":[{"sku":1e2},{"sku":"xS1"},{"S1":"sku"}]}',
    '{"warehouse":"W2","lines":[{"sku":"S1"}]}',
    '{"warehouse":"W1","lines":[{"sku":"S3"},{"sku":"S7"}]}',
    '{"warehouse":"W1","lines":[{"sku":"S3"}]}',
    '"S1"',
]


def _extractor(texts: bool) -> EntityExtractor:
    return EntityExtractor(
        {"warehouse": "$.data.warehouse", "sku": "sku"},
        ["warehouse", "sku"],
        each="$.data.lines[*]",
        canon=canon_for(["text", "text"]),
        simple=[str, str],
        texts=[True, True] if texts else None,
    )


def _fill(url: str, column_type: str, extra: list[str | None]) -> None:
    engine = sa.create_engine(normalize_url(url))
    old, hour = NOW - timedelta(days=3), NOW - timedelta(hours=1)
    rows: list[dict[str, Any]] = []
    for i, p in enumerate([*PAYLOADS, *extra]):
        rows.append({"id": i, "e": f"e{i}", "p": p, "c": hour, "u": hour if i % 3 else None})
    rows += [
        {"id": 100, "e": "old-published", "p": PAYLOADS[0], "c": old, "u": old},  # outside the window
        {"id": 101, "e": "old-unpublished", "p": PAYLOADS[1], "c": old, "u": None},  # judged whatever its age
        {"id": 102, "e": None, "p": PAYLOADS[0], "c": hour, "u": hour},  # no event id
        {"id": 103, "e": "no-payload", "p": None, "c": hour, "u": hour},
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE outbox (id int PRIMARY KEY, event_id text, payload {column_type}, "
                f"created_at {'timestamptz' if 'sqlite' not in url else 'timestamp'}, published_at "
                f"{'timestamptz' if 'sqlite' not in url else 'timestamp'})"
            )
        )
        conn.execute(sa.text("INSERT INTO outbox VALUES (:id, :e, :p, :c, :u)"), rows)
    engine.dispose()


def _reference(url: str, since: datetime) -> Collector:
    """The source pass as it was: every row of the window decoded, then checked."""
    ref = Collector(KEYS, _extractor(texts=False))
    assert ref.extract.maybe is None
    engine = sa.create_engine(normalize_url(url))
    with engine.connect() as conn:
        t = sa.Table("outbox", sa.MetaData(), autoload_with=conn)
        stmt = sa.select(t.c.event_id, t.c.payload, t.c.published_at, t.c.created_at).where(
            sa.or_(t.c.created_at >= since, t.c.created_at.is_(None), t.c.published_at.is_(None))
        )
        for eid, payload, pub, created in conn.execute(stmt):
            ref.source_row(
                eid,
                _as_doc(payload),
                published=pub is not None,
                written_at=_as_time(created),
                row={"event_id": eid, "published_at": pub},
            )
    engine.dispose()
    return ref


def _path() -> EventPath:
    return EventPath(
        topic="t",
        consumer_group="g",
        entities=PathEntities(each="$.data.lines[*]", key={"warehouse": "$.data.warehouse", "sku": "sku"}),
        source=PathSource(table="outbox", event_id="event_id", payload="payload", published="published_at"),
    )


def _same(url: str) -> Collector:
    since = NOW - timedelta(days=1)
    fast = Collector(KEYS, _extractor(texts=True))
    assert fast.extract.maybe is not None
    _read_source(_path(), url, fast, since)
    ref = _reference(url, since)
    assert fast.events == ref.events
    assert fast.source_rows == ref.source_rows  # every row of the window, kept or not
    return fast


KEPT = {"e0", "e1", "e2", "e3", "e4", "e5", "e6", "e9", "old-unpublished"}


@pytest.mark.parametrize("column_type", ["text", "json", "jsonb"])
def test_pg_source_pass_keeps_what_the_decoded_check_keeps(make_pg_db, monkeypatch, column_type: str) -> None:  # type: ignore[no-untyped-def]
    from reconcile.sources import path as source_path

    pushed: list[int] = []
    real = source_path._pushed_down

    def spy(*args: Any) -> Any:
        pushed.append(1)
        return real(*args)

    monkeypatch.setattr(source_path, "_pushed_down", spy)
    url = make_pg_db()
    _fill(url, column_type, ['{"warehouse":"W1","lines":[{"sku":"S1"}],"n":123456789012345678901234567890}'])
    assert KEPT <= set(_same(url).events)
    assert pushed == [1]  # PostgreSQL did the filtering


def test_sqlite_source_pass_keeps_what_the_decoded_check_keeps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    _fill(url, "text", ['{"warehouse":"W1","lines":[{"sku":"S1"}]', json.dumps({"warehouse": "W1"})])
    assert KEPT <= set(_same(url).events)


def test_pg_source_pass_reads_an_enum_event_id_as_text(make_pg_db) -> None:  # type: ignore[no-untyped-def]
    # psycopg hands an enum over as bytes in binary, as str in text: such a table is read in text.
    url = make_pg_db()
    engine = sa.create_engine(normalize_url(url))
    hour = NOW - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TYPE ev AS ENUM ('e0', 'e1')"))
        conn.execute(
            sa.text(
                "CREATE TABLE outbox (event_id ev, payload text, "
                "created_at timestamptz, published_at timestamptz)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO outbox VALUES ('e0', :a, :t, :t), ('e1', :b, :t, NULL)"),
            {"a": PAYLOADS[0], "b": PAYLOADS[1], "t": hour},
        )
    engine.dispose()
    fast = _same(url)
    assert {e.source_row["event_id"] for e in fast.events.values() if e.source_row} == {"e0", "e1"}
