"""The use cases: validate, audit (and, in :mod:`reconcile.heal`, correct, relay, verify, run).

Each function takes a :class:`~reconcile.spec.Spec` and an
:class:`~reconcile.store.AuditStore`, does one job, and returns a value. The CLI and the
Airflow DAGs are thin shells over these functions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .compare import ColumnRule, key_part
from .diff import DiffOutcome, diff_rows
from .errors import SpecError
from .findings import RunResult, Summary
from .sources.sql import ReadPlan, SqlSource, key_kind
from .spec import Spec
from .store import AuditStore

__all__ = ["Pair", "open_pair", "validate", "audit", "parse_keys", "STRATEGIES"]

STRATEGIES = ("auto", "stream", "checksum")


@dataclass
class Pair:
    """Both sides of a spec, opened and checked against the spec's names."""

    spec: Spec
    truth: SqlSource
    projection: SqlSource
    kinds: list[str]
    rules: list[ColumnRule]

    def plans(self) -> tuple[ReadPlan, ReadPlan]:
        s = self.spec
        t = ReadPlan(s.key_truth, self.kinds, list(s.columns), s.freshness.truth_column)
        p = ReadPlan(
            s.key_projection,
            self.kinds,
            [s.projection_name(c) for c in s.columns],
            s.freshness.projection_column,
        )
        return t, p

    def close(self) -> None:
        self.truth.dispose()
        self.projection.dispose()


def open_pair(spec: Spec, *, truth_url: str | None = None, projection_url: str | None = None) -> Pair:
    """Connect to both sides and check that every table and column the spec names exists.

    Raises SpecError (a name that does not exist, with the spec field) or SourceError
    (a database that cannot be reached). Reads nothing but the catalogs.
    """
    where = spec.label
    truth = SqlSource(spec.truth, "truth", truth_url)
    projection = SqlSource(spec.projection, "projection", projection_url)
    try:
        for src in (truth, projection):
            try:
                src.columns()
            except SpecError as e:
                raise SpecError(str(e).replace("spec:", f"spec {where}:", 1)) from None
        checks: list[tuple[SqlSource, str, list[str]]] = [
            (truth, "key", spec.key_truth),
            (projection, "key", spec.key_projection),
        ]
        for name, col in spec.columns.items():
            checks.append((truth, f"columns.{name}", [name]))
            field = f"columns.{name}.projection" if col.projection else f"columns.{name}"
            checks.append((projection, field, [spec.projection_name(name)]))
        if spec.freshness.truth_column:
            checks.append((truth, "freshness.truth_column", [spec.freshness.truth_column]))
        if spec.freshness.projection_column:
            checks.append((projection, "freshness.projection_column", [spec.freshness.projection_column]))
        for src, field, names in checks:
            try:
                src.require(field, names)
            except SpecError as e:
                raise SpecError(str(e).replace("spec:", f"spec {where}:", 1)) from None
        tcols, pcols = truth.columns(), projection.columns()
        kinds = [key_kind(tcols.get(k.truth), pcols.get(k.projection)) for k in spec.key]
        rules = [ColumnRule(n, c.tolerance, tuple(c.normalize)) for n, c in spec.columns.items()]
        return Pair(spec, truth, projection, kinds, rules)
    except BaseException:
        truth.dispose()
        projection.dispose()
        raise


def validate(spec: Spec, **urls: str | None) -> dict[str, Any]:
    """Check a spec against both databases without auditing; describe what would be compared."""
    pair = open_pair(spec, **urls)
    try:
        return {
            "spec": spec.name,
            "truth": spec.truth.display,
            "projection": spec.projection.display,
            "key": [
                {"truth": k.truth, "projection": k.projection, "kind": kind}
                for k, kind in zip(spec.key, pair.kinds, strict=True)
            ],
            "columns": {n: spec.projection_name(n) for n in spec.columns},
        }
    finally:
        pair.close()


