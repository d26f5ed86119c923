"""A keyed read on PostgreSQL looks its keys up as one array (``= ANY``); it yields exactly the
rows, in the order, that the IN lists of 1000 gave: text keys of every kind of character, keys
on neither side, int keys, an int key stored as text (cast), a query side, more keys than a
batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from reconcile.sources.sql import ReadPlan, SqlSource
from reconcile.spec import Side

pytestmark = pytest.mark.integration

TEXTS = ["a", "A", "b'quote", 'dq"x', "back\\slash", "ünï", "✓", "{x,y}", "NULL", " lead", "trail ", "z" * 30]


@pytest.fixture
def url(make_pg_db) -> Iterator[str]:  # type: ignore[no-untyped-def]
    u = make_pg_db("keys")
    with psycopg.connect(u) as conn:
        conn.execute("CREATE TABLE t_text (k varchar(40) PRIMARY KEY, v integer)")
        conn.execute("CREATE TABLE t_int (k bigint PRIMARY KEY, v integer)")
        conn.execute("CREATE TABLE t_inttext (k text PRIMARY KEY, v integer)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t_text VALUES (%s, %s)", [(t, i) for i, t in enumerate(TEXTS)])
            cur.executemany("INSERT INTO t_text VALUES (%s, %s)", [(f"k{i:05d}", i) for i in range(2500)])
            cur.executemany("INSERT INTO t_int VALUES (%s, %s)", [(i * 7 - 50, i) for i in range(2500)])
            cur.executemany("INSERT INTO t_inttext VALUES (%s, %s)", [(str(i), i) for i in range(300)])
    yield u


def read(src: SqlSource, plan: ReadPlan, keys: list[tuple[Any, ...]], arrays: bool) -> list[Any]:
    src._array_keys = lambda plan: arrays  # type: ignore[method-assign,assignment]
    return [(r.key, r.values) for r in src.stream(plan, keys=keys)]


@pytest.mark.parametrize(
    ("side", "kind", "keys"),
    [
        ({"table": "t_text"}, "text", sorted({(t,) for t in TEXTS} | {("absent",), ("k00007",)})),
        ({"table": "t_text"}, "text", sorted({(f"k{i:05d}",) for i in range(0, 2600, 2)})),
        ({"query": "SELECT k, v FROM t_text WHERE v < 100"}, "text", [(f"k{i:05d}",) for i in range(150)]),
        ({"table": "t_int"}, "int", [(i,) for i in range(-60, 17600, 3)]),
        ({"table": "t_inttext"}, "int", [(i,) for i in range(-5, 400)]),
    ],
)
def test_array_lookup_reads_what_in_lists_read(url: str, side: dict[str, str], kind: str, keys: Any) -> None:
    src = SqlSource(Side.model_validate({"url": url, **side}), "truth")
    try:
        plan = ReadPlan(key=["k"], kinds=[kind], values=["v"])
        via_in, via_array = read(src, plan, keys, arrays=False), read(src, plan, keys, arrays=True)
        assert via_array == via_in
        assert via_in, "the case reads some rows"
    finally:
        src.engine.dispose()


def test_the_array_path_is_the_one_postgresql_takes(url: str) -> None:
    src = SqlSource(Side(url=url, table="t_text"), "truth")
    try:
        assert src._array_keys(ReadPlan(key=["k"], kinds=["text"], values=["v"]))
        assert not src._array_keys(ReadPlan(key=["k", "v"], kinds=["text", "int"], values=[]))
    finally:
        src.engine.dispose()
