"""Values compared by meaning: a difference that is only a representation is never a finding."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.compare import (
    ColumnRule,
    _numbers_equal,
    json_text,
    jsonable,
    key_part,
    normalize_text,
    same_text,
    values_equal,
)
from reconcile.diff import compare_values

EXACT = ColumnRule("c")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (None, None),
        (Decimal("9.50"), 9.5),
        (Decimal("1.10"), Decimal("1.1")),
        (10, 10.0),
        (10, "10"),
        (True, 1),
        (0.1, Decimal("0.1")),
        (datetime(2026, 1, 1, 12), datetime(2026, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))),
        (datetime(2026, 1, 1, 12, tzinfo=UTC), "2026-01-01T12:00:00Z"),
        (datetime(2026, 1, 1, 12), "2026-01-01 12:00:00"),
        (date(2026, 1, 1), date(2026, 1, 1)),
        (time(12, 30, 5), timedelta(hours=12, minutes=30, seconds=5)),  # PostgreSQL / MySQL TIME
        (time(0, 0, 0, 500), "00:00:00.000500"),  # SQLite keeps TIME as text
        (timedelta(hours=100), timedelta(hours=100)),  # MySQL TIME as an interval
        ({"a": 1}, '{"a": 1}'),
        ("same", "same"),
    ],
)
def test_same_fact_different_representation(a: object, b: object) -> None:
    assert values_equal(a, b, EXACT)
    assert values_equal(b, a, EXACT)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (None, 0),
        (None, ""),
        ("", None),
        (Decimal("9.50"), 9.51),
        (1, 2),
        ("10", 11),
        (datetime(2026, 1, 1, 12), datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=1)))),
        ("abc", "ABC"),
        ("abc", "abc "),
        ("x", 1),
        (time(12, 30), timedelta(hours=12, minutes=31)),
        (time(0, 0), timedelta(days=1)),
        (time(0, 0), "midnight"),
    ],
)
def test_different_facts(a: object, b: object) -> None:
    assert not values_equal(a, b, EXACT)
    assert not values_equal(b, a, EXACT)


def test_tolerance_is_absolute_and_inclusive() -> None:
    rule = ColumnRule("price", tolerance=0.005)
    assert values_equal(Decimal("9.995"), 10.0, rule)
    assert values_equal(Decimal("10.00"), 9.996, rule)
    assert not values_equal(Decimal("10.00"), 9.99, rule)


def test_normalisers_apply_to_both_sides_in_order() -> None:
    rule = ColumnRule("title", normalize=("strip", "casefold"))
    assert values_equal("  Straße ", "STRASSE", rule)
    assert normalize_text("  a   b ", ("collapse_spaces",)) == "a b"
    assert not values_equal("a b", "ab", rule)


def test_key_parts_canonicalise_across_engines() -> None:
    assert key_part("10", "int") == key_part(10, "int") == key_part(Decimal("10"), "int") == 10
    assert key_part(Decimal("1.50"), "number") == key_part(1.5, "number")
    assert key_part("2026-01-01 12:00:00", "datetime") == key_part(
        datetime(2026, 1, 1, 12, tzinfo=UTC), "datetime"
    )
    assert key_part(7, "text") == "7"
    with pytest.raises(ValueError):
        key_part("A-1", "int")


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9))
def test_decimal_equals_its_float_and_text_forms(d: Decimal) -> None:
    assert values_equal(d, str(d), EXACT)
    assert values_equal(d, d.normalize(), EXACT)
    assert values_equal(d, float(d), ColumnRule("c", tolerance=1e-6 * max(1, abs(float(d)))))


_DECIMALS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=True),  # NaN facing a number raises either way
    st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Decimal(repr(f))),
)
_FLOATS = st.one_of(st.floats(), st.decimals(places=2, allow_nan=False, allow_infinity=False).map(float))


@given(_DECIMALS, _FLOATS, st.sampled_from([None, 0.0, 0.01, 1.0]))
def test_text_fast_path_agrees_with_the_decimal_rule(d: Decimal, f: float, tolerance: float | None) -> None:
    """A numeric column facing JSON numbers: deciding by the texts never contradicts Decimals."""
    rule = ColumnRule("x", tolerance)
    if same_text(d, f):
        assert Decimal(repr(f)) == d
    assert values_equal(d, f, rule) == _numbers_equal(d, f, rule)
    assert (compare_values((d,), (f,), [rule]) == ()) == _numbers_equal(d, f, rule)
    # The form a numeric(12,2) column hands back (9.50), facing the JSON number of the amount.
    if d.is_finite() and abs(d) < 10**12:
        q = d.quantize(Decimal("0.01"))
        assert values_equal(q, float(q), rule) == _numbers_equal(q, float(q), rule)
        assert same_text(q, float(q)) or "E" in str(q) or len(str(q).lstrip("-").replace(".", "")) > 15


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_int_keys_order_like_the_database(n: int) -> None:
    assert key_part(str(n), "int") == n
    assert (key_part(str(n), "int") < key_part(str(n + 1), "int")) is True


def test_jsonable() -> None:
    assert jsonable(Decimal("2.50")) == 2.5
    assert jsonable(Decimal("3")) == 3
    assert jsonable(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00Z"
    assert jsonable({"a": (1, Decimal("1.5"))}) == {"a": [1, 1.5]}
    assert jsonable(timedelta(hours=9, seconds=5)) == jsonable(time(9, 0, 5)) == "09:00:05"  # MySQL TIME
    assert jsonable(timedelta(hours=100)) == "4 days, 4:00:00"


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.decimals()
    | st.datetimes(timezones=st.just(UTC))
    | st.dates()
    | st.binary(max_size=8)
    | st.uuids()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@given(_VALUES, st.booleans())
def test_json_text_is_the_json_of_jsonable(value: object, sort_keys: bool) -> None:
    # the fast path (no walk in Python) and the canonical one give the same text
    want = json.dumps(jsonable(value), separators=(",", ":"), sort_keys=sort_keys)
    assert json_text(value, sort_keys=sort_keys) == want