def parse_keys(value: str | Sequence[Any] | None, spec: Spec) -> list[tuple[Any, ...]] | None:
    """Entity keys from ``--keys``: a file (one key per line) or a comma-separated list.

    A composite key is written with ``:`` between its parts in key order (``W1:A-1``), or as a
    JSON object by truth names (``{"warehouse": "W1", "sku": "A-1"}``); a file may hold JSON lines.
    """
    if value is None:
        return None
    names = spec.key_truth
    items: list[Any]
    if isinstance(value, str):
        path = Path(value)
        if value.lstrip().startswith("[") and not path.exists():
            items = json.loads(value)
        elif path.is_file():
            items = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            items = [ln for ln in items if ln and not ln.startswith("#")]
        else:
            items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = list(value)
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, str) and item.startswith("{"):
            item = json.loads(item)
        if isinstance(item, dict):
            missing = [n for n in names if n not in item]
            if missing:
                raise SpecError(f"--keys: key {item} lacks {missing} (the key is {names})")
            out.append(tuple(item[n] for n in names))
        elif isinstance(item, list | tuple):
            out.append(tuple(item))
        else:
            parts = str(item).split(":", len(names) - 1) if len(names) > 1 else [item]
            if len(parts) != len(names):
                raise SpecError(
                    f"--keys: {item!r} has {len(parts)} part(s); the key {names} has {len(names)}"
                )
            out.append(tuple(parts))
    return out


def _canonical(keys: Sequence[tuple[Any, ...]], kinds: Sequence[str]) -> list[tuple[Any, ...]]:
    try:
        return sorted({tuple(key_part(v, k) for v, k in zip(key, kinds, strict=True)) for key in keys})
    except ValueError as e:
        raise SpecError(f"--keys: {e}") from None


