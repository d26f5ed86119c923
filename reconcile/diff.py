"""The diff: a streaming merge of two key-ordered row streams into findings.

Both sides arrive ordered by their canonical key (see :mod:`reconcile.compare`), so one pass
with one row of look-ahead per side classifies every entity, in memory bounded by the drift,
not by the tables:

* truth row, no projection row            -> ``missing``
* projection row(s), no truth row         -> ``orphan``
* truth row, more than one projection row -> ``duplicate``
* both, some compared column differs      -> ``mismatch`` (naming the columns)

An entity that differs but changed within the freshness ``grace`` (on either side) is
**pending**: counted, never a finding. Pure Python: no database or broker in here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .compare import ColumnRule, to_utc, values_equal
from .errors import SourceError
from .findings import Finding, FindingKind

__all__ = ["Row", "DiffOutcome", "diff_rows", "compare_values"]

Key = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Row:
    """One row of one side: canonical key, compared values (in rule order), change time."""

    key: Key
    values: tuple[Any, ...]
    changed_at: datetime | None = None


@dataclass(slots=True)
class DiffOutcome:
    """What the merge saw: findings, counts, and the verdict on watched keys."""

    findings: list[Finding] = field(default_factory=list)
    compared: int = 0
    pending: int = 0
    truth_rows: int = 0
    projection_rows: int = 0
    clean: set[Key] = field(default_factory=set)  # watched keys seen and equal
    pending_keys: set[Key] = field(default_factory=set)  # watched keys seen but pending

    def merge(self, other: DiffOutcome) -> DiffOutcome:
        """Combine the outcomes of two disjoint key ranges (used for fan-out)."""
        return DiffOutcome(
            findings=self.findings + other.findings,
            compared=self.compared + other.compared,
            pending=self.pending + other.pending,
            truth_rows=self.truth_rows + other.truth_rows,
            projection_rows=self.projection_rows + other.projection_rows,
            clean=self.clean | other.clean,
            pending_keys=self.pending_keys | other.pending_keys,
        )


def compare_values(
    truth: Sequence[Any], projection: Sequence[Any], rules: Sequence[ColumnRule]
) -> tuple[str, ...]:
    """The names of the columns whose values differ by meaning."""
    return tuple(
        r.name for r, a, b in zip(rules, truth, projection, strict=True) if not values_equal(a, b, r)
    )


class _Ordered:
    """Iterates one side and fails loudly if the stream is not ordered by key."""

    def __init__(self, rows: Iterable[Row], side: str, strict: bool, on_row: Callable[[], None] | None):
        self._it = iter(rows)
        self._side = side
        self._strict = strict
        self._last: Key | None = None
        self._on_row = on_row
        self.count = 0
        self.head: Row | None = self._next()

    def _next(self) -> Row | None:
        row = next(self._it, None)
        if row is None:
            return None
        self.count += 1
        if self._on_row is not None:
            self._on_row()
        if self._last is not None:
            try:
                out_of_order = row.key < self._last or (self._strict and row.key == self._last)
            except TypeError as e:
                raise SourceError(
                    f"{self._side}: key values of different types cannot be ordered: {e}"
                ) from None
            if out_of_order:
                if self._strict and row.key == self._last:
                    raise SourceError(
                        f"{self._side}: key {row.key!r} appears more than once; the truth key must be unique"
                    )
                raise SourceError(
                    f"{self._side}: rows are not ordered by key ({row.key!r} came after {self._last!r}); "
                    "the database's sort order differs from reconcile's (check the key columns' types)"
                )
        self._last = row.key
        return row

    def advance(self) -> None:
        self.head = self._next()


def diff_rows(
    truth: Iterable[Row],
    projection: Iterable[Row],
    rules: Sequence[ColumnRule],
    key_names: Sequence[str],
    *,
    now: datetime,
    grace: timedelta,
    watch: set[Key] | frozenset[Key] = frozenset(),
    on_row: Callable[[], None] | None = None,
    sink: Callable[[Finding], None] | None = None,
) -> DiffOutcome:
    """Merge two key-ordered streams and classify every entity.

    ``watch`` holds keys of findings still open from earlier runs: the outcome says which of
    them were seen clean (so the store can resolve them) or pending (left as they are).
    ``sink`` receives each finding instead of the outcome's list (so a caller can keep memory
    flat however much drift there is).
    """
    now = to_utc(now)
    names = [r.name for r in rules]
    out = DiffOutcome()
    t = _Ordered(truth, "truth", strict=True, on_row=on_row)
    p = _Ordered(projection, "projection", strict=False, on_row=on_row)

    def fresh(row: Row | None) -> bool:
        return row is not None and row.changed_at is not None and now - to_utc(row.changed_at) < grace

    def as_dict(values: Sequence[Any]) -> dict[str, Any]:
        return dict(zip(names, values, strict=True))

    for key, trow, prows in _groups(t, p):
        out.compared += 1
        watched = key in watch
        finding: Finding | None = None
        keyd = dict(zip(key_names, key, strict=True))
        if trow is None:
            finding = Finding(FindingKind.ORPHAN, keyd, projection=as_dict(prows[0].values))
        elif not prows:
            finding = Finding(FindingKind.MISSING, keyd, truth=as_dict(trow.values))
        elif len(prows) > 1:
            # The copies' order is the database's whim: report a fixed one (sorted by value text).
            prows.sort(key=lambda r: repr(r.values))
            diff_cols = compare_values(trow.values, prows[0].values, rules)
            finding = Finding(
                FindingKind.DUPLICATE,
                keyd,
                columns=diff_cols,
                truth=as_dict(trow.values),
                projection=as_dict(prows[0].values),
                copies=len(prows),
            )
        else:
            diff_cols = compare_values(trow.values, prows[0].values, rules)
            if diff_cols:
                finding = Finding(
                    FindingKind.MISMATCH,
                    keyd,
                    columns=diff_cols,
                    truth=as_dict(trow.values),
                    projection=as_dict(prows[0].values),
                )
        if finding is None:
            if watched:
                out.clean.add(key)
            continue
        if finding.kind is not FindingKind.DUPLICATE and (fresh(trow) or any(fresh(r) for r in prows)):
            out.pending += 1
            if watched:
                out.pending_keys.add(key)
            continue
        if sink is not None:
            sink(finding)
        else:
            out.findings.append(finding)
    out.truth_rows, out.projection_rows = t.count, p.count
    return out


def _groups(t: _Ordered, p: _Ordered) -> Iterator[tuple[Key, Row | None, list[Row]]]:
    """Yield (key, truth row or None, projection rows with that key) in key order."""
    while t.head is not None or p.head is not None:
        if p.head is None or (t.head is not None and t.head.key < p.head.key):
            assert t.head is not None
            yield t.head.key, t.head, []
            t.advance()
            continue
        key = p.head.key
        prows: list[Row] = []
        while p.head is not None and p.head.key == key:
            prows.append(p.head)
            p.advance()
        trow = None
        if t.head is not None and t.head.key == key:
            trow = t.head
            t.advance()
        yield key, trow, prows
