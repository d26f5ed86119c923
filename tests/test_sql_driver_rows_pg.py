"""The SQL reader's PostgreSQL fast path gives exactly the rows SQLAlchemy's path gives.

On PostgreSQL (psycopg) :meth:`SqlSource.stream` reads psycopg's own tuples from a server-side
cursor instead of SQLAlchemy's Row objects. Both paths are run here on one table holding every
kind of value a side compares (text, integers, numerics, floats, booleans, dates, times with and
without a zone, JSON, UUIDs, bytes, NULLs) with a ``where:``, a run filter, a key range, a
``--keys`` lookup and several chunks, and must give the same rows, value for value and type for
type. A failing statement is still one SourceError.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa

from reconcile.errors import SourceError
from reconcile.sources import sql as sql_module
from reconcile.sources.ranges import KeyRange, range_filter
from reconcile.sources.sql import ReadPlan, SqlSource
from reconcile.spec import Side

pytestmark = pytest.mark.integration

_VALUES = "id, name, amount, ratio, flag, born, seen_at, seen_local, doc, ref, raw"
_PLAN = ReadPlan(["id"], ["int"], [v.strip() for v in _VALUES.split(",")[1:]], "seen_at")


@pytest.fixture
def table(pg_url: str) -> str:
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE items (id bigint PRIMARY KEY, name text, amount numeric(12, 2), "
                "ratio double precision, flag boolean, born date, seen_at timestamptz, "
                "seen_local timestamp, doc jsonb, ref uuid, raw bytea)"
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO items ({_VALUES}) SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'n-' || g END, "
                "g / 100.0, g / 3.0, g % 2 = 0, DATE '2020-01-01' + g::int, "
                "TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 minute', "
                "TIMESTAMP '2024-01-01 00:00:00' + g * INTERVAL '1 second', "
                "jsonb_build_object('g', g, 'l', jsonb_build_array(g, 'x')), "
                "md5(g::text)::uuid, decode(lpad(to_hex(g), 8, '0'), 'hex') "
                "FROM generate_series(1, 2500) AS g"
            )
        )
    engine.dispose()
    return pg_url


def _read(url: str, fast: bool, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> list[Any]:
    if not fast:
        monkeypatch.setattr(sql_module, "_driver_rows", lambda *a: None)
    side = Side(url=url, table="items", where="name IS NOT NULL OR id < 50")
    src = SqlSource(side, "truth", chunk_rows=700, filter_columns={"id": "id", "name": "name"})
    try:
        if "rng" in kw:
            kw["extra_filter"] = range_filter(src, _PLAN, kw.pop("rng"))
        rows = list(src.stream(_PLAN, **kw))
    finally:
        src.dispose()
        monkeypatch.undo()
    return [(r.key, r.values, r.changed_at, [type(v) for v in r.values]) for r in rows]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"where": "id > 100 AND name <> 'n-200'"},
        {"rng": KeyRange(500, 1800)},
        {"keys": [(1,), (7,), (2499,), (99999,)]},
    ],
    ids=["all", "where", "range", "keys"],
)
def test_driver_rows_are_sqlalchemys_rows(
    table: str, monkeypatch: pytest.MonkeyPatch, kw: dict[str, Any]
) -> None:
    called: list[Any] = []
    real = sql_module._driver_rows

    def spy(*args: Any) -> Iterator[Any] | None:
        got = real(*args)
        called.append(got is not None)
        return got

    monkeypatch.setattr(sql_module, "_driver_rows", spy)
    fast = _read(table, True, monkeypatch, **dict(kw))
    slow = _read(table, False, monkeypatch, **dict(kw))
    assert called and all(called)  # the fast path did run
    assert fast and fast == slow


def test_a_failing_statement_on_the_fast_path_is_a_source_error(table: str) -> None:
    src = SqlSource(Side(url=table, table="items"), "truth")
    try:
        plan = ReadPlan(["id"], ["int"], ["name"], None)
        with pytest.raises(SourceError, match="truth: query failed on .*division by zero"):
            list(src.stream(plan, extra_filter=lambda t: sa.text("1 / (id - id) = 1")))
    finally:
        src.dispose()


def test_a_reader_stopped_early_leaves_no_fetching_thread(table: str) -> None:
    src = SqlSource(Side(url=table, table="items"), "truth", chunk_rows=100)
    try:
        rows = cast(Generator[Any, None, None], src.stream(ReadPlan(["id"], ["int"], ["name"], None)))
        first = [next(rows) for _ in range(450)]  # into the prefetched chunks
        assert [r.key for r in first] == [(i,) for i in range(1, 451)]
        assert any(t.name == "reconcile-prefetch" for t in threading.enumerate())
        rows.close()  # what the merge does when it stops early
        assert not any(t.name == "reconcile-prefetch" for t in threading.enumerate())
        assert len(list(src.stream(ReadPlan(["id"], ["int"], ["name"], None)))) == 2500  # the pool's
    finally:  # connection is clean
        src.dispose()