def audit(
    spec: Spec,
    store: AuditStore,
    *,
    keys: Sequence[tuple[Any, ...]] | None = None,
    where: str | None = None,
    now: datetime | None = None,
    on_row: Callable[[], None] | None = None,
    truth_url: str | None = None,
    projection_url: str | None = None,
    strategy: str = "auto",
) -> RunResult:
    """Compare truth with projection, store the run and move findings along their lifecycle.

    ``keys`` restricts the audit to those entities, ``where`` to rows matching a SQL filter on
    both sides. ``strategy``: ``stream`` merges both whole streams; ``checksum`` pushes bucket
    checksums down to two PostgreSQL databases and streams only the buckets that differ
    (:mod:`reconcile.sources.checksum`); ``auto`` uses checksums where they can help. Bad input
    raises before anything is written to the store.
    """
    if strategy not in STRATEGIES:
        raise SpecError(f"--strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    pair = open_pair(spec, truth_url=truth_url, projection_url=projection_url)
    try:
        started = datetime.now(UTC)
        now = now or started
        canon = _canonical(keys, pair.kinds) if keys is not None else None
        active = store.active_findings(spec.name)
        watch = {_key_tuple(f.key, spec.key_truth, pair.kinds): f.key_id for f in active}
        outcome, used = _diff(pair, canon, where, now, set(watch), on_row, strategy)
        outcome = _recheck(pair, outcome, where, set(watch))
        clean = {watch[k] for k in outcome.clean}
        pending = {watch[k] for k in outcome.pending_keys}
        if canon is not None:  # watched keys asked for but absent on both sides are consistent
            seen = {f.key_id for f in outcome.findings}
            asked = set(canon)
            clean |= {
                kid for k, kid in watch.items() if k in asked and kid not in seen and kid not in pending
            }
        summary = Summary(
            compared=outcome.compared,
            pending=outcome.pending,
            truth_rows=outcome.truth_rows,
            projection_rows=outcome.projection_rows,
        )
        run_id = str(uuid.uuid4())
        scope = {"keys": len(canon) if canon is not None else None, "where": where}
        confirmed, unconfirmed = store.record_run(
            run_id=run_id,
            spec=spec.name,
            started_at=started,
            finished_at=datetime.now(UTC),
            strategy=used,
            scope=scope,
            summary=summary,
            seen=outcome.findings,
            clean=clean,
            pending=pending,
            resolve_unseen=canon is None and where is None,
            confirm_runs=spec.freshness.confirm_runs,
        )
        return RunResult(
            run_id=run_id,
            spec=spec.name,
            started_at=started,
            finished_at=datetime.now(UTC),
            summary=summary,
            findings=confirmed,
            unconfirmed=unconfirmed,
            scope=scope,
            strategy=used,
        )
    finally:
        pair.close()


RECHECK_LIMIT = 10_000


def _recheck(pair: Pair, first: DiffOutcome, where: str | None, watch: set[tuple[Any, ...]]) -> DiffOutcome:
    """Read the drifted keys again, from both sides, before calling them drift.

    The two sides are read at slightly different instants, so an entity that changed while the
    scan ran can look drifted (say, the projection already applied an event for a truth row
    read just before it changed). Re-reading just those keys settles it: what still differs
    and is not fresh is a finding; what changed meanwhile is pending; the rest was the race.
    Skipped above RECHECK_LIMIT findings (then the guard and confirm_runs are the safety net).
    """
    if not first.findings or len(first.findings) > RECHECK_LIMIT:
        return first
    names = pair.spec.key_truth
    keys = sorted({tuple(f.key[n] for n in names) for f in first.findings})
    tplan, pplan = pair.plans()
    second = diff_rows(
        pair.truth.stream(tplan, where=where, keys=keys),
        pair.projection.stream(pplan, where=where, keys=keys),
        pair.rules,
        names,
        now=datetime.now(UTC),
        grace=pair.spec.freshness.grace,
        watch=watch & set(keys),
    )
    return DiffOutcome(
        findings=second.findings,
        compared=first.compared,
        pending=first.pending + second.pending,
        truth_rows=first.truth_rows,
        projection_rows=first.projection_rows,
        clean=first.clean | second.clean,
        pending_keys=first.pending_keys | second.pending_keys,
    )


def _key_tuple(key: dict[str, Any], names: Sequence[str], kinds: Sequence[str]) -> tuple[Any, ...]:
    return tuple(key_part(key.get(n), k) for n, k in zip(names, kinds, strict=True))


def _diff(
    pair: Pair,
    keys: list[tuple[Any, ...]] | None,
    where: str | None,
    now: datetime,
    watch: set[tuple[Any, ...]],
    on_row: Callable[[], None] | None,
    strategy: str = "auto",
) -> tuple[DiffOutcome, str]:
    """Run the diff with the strategy asked for; returns the outcome and the strategy used."""
    tplan, pplan = pair.plans()
    if strategy != "stream":
        from .sources.checksum import checksum_diff, unsupported_reason

        why = "a --keys audit reads only those keys" if keys is not None else None
        why = why or unsupported_reason(pair.truth, pair.projection)
        if why and strategy == "checksum":
            raise SpecError(f"spec {pair.spec.label}: --strategy checksum: {why} (use auto or stream)")
        if not why:
            got = checksum_diff(
                pair.truth,
                pair.projection,
                (tplan, pplan),
                pair.rules,
                pair.spec.key_truth,
                now=now,
                grace=pair.spec.freshness.grace,
                where=where,
                watch=watch,
                on_row=on_row,
                fallback=strategy == "auto",
            )
            if got is not None:
                return got.outcome, "checksum"
    return diff_rows(
        pair.truth.stream(tplan, where=where, keys=keys),
        pair.projection.stream(pplan, where=where, keys=keys),
        pair.rules,
        pair.spec.key_truth,
        now=now,
        grace=pair.spec.freshness.grace,
        watch=watch,
        on_row=on_row,
    ), "stream"
