"""Row filters (``--where``, a side's ``where:``) parsed, checked and rebuilt — never pasted as SQL.

A filter is user input that ends up inside a query on somebody's production database, so it is
parsed with a SQL parser (sqlglot) and accepted only when it is **one boolean expression** made
of the spec's columns, literals, comparisons (``= <> < <= > >=``, ``BETWEEN``, ``IN (...)``
literals, ``LIKE``, ``IS [NOT] NULL``), ``AND`` / ``OR`` / ``NOT``, arithmetic, the functions
of :data:`FUNCTIONS` and the current time (``now()``, ``current_timestamp``, ``current_date``,
optionally minus or plus an ``interval '24 hours'``: a window such as
``created_at > now() - interval '24 hours'``). The current time is taken once, in Python, when
the filter is built, and bound as a value, so every database reads the same instant.

Anything else — a second statement, a subquery, a cast, any other function (``nextval``,
``pg_sleep``...), a qualified or unknown column — is refused with one line naming what and why.

An accepted filter is rebuilt as a SQLAlchemy expression over one side's columns (with that
side's names, quoted by its dialect) and its literals become bound parameters, so it cannot
escape its parentheses whatever it contains.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from .errors import SpecError

__all__ = ["Filter", "parse_filter", "FUNCTIONS"]

FUNCTIONS = ("lower", "upper", "length", "abs", "coalesce", "trim")


@dataclass(frozen=True)
class Filter:
    """A checked filter: its text, parse tree and the column names it uses (as written)."""

    text: str
    tree: Any  # sqlglot.exp.Expression
    columns: frozenset[str]

    def to_sql(
        self, column: Callable[[str], sa.ColumnElement[Any]], *, literal: bool = False
    ) -> sa.ColumnElement[bool]:
        """The filter over the columns ``column(name)`` returns. ``literal`` types the literals
        so the statement can be compiled with ``literal_binds`` (for tools that take SQL text)."""
        return sa.and_(_build(self.tree, column, literal))


def _origin_error(origin: str, text: str, why: str) -> SpecError:
    shown = text if len(text) <= 120 else text[:117] + "..."
    return SpecError(f"{origin}: {why} (in {shown!r}); a filter is one boolean expression over the columns")


@lru_cache(maxsize=256)
def _parse(text: str) -> Any:
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    try:
        trees = [t for t in sqlglot.parse(text) if t is not None]
    except (ParseError, TokenError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "cannot parse"
        raise ValueError(f"not valid SQL: {first}") from None
    if len(trees) != 1:
        raise ValueError(f"{len(trees)} statements; only one expression is allowed")
    return trees[0]


def parse_filter(text: str, *, origin: str = "--where", columns: Collection[str] | None = None) -> Filter:
    """Parse and check a filter; raise SpecError naming ``origin`` when it is not acceptable.

    ``columns`` are the names it may use (None: any plain column name — checked later, when the
    side's columns are known).
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{origin}: an empty filter (leave it out to read every row)")
    try:
        tree = _parse(text)
        used: set[str] = set()
        _check(tree, used, top=True)
    except ValueError as e:
        raise _origin_error(origin, text, str(e)) from None
    if columns is not None:
        have = list(columns)
        for name in sorted(used):
            if _resolve(name, have) is None:
                near = difflib.get_close_matches(name, have, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise _origin_error(
                    origin, text, f"unknown column {name!r}{hint}; allowed: {', '.join(have) or 'none'}"
                )
    return Filter(text, tree, frozenset(used))


def resolve_column(name: str, columns: Collection[str]) -> str | None:
    """The column ``name`` means: the same name, else the one that differs only in case."""
    return _resolve(name, list(columns))


def _resolve(name: str, have: list[str]) -> str | None:
    if name in have:
        return name
    folded = [c for c in have if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


# -- checking -------------------------------------------------------------------------------
def _types() -> dict[str, Any]:
    from sqlglot import exp

    return {
        "bool_ops": (exp.And, exp.Or),
        "compare": (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE),
        "arith": (exp.Add, exp.Sub, exp.Mul, exp.Div),
        "functions": {exp.Lower: "lower", exp.Upper: "upper", exp.Length: "length", exp.Abs: "abs"},
    }


def _name(node: Any) -> str:
    key = getattr(node, "key", type(node).__name__)
    return str(key).upper()


def _check(node: Any, used: set[str], *, top: bool = False) -> None:
    """Raise ValueError unless ``node`` is an allowed (boolean, when ``top``) expression."""
    from sqlglot import exp

    t: dict[str, Any] = _types()
    if top and not _is_boolean(node):
        raise ValueError("it is not a condition (compare a column with something)")
    if isinstance(node, t["bool_ops"]):
        _check(node.this, used, top=True)
        _check(node.expression, used, top=True)
    elif isinstance(node, exp.Not):
        _check(node.this, used, top=True)
    elif isinstance(node, exp.Paren):
        _check(node.this, used, top=top)
    elif isinstance(node, t["compare"] + (exp.Like, exp.ILike)):
        _check_value(node.this, used)
        _check_value(node.expression, used)
    elif isinstance(node, exp.Is):
        _check_value(node.this, used)
        if not isinstance(node.expression, exp.Null | exp.Boolean):
            raise ValueError("IS takes only NULL, TRUE or FALSE")
    elif isinstance(node, exp.Between):
        for part in (node.this, node.args.get("low"), node.args.get("high")):
            _check_value(part, used)
    elif isinstance(node, exp.In):
        if any(node.args.get(k) for k in ("query", "unnest", "field")):
            raise ValueError("IN takes a list of values, not a subquery")
        _check_value(node.this, used)
        for v in node.expressions:
            _check_value(v, used)
    elif isinstance(node, exp.Boolean):
        return
    else:
        _check_value(node, used)


def _is_boolean(node: Any) -> bool:
    from sqlglot import exp

    t = _types()
    if isinstance(node, exp.Paren):
        return _is_boolean(node.this)
    return isinstance(
        node,
        t["bool_ops"]
        + t["compare"]
        + (exp.Not, exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Boolean),
    )


def _check_value(node: Any, used: set[str]) -> None:
    from sqlglot import exp

    t: dict[str, Any] = _types()
    if node is None:
        raise ValueError("an incomplete expression")
    if _is_time(node):
        _time_value(node)  # raises ValueError for an interval it cannot read
        return
    if isinstance(node, exp.Interval):
        raise ValueError("an interval can only be added to or subtracted from now() or current_date")
    if isinstance(node, exp.Column):
        if node.args.get("table") or node.args.get("db") or node.args.get("catalog"):
            raise ValueError(f"column {node.sql()} is qualified; write the bare column name")
        if not isinstance(node.this, exp.Identifier):
            raise ValueError(f"{node.sql()} is not a column name")
        used.add(node.this.this)
    elif isinstance(node, exp.Literal | exp.Null | exp.Boolean):
        return
    elif isinstance(node, exp.Neg | exp.Paren):
        _check_value(node.this, used)
    elif isinstance(node, t["arith"]):
        _check_value(node.this, used)
        _check_value(node.expression, used)
    elif isinstance(node, tuple(t["functions"])):
        _check_value(getattr(node, "this"), used)  # noqa: B009
    elif isinstance(node, exp.Coalesce):
        _check_value(node.this, used)
        for v in node.expressions:
            _check_value(v, used)
    elif isinstance(node, exp.Trim) and not node.args.get("expression") and not node.args.get("position"):
        _check_value(node.this, used)
    elif isinstance(node, exp.Subquery | exp.Select | exp.Query):
        raise ValueError("subqueries are not allowed")
    elif isinstance(node, exp.Cast | exp.TryCast):
        raise ValueError("casts are not allowed")
    elif isinstance(node, exp.Func):
        fname = node.sql_name() if hasattr(node, "sql_name") else _name(node)
        if isinstance(node, exp.Anonymous):
            fname = str(node.this)
        raise ValueError(f"function {fname.lower()}() is not allowed (allowed: {', '.join(FUNCTIONS)})")
    elif _is_boolean(node):
        _check(node, used, top=True)
    else:
        raise ValueError(f"{_name(node)} is not allowed in a filter")


# -- building -------------------------------------------------------------------------------
def _literal(node: Any, literal: bool) -> sa.ColumnElement[Any]:
    from sqlglot import exp

    if isinstance(node, exp.Null):
        return sa.null()
    if isinstance(node, exp.Boolean):
        return sa.true() if node.this else sa.false()
    text = str(node.this)
    if node.is_string:
        # Untyped when bound: the database reads it as the type the other side of the
        # comparison needs (a timestamp, a number...). Typed only when rendered as text.
        return sa.literal(text, sa.String() if literal else sa.types.NullType())
    try:
        return sa.literal(int(text), sa.Integer() if literal else sa.types.NullType())
    except ValueError:
        return sa.literal(Decimal(text), sa.Numeric())


def _build(node: Any, column: Callable[[str], sa.ColumnElement[Any]], literal: bool) -> Any:
    from sqlglot import exp

    def b(n: Any) -> Any:
        return _build(n, column, literal)

    if isinstance(node, exp.And):
        return sa.and_(b(node.this), b(node.expression))
    if isinstance(node, exp.Or):
        return sa.or_(b(node.this), b(node.expression))
    if isinstance(node, exp.Not):
        return sa.not_(b(node.this))
    if _is_time(node):
        value = _time_value(node)
        if literal:
            return sa.literal(value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat())
        return sa.literal(value, sa.DateTime(timezone=True) if isinstance(value, datetime) else sa.Date())
    if isinstance(node, exp.Paren):
        inner = b(node.this)
        return inner.self_group() if hasattr(inner, "self_group") else inner
    ops: Mapping[type, Callable[[Any, Any], Any]] = {
        exp.EQ: lambda a, c: a == c,
        exp.NEQ: lambda a, c: a != c,
        exp.GT: lambda a, c: a > c,
        exp.GTE: lambda a, c: a >= c,
        exp.LT: lambda a, c: a < c,
        exp.LTE: lambda a, c: a <= c,
        exp.Add: lambda a, c: a + c,
        exp.Sub: lambda a, c: a - c,
        exp.Mul: lambda a, c: a * c,
        exp.Div: lambda a, c: a / c,
        exp.Like: lambda a, c: a.like(c),
        exp.ILike: lambda a, c: a.ilike(c),
    }
    for kind, op in ops.items():
        if type(node) is kind:
            return op(b(getattr(node, "this")), b(getattr(node, "expression")))  # noqa: B009
    if isinstance(node, exp.Is):
        target = b(node.this)
        if isinstance(node.expression, exp.Null):
            return target.is_(None)
        return target.is_(sa.true() if node.expression.this else sa.false())
    if isinstance(node, exp.Between):
        return b(node.this).between(b(node.args["low"]), b(node.args["high"]))
    if isinstance(node, exp.In):
        return b(node.this).in_([b(v) for v in node.expressions])
    if isinstance(node, exp.Column):
        return column(node.this.this)
    if isinstance(node, exp.Literal | exp.Null | exp.Boolean):
        return _literal(node, literal)
    if isinstance(node, exp.Neg):
        return -b(node.this)
    if isinstance(node, exp.Coalesce):
        return sa.func.coalesce(b(node.this), *[b(v) for v in node.expressions])
    if isinstance(node, exp.Trim):
        return sa.func.trim(b(node.this))
    names = {exp.Lower: "lower", exp.Upper: "upper", exp.Length: "length", exp.Abs: "abs"}
    for kind, fname in names.items():
        if isinstance(node, kind):
            return getattr(sa.func, fname)(b(node.this))
    raise SpecError(f"filter: {_name(node)} cannot be built")  # unreachable after _check


# -- the current time -----------------------------------------------------------------------
_UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
}


def _is_now(node: Any) -> bool:
    from sqlglot import exp

    if isinstance(node, exp.Paren):
        return _is_now(node.this)
    if isinstance(node, exp.CurrentTimestamp | exp.CurrentDate):
        return True
    return isinstance(node, exp.Anonymous) and str(node.this).lower() == "now" and not node.expressions


def _is_time(node: Any) -> bool:
    """``now()`` / ``current_timestamp`` / ``current_date``, or one of them ± intervals."""
    from sqlglot import exp

    if _is_now(node):
        return True
    if isinstance(node, exp.Add | exp.Sub) and isinstance(node.expression, exp.Interval):
        return _is_time(node.this)
    return False


def _interval(node: Any) -> timedelta:
    """``interval '24 hours'``, ``interval '1' day``, ``interval 90 minute``..."""
    text = str(node.this.this if node.this is not None else "").strip()
    unit = str(node.args["unit"].this if node.args.get("unit") is not None else "").strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", text)
    if not m:
        raise ValueError(f"interval {text!r}: expected a number and a unit, such as '24 hours'")
    amount, word = float(m.group(1)), (unit or m.group(2)).lower().removesuffix("s")
    if word not in _UNITS:
        raise ValueError(f"interval unit {word or '(none)'!r} is not one of {', '.join(_UNITS)}")
    return timedelta(seconds=amount * _UNITS[word])


def _time_value(node: Any, now: datetime | None = None) -> datetime | date:
    from sqlglot import exp

    now = now or datetime.now(UTC)
    if isinstance(node, exp.Paren):
        return _time_value(node.this, now)
    if isinstance(node, exp.CurrentDate):
        return now.date()
    if _is_now(node):
        return now
    base = _time_value(node.this, now)
    step = _interval(node.expression)
    return base + step if isinstance(node, exp.Add) else base - step
