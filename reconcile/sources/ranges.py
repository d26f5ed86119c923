"""Key ranges: cut a pair into disjoint slices of the canonical key order, for fan-out.

Both sides are read ordered by the canonical key, so a range ``lo <= first key < hi``
(compared with the same collation and casts the streaming read orders by) holds the same
entities on both sides; ranges never overlap and together cover every key (the first is open
below, the last open above).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..compare import jsonable, key_part
from .sql import ReadPlan, SqlSource

__all__ = ["KeyRange", "split_ranges", "cut_ranges", "range_filter"]


@dataclass(frozen=True)
class KeyRange:
    """``lo <= first key column < hi`` (None: unbounded), by the canonical key order."""

    index: int
    lo: Any = None
    hi: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "lo": jsonable(self.lo), "hi": jsonable(self.hi)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], kind: str) -> KeyRange:
        """Rebuild a range sent as JSON; ``kind`` is the first key column's canonical kind."""
        return cls(int(data["index"]), key_part(data.get("lo"), kind), key_part(data.get("hi"), kind))

    def __str__(self) -> str:
        return f"range {self.index}: [{self.lo!r}, {self.hi!r})"


def _key_expr(src: SqlSource, table: sa.FromClause, name: str, kind: str) -> sa.ColumnElement[Any]:
    # The same expression the streaming read orders by, so range bounds and order agree.
    return src._order_expr(table.c[name], name, kind)


def split_ranges(truth: SqlSource, plan: ReadPlan, n: int) -> list[KeyRange]:
    """Up to ``n`` ranges cut at quantiles of the truth's first key column (fewer when values repeat)."""
    if n <= 1:
        return [KeyRange(0)]
    return cut_ranges(truth, plan, lambda total: [total * i // n for i in range(1, n)])


def cut_ranges(truth: SqlSource, plan: ReadPlan, offsets: Callable[[int], list[int]]) -> list[KeyRange]:
    """Ranges cut at the first key column's values at these row offsets (given the row count),
    in key order (fewer ranges when values repeat)."""
    name, kind = plan.key[0], plan.kinds[0]
    base = truth.select(plan).order_by(None).subquery("b")
    expr = _key_expr(truth, base, name, kind)
    bounds: list[Any] = []
    with truth.errors(), truth.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(base)).scalar_one()
        for offset in offsets(total):
            if offset <= 0 or offset >= total:
                continue
            value = conn.execute(sa.select(base.c[name]).order_by(expr).offset(offset).limit(1)).scalar()
            value = key_part(value, kind)
            if value is not None and (not bounds or value > bounds[-1]):
                bounds.append(value)
    edges: list[Any] = [None, *bounds, None]
    return [KeyRange(i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def range_filter(src: SqlSource, plan: ReadPlan, rng: KeyRange) -> Callable[[sa.FromClause], Any]:
    """A filter for :meth:`SqlSource.stream` keeping this side's rows inside ``rng``."""
    name, kind = plan.key[0], plan.kinds[0]

    def where(table: sa.FromClause) -> Any:
        expr = _key_expr(src, table, name, kind)
        conds = []
        if rng.lo is not None:
            conds.append(expr >= src.order_bound(rng.lo, kind))
        if rng.hi is not None:
            conds.append(expr < src.order_bound(rng.hi, kind))
        return sa.and_(sa.true(), *conds)

    return where


def covers(rng: KeyRange, key: Sequence[Any]) -> bool:
    """Whether a canonical key lies inside ``rng``."""
    first = key[0]
    return (rng.lo is None or first >= rng.lo) and (rng.hi is None or first < rng.hi)
