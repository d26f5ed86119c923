"""Fan-out: split a large audit into independent key ranges, diff each, record one merged run.

Both sides are read ordered by the canonical key, so a range ``lo <= first key < hi`` (compared
with the same collation and casts the streaming read orders by) holds the same entities on both
sides; ranges never overlap and together cover every key (the first is open below, the last
open above). Each range can run on a different worker (Airflow maps a task over them); their
:class:`~reconcile.diff.DiffOutcome` values travel as JSON and merge into one run that equals a
single-pass audit of the whole table.

    ranges = split(spec, 8)                      # boundaries: quantiles of the truth key
    parts = [diff_range(spec, store, r) for r in ranges]   # anywhere, in any order
    result = record(spec, store, parts, started_at=...)    # one run in the audit store
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .app import Pair, open_pair
from .compare import jsonable, key_part
from .diff import DiffOutcome, diff_rows
from .findings import Finding, FindingKind, RunResult, Summary
from .sources.sql import SqlSource
from .spec import Spec
from .store import AuditStore

__all__ = [
    "KeyRange",
    "split",
    "diff_range",
    "record",
    "audit_fanout",
    "outcome_to_dict",
    "outcome_from_dict",
]


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


def split(
    spec: Spec, n: int, *, truth_url: str | None = None, projection_url: str | None = None
) -> list[KeyRange]:
    """Up to ``n`` ranges cut at quantiles of the truth's first key column (fewer when values repeat)."""
    pair = open_pair(spec, truth_url=truth_url, projection_url=projection_url)
    try:
        return _split(pair, max(1, n))
    finally:
        pair.close()


