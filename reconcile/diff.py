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
from decimal import Decimal
from typing import Any, NamedTuple

from .compare import ColumnRule, same_text, to_utc, values_equal
from .errors import SourceError
from .findings import Finding, FindingKind
from .gcpause import fewer_collections

__all__ = ["Row", "DiffOutcome", "diff_rows", "compare_values"]

Key = tuple[Any, ...]


class Row(NamedTuple):
    """One row of one side: canonical key, compared values (in rule order), change time.

    A named tuple, not a frozen dataclass: a run makes one per row of each side, and a tuple
    is made three times faster (a frozen dataclass sets each field through ``object.__setattr__``).
    """

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
    differ: tuple[str, ...] = ()
    for r, a, b in zip(rules, truth, projection, strict=True):
        t = a.__class__
        if t is b.__class__:
            if a == b:
                continue
        elif t is Decimal and b.__class__ is float and same_text(a, b):  # numeric facing JSON
            continue
        if not values_equal(a, b, r):
            differ += (r.name,)
    return differ


class _Ordered:
    """One side's rows, checked on the way: a stream not ordered by key fails loudly.

    A generator (one resume per row is the cheapest way Python has to hand rows over) that
    counts the rows it handed out in :attr:`count`.
    """

    def __init__(self, rows: Iterable[Row], side: str, strict: bool, on_row: Callable[[], None] | None):
        self._side = side
        self._strict = strict
        self.count = 0
        self.rows: Iterator[Row] = self._checked(iter(rows), on_row)

    def _checked(self, rows: Iterator[Row], on_row: Callable[[], None] | None) -> Iterator[Row]:
        strict = self._strict
        last: Key | None = None
        n = 0
        try:
            for row in rows:
                n += 1
                if on_row is not None:
                    on_row()
                key = row.key
                if last is not None:
                    try:
                        # One comparison per row: strictly increasing (truth), or never decreasing.
                        bad = not last < key if strict else key < last
                    except TypeError as e:
                        raise SourceError(
                            f"{self._side}: key values of different types cannot be ordered: {e}"
                        ) from None
                    if bad:
                        self._refuse(key, last)
                last = key
                yield row
        finally:
            self.count = n

    def _refuse(self, key: Key, last: Key) -> None:
        if self._strict and key == last:
            raise SourceError(
                f"{self._side}: key {key!r} appears more than once; the truth key must be unique"
            )
        raise SourceError(
            f"{self._side}: rows are not ordered by key ({key!r} came after {last!r}); "
            "the database's sort order differs from reconcile's (check the key columns' types)"
        )


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
    with fewer_collections():  # a row per side per entity, none of them in a cycle
        return _merge(truth, projection, rules, key_names, now, grace, watch, on_row, sink)


def _merge(
    truth: Iterable[Row],
    projection: Iterable[Row],
    rules: Sequence[ColumnRule],
    key_names: Sequence[str],
    now: datetime,
    grace: timedelta,
    watch: set[Key] | frozenset[Key],
    on_row: Callable[[], None] | None,
    sink: Callable[[Finding], None] | None,
) -> DiffOutcome:
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
        if trow is not None and len(prows) == 1:  # the common case: one row each side
            diff_cols = compare_values(trow.values, prows[0].values, rules)
            if not diff_cols:
                if watched:
                    out.clean.add(key)
                continue
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
        else:  # one row each side, and they differ (diff_cols from above)
            finding = Finding(
                FindingKind.MISMATCH,
                keyd,
                columns=diff_cols,
                truth=as_dict(trow.values),
                projection=as_dict(prows[0].values),
            )
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
    trows, prows_ = t.rows, p.rows
    th, ph = next(trows, None), next(prows_, None)
    while th is not None or ph is not None:
        if ph is None or (th is not None and th.key < ph.key):
            assert th is not None
            yield th.key, th, []
            th = next(trows, None)
            continue
        key = ph.key
        prows: list[Row] = [ph]
        ph = next(prows_, None)
        while ph is not None and ph.key == key:
            prows.append(ph)
            ph = next(prows_, None)
        trow = None
        if th is not None and th.key == key:
            trow = th
            th = next(trows, None)
        yield key, trow, prows
