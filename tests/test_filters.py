"""Filters are parsed and rebuilt, never pasted: what is accepted, what is refused, and why."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from reconcile.errors import SpecError
from reconcile.filters import parse_filter

COLUMNS = ["sku", "on_hand", "title"]


@pytest.mark.parametrize(
    "text",
    [
        "sku = 'W1:A-1'",
        "on_hand BETWEEN 1 AND 5 AND sku IN ('a', 'b')",
        "lower(title) LIKE 'a%' OR title IS NULL",
        "NOT (on_hand <> 3) AND title IS NOT NULL",
        "length(sku) > coalesce(on_hand, 0) + 1",
        "on_hand >= -1.5",
        "SKU = 'a'",
    ],
)
def test_accepted(text: str) -> None:
    f = parse_filter(text, columns=COLUMNS)
    t = sa.table("t", *[sa.column(c) for c in COLUMNS])
    sql = str(sa.select(t).where(f.to_sql(lambda n: t.c[n.lower()])).compile())
    assert "WHERE" in sql and "'" not in sql.split("WHERE", 1)[1]  # every literal is a bound parameter


@pytest.mark.parametrize(
    "text, why",
    [
        ("1=1) OR (1=1", "not valid SQL"),
        ("sku = 'a'; DROP TABLE t", "2 statements"),
        ("nextval('s') > 0", "function nextval() is not allowed"),
        ("pg_sleep(10) IS NULL", "function pg_sleep() is not allowed"),
        ("CAST((SELECT string_agg(v, ',') FROM secrets) AS int) > 0", "casts are not allowed"),
        ("on_hand > (SELECT count(*) FROM secrets)", "subqueries are not allowed"),
        ("sku IN (SELECT v FROM secrets)", "not a subquery"),
        ("sku", "not a condition"),
        ("1", "not a condition"),
        ("t.sku = 'a'", "qualified"),
        ("skuu = 'a'", "unknown column 'skuu' (did you mean 'sku'?)"),
        ("", "empty filter"),
    ],
)
def test_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_filter(text, columns=COLUMNS)
    assert why in str(e.value) and str(e.value).startswith("--where: ")
    assert "\n" not in str(e.value)


def test_literal_rendering_escapes_quotes() -> None:
    f = parse_filter("title = 'it''s' OR title = 'x'')--'", columns=COLUMNS)
    t = sa.table("t", *[sa.column(c) for c in COLUMNS])
    stmt = sa.select(t).where(f.to_sql(lambda n: t.c[n], literal=True))
    sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    assert "t.title = 'it''s' OR t.title = 'x'')--'" in sql


@pytest.mark.parametrize(
    "text, why",
    [
        ("title > on_hand - interval '1 day'", "an interval can only be added to or subtracted from now"),
        ("title > now() - interval 'soon'", "expected a number and a unit"),
        ("title > now() - interval '3 fortnights'", "interval unit 'fortnight'"),
        ("title > now(1)", r"function now\(\) is not allowed"),
    ],
)
def test_time_windows_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        parse_filter(text, columns=COLUMNS)


def test_a_time_window_selects_the_recent_rows_on_a_real_database(tmp_path: object) -> None:
    from datetime import UTC, datetime, timedelta

    engine = sa.create_engine("sqlite://")
    meta = sa.MetaData()
    t = sa.Table("t", meta, sa.Column("id", sa.Integer), sa.Column("created_at", sa.DateTime))
    meta.create_all(engine)
    now = datetime.now(UTC).replace(tzinfo=None)
    ages = {1: timedelta(days=3), 2: timedelta(hours=25), 3: timedelta(hours=23), 4: timedelta(minutes=1)}
    with engine.begin() as c:
        c.execute(t.insert(), [{"id": i, "created_at": now - age} for i, age in ages.items()])
    for text, want in [
        ("created_at > now() - interval '24 hours'", [3, 4]),
        ("created_at > current_timestamp - interval 2 day", [2, 3, 4]),
        ("created_at <= now() - interval '1' hour AND id > 1", [2, 3]),
    ]:
        f = parse_filter(text, columns=["id", "created_at"])
        with engine.connect() as c:
            got = c.execute(sa.select(t.c.id).where(f.to_sql(lambda n: t.c[n])).order_by(t.c.id)).scalars()
            assert list(got) == want, text