def _split(pair: Pair, n: int) -> list[KeyRange]:
    if n == 1:
        return [KeyRange(0)]
    truth = pair.truth
    name, kind = pair.spec.key_truth[0], pair.kinds[0]
    tplan, _ = pair.plans()
    base = truth.select(tplan).order_by(None).subquery("b")
    expr = _key_expr(truth, base, name, kind)
    bounds: list[Any] = []
    with truth.errors(), truth.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(base)).scalar_one()
        for i in range(1, n):
            offset = total * i // n
            if offset <= 0 or offset >= total:
                continue
            value = conn.execute(sa.select(base.c[name]).order_by(expr).offset(offset).limit(1)).scalar()
            value = key_part(value, kind)
            if value is not None and (not bounds or value > bounds[-1]):
                bounds.append(value)
    edges: list[Any] = [None, *bounds, None]
    return [KeyRange(i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def _range_filter(src: SqlSource, name: str, kind: str, rng: KeyRange) -> Any:
    def where(table: sa.FromClause) -> Any:
        expr = _key_expr(src, table, name, kind)
        conds = []
        if rng.lo is not None:
            conds.append(expr >= rng.lo)
        if rng.hi is not None:
            conds.append(expr < rng.hi)
        return sa.and_(sa.true(), *conds)

    return where


def _watch(store: AuditStore, spec: Spec, kinds: Sequence[str]) -> dict[tuple[Any, ...], str]:
    names = spec.key_truth
    return {
        tuple(key_part(f.key.get(n), k) for n, k in zip(names, kinds, strict=True)): f.key_id
        for f in store.active_findings(spec.name)
    }


def diff_range(
    spec: Spec,
    store: AuditStore,
    rng: KeyRange,
    *,
    now: datetime | None = None,
    truth_url: str | None = None,
    projection_url: str | None = None,
) -> DiffOutcome:
    """Diff one key range. Reads the store (open findings to watch) but writes nothing."""
    pair = open_pair(spec, truth_url=truth_url, projection_url=projection_url)
    try:
        tplan, pplan = pair.plans()
        kind = pair.kinds[0]
        watch = set(_watch(store, spec, pair.kinds))
        return diff_rows(
            pair.truth.stream(tplan, extra_filter=_range_filter(pair.truth, spec.key_truth[0], kind, rng)),
            pair.projection.stream(
                pplan, extra_filter=_range_filter(pair.projection, spec.key_projection[0], kind, rng)
            ),
            pair.rules,
            spec.key_truth,
            now=now or datetime.now(UTC),
            grace=spec.freshness.grace,
            watch=watch,
        )
    finally:
        pair.close()


def record(
    spec: Spec,
    store: AuditStore,
    parts: Sequence[DiffOutcome],
    *,
    started_at: datetime,
    kinds: Sequence[str],
    ranges: int | None = None,
) -> RunResult:
    """Merge the outcomes of disjoint ranges covering every key and store them as one run."""
    outcome = DiffOutcome()
    for part in parts:
        outcome = outcome.merge(part)
    watch = _watch(store, spec, kinds)
    clean = {watch[k] for k in outcome.clean if k in watch}
    pending = {watch[k] for k in outcome.pending_keys if k in watch}
    summary = Summary(
        compared=outcome.compared,
        pending=outcome.pending,
        truth_rows=outcome.truth_rows,
        projection_rows=outcome.projection_rows,
    )
    run_id = str(uuid.uuid4())
    scope: dict[str, Any] = {"keys": None, "where": None, "ranges": ranges or len(parts)}
    finished = datetime.now(UTC)
    confirmed, unconfirmed = store.record_run(
        run_id=run_id,
        spec=spec.name,
        started_at=started_at,
        finished_at=finished,
        strategy="fanout",
        scope=scope,
        summary=summary,
        seen=outcome.findings,  # ranges arrive in key order: same order as one pass
        clean=clean,
        pending=pending,
        resolve_unseen=True,
        confirm_runs=spec.freshness.confirm_runs,
    )
    return RunResult(
        run_id=run_id,
        spec=spec.name,
        started_at=started_at,
        finished_at=finished,
        summary=summary,
        findings=confirmed,
        unconfirmed=unconfirmed,
        scope=scope,
        strategy="fanout",
    )


def key_kinds(spec: Spec, *, truth_url: str | None = None, projection_url: str | None = None) -> list[str]:
    """The canonical kind of each key column (decided from both sides' types)."""
    pair = open_pair(spec, truth_url=truth_url, projection_url=projection_url)
    try:
        return list(pair.kinds)
    finally:
        pair.close()


def audit_fanout(
    spec: Spec,
    store: AuditStore,
    n: int,
    *,
    truth_url: str | None = None,
    projection_url: str | None = None,
) -> RunResult:
    """Split, diff every range in turn and record one run (what the Airflow fan-out does, in-process)."""
    started = datetime.now(UTC)
    urls = {"truth_url": truth_url, "projection_url": projection_url}
    pair = open_pair(spec, **urls)
    try:
        ranges, kinds = _split(pair, max(1, n)), list(pair.kinds)
    finally:
        pair.close()
    parts = [diff_range(spec, store, r, now=started, **urls) for r in ranges]
    return record(spec, store, parts, started_at=started, kinds=kinds, ranges=len(ranges))


# -- transport (XCom) ----------------------------------------------------------------------
def outcome_to_dict(outcome: DiffOutcome, kinds: Sequence[str]) -> dict[str, Any]:
    """A JSON form of one range's outcome, for passing between workers."""
    return {
        "kinds": list(kinds),
        "findings": [
            {
                "kind": f.kind.value,
                "key": jsonable(f.key),
                "columns": list(f.columns),
                "truth": jsonable(f.truth),
                "projection": jsonable(f.projection),
                "copies": f.copies,
            }
            for f in outcome.findings
        ],
        "compared": outcome.compared,
        "pending": outcome.pending,
        "truth_rows": outcome.truth_rows,
        "projection_rows": outcome.projection_rows,
        "clean": [jsonable(list(k)) for k in outcome.clean],
        "pending_keys": [jsonable(list(k)) for k in outcome.pending_keys],
    }


def outcome_from_dict(data: dict[str, Any], names: Sequence[str]) -> DiffOutcome:
    """Rebuild an outcome from :func:`outcome_to_dict`; keys become canonical tuples again."""
    kinds = data["kinds"]

    def canon(values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(key_part(v, k) for v, k in zip(values, kinds, strict=True))

    findings = [
        Finding(
            FindingKind(f["kind"]),
            dict(zip(names, canon([f["key"][n] for n in names]), strict=True)),
            columns=tuple(f["columns"]),
            truth=f["truth"],
            projection=f["projection"],
            copies=int(f["copies"]),
        )
        for f in data["findings"]
    ]
    return DiffOutcome(
        findings=findings,
        compared=int(data["compared"]),
        pending=int(data["pending"]),
        truth_rows=int(data["truth_rows"]),
        projection_rows=int(data["projection_rows"]),
        clean={canon(k) for k in data["clean"]},
        pending_keys={canon(k) for k in data["pending_keys"]},
    )
