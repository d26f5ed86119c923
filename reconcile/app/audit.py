"""Use cases: validate a spec, and audit it — whole, one key range, or a merge of ranges.

Every function takes the shell's :class:`~reconcile.app.context.Context` and a
:class:`~reconcile.spec.Spec`, does one job, and returns a value. An audit reads both sides
(read-only), diffs them, re-reads the drifted keys once (so an entity that changed during the
scan is pending, not drift), and records one run in the audit store.

Fan-out: a large audit splits into independent key ranges (:func:`plan_ranges`); each range is
diffed anywhere, in any order (:func:`audit_range`, which writes nothing), and the outcomes
merge into one stored run (:func:`merge_ranges`) equal to a single-pass audit, recheck
included::

    ranges = plan_ranges(ctx, spec, 8)
    parts = [audit_range(ctx, spec, r, now=t0) for r in ranges]      # anywhere, any order
    result = merge_ranges(ctx, spec, parts, started_at=t0)           # one run in the store
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..compare import ColumnRule, jsonable, key_part
from ..diff import DiffOutcome, diff_rows
from ..errors import SourceError, SpecError
from ..findings import Finding, FindingKind, RunResult, Summary
from ..keys import canonical_keys
from ..sources.ranges import KeyRange, range_filter, split_ranges
from ..sources.sql import ReadPlan, SqlSource, key_kind
from ..spec import Spec
from ..store import ACTIVE, Store
from .context import Context

if TYPE_CHECKING:  # the event path (causes, the topic reader) loads only for a spec with `path:`
    from .path import PathRun


# A topic side needs msgspec and the Kafka reader: imported only when a spec has one, so a plain
# SQL audit starts fast (issue 14).
def _any_topic(sources: Sequence[SqlSource]) -> bool:
    return any(src.is_topic for src in sources)


def topic_scope(*sources: SqlSource) -> dict[str, Any]:
    """The topic sides' recorded extents (see :func:`reconcile.sources.topic.topic_scope`)."""
    if not _any_topic(sources):
        return {}
    from ..sources.topic import topic_scope as scope

    return scope(*sources)


def locate(findings: list[Finding], sources: Sequence[SqlSource], key_names: Sequence[str]) -> list[Finding]:
    """Findings located on their topic side (see :func:`reconcile.sources.topic.locate`)."""
    if not findings or not _any_topic(sources):
        return findings
    from ..sources.topic import locate as on_topic

    return on_topic(findings, sources, key_names)


__all__ = [
    "STRATEGIES",
    "Pair",
    "open_pair",
    "validate",
    "audit",
    "plan_ranges",
    "audit_range",
    "merge_ranges",
    "audit_fanout",
    "outcome_to_dict",
    "outcome_from_dict",
]

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


def open_pair(ctx: Context, spec: Spec) -> Pair:
    """Connect to both sides and check that every table and column the spec names exists.

    Raises SpecError (a name that does not exist, with the spec field) or SourceError
    (a database that cannot be reached). Reads nothing but the catalogs.
    """
    where = spec.label
    urls = ctx.urls(spec)
    _not_the_same_table(spec, urls["truth_url"], urls["projection_url"])
    tnames, pnames = filter_columns(spec)
    try:
        truth = _open_side(ctx, spec, "truth", tnames)
    except SpecError as e:
        raise SpecError(str(e).replace("spec:", f"spec {where}:", 1)) from None
    try:
        projection = _open_side(ctx, spec, "projection", pnames)
    except BaseException as e:
        truth.dispose()
        if isinstance(e, SpecError):
            raise SpecError(str(e).replace("spec:", f"spec {where}:", 1)) from None
        raise
    try:
        for src in (truth, projection):
            try:
                src.columns()
                src.side_filter()
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


def _open_side(ctx: Context, spec: Spec, role: str, names: dict[str, str]) -> SqlSource:
    """A side's reader: a SQL table or query, or a Kafka topic read as a table (its extent fixed now)."""
    side = getattr(spec, role)
    if side.is_topic:
        from ..sources.topic import TopicSource

        return TopicSource(
            side,
            role,
            ctx.topic_reader(side),
            consumer_group=spec.freshness.consumer_group,
            filter_columns=names,
        )
    t = spec.throttle
    return SqlSource(
        side,
        role,
        ctx.side_url(side),
        filter_columns=names,
        statement_timeout=None if spec.statement_timeout is None else spec.statement_timeout.total_seconds(),
        throttle=(t.chunk_time.total_seconds(), t.max_active_sessions) if t else None,
    )


def filter_columns(spec: Spec) -> tuple[dict[str, str], dict[str, str]]:
    """The names a run's filter (``--where``) may use — the key and compared columns, by truth
    name — mapped to each side's own names."""
    truth = {k.truth: k.truth for k in spec.key} | {c: c for c in spec.columns}
    projection = {k.truth: k.projection for k in spec.key} | {
        c: spec.projection_name(c) for c in spec.columns
    }
    return truth, projection


def check_where(spec: Spec, where: str | None) -> None:
    """Raise SpecError (exit 2) unless ``where`` is an acceptable filter over the spec's columns."""
    if where is not None:
        from ..filters import parse_filter

        parse_filter(where, origin="--where", columns=list(filter_columns(spec)[0]))


def _not_the_same_table(spec: Spec, truth_url: str | None, projection_url: str | None) -> None:
    """Truth and projection reading the same rows compare a table with itself: always "no
    drift", whatever the data. That is a mistake in the spec, not a result."""
    t, p = spec.truth, spec.projection
    if not truth_url or not projection_url or _database(truth_url) != _database(projection_url):
        return
    if t.table and p.table:
        same = t.table == p.table and (t.schema_ or "") == (p.schema_ or "")
        what = f"table {t.table!r}"
    else:
        same = bool(t.query) and " ".join((t.query or "").split()) == " ".join((p.query or "").split())
        what = "query"
    if same:
        raise SpecError(
            f"spec {spec.label}: truth and projection both read {what} of the same database; "
            "an audit would compare it with itself (point projection: at the read model)"
        )


def _database(url: str) -> tuple[Any, ...]:
    import os

    import sqlalchemy as sa

    from ..db import normalize_url

    try:
        u = sa.make_url(normalize_url(url))
    except Exception:  # noqa: BLE001 - a bad URL fails later, with its own message
        return (url,)
    db = u.database or ""
    if u.get_backend_name() == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
        db = os.path.realpath(db)
    return (u.get_backend_name(), (u.host or "").lower(), u.port, db)


def validate(ctx: Context, spec: Spec) -> dict[str, Any]:
    """Check a spec against both databases without auditing; describe what would be compared."""
    pair = open_pair(ctx, spec)
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
            **({"topics": topics} if (topics := topic_scope(pair.truth, pair.projection)) else {}),
            **({"path": _check_path(ctx, spec)} if spec.path is not None else {}),
        }
    finally:
        pair.close()


def _check_path(ctx: Context, spec: Spec) -> dict[str, Any]:
    from .path import check

    assert spec.path is not None
    reader = ctx.topic_reader(spec.path.topic_side())
    try:
        return check(ctx, spec, reader)
    finally:
        reader.close()


def audit(
    ctx: Context,
    spec: Spec,
    *,
    keys: Sequence[tuple[Any, ...]] | None = None,
    where: str | None = None,
    now: datetime | None = None,
    on_row: Callable[[], None] | None = None,
    strategy: str = "auto",
    wait: bool = False,
    settle: timedelta | None = None,
) -> RunResult:
    """Compare truth with projection, store the run and move findings along their lifecycle.

    With a ``path`` in the spec, the run first takes its cut (truth's position, the topic's end
    offsets, the group's committed offsets) and waits up to ``settle`` (default: the spec's
    ``path.settle``) for the projector to reach it; then every finding gets its cause, and an
    entity with an event still in flight is pending (see :mod:`reconcile.app.path`).

    One audit of a spec at a time: another one running raises ConcurrentRun (exit 2), or is
    waited for when ``wait``.

    ``keys`` restricts the audit to those entities, ``where`` to rows matching a SQL filter on
    both sides. ``strategy``: ``stream`` merges both whole streams; ``checksum`` pushes bucket
    checksums down to two PostgreSQL databases and streams only the buckets that differ
    (:mod:`reconcile.sources.checksum`); ``auto`` uses checksums where they can help. Bad input
    raises before anything is written to the store.
    """
    if strategy not in STRATEGIES:
        raise SpecError(f"--strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    check_where(spec, where)
    if keys is not None and not keys:
        raise SpecError("--keys: no keys given (leave --keys out to audit every entity)")
    pair = open_pair(ctx, spec)  # names checked before anything is written, the store included
    try:
        canon = canonical_keys(keys, pair.kinds) if keys is not None else None
        with ctx.store.audit_lock(spec.name, wait=wait):
            path_run = None
            if spec.path is not None:
                from .path import begin as begin_path

                path_run = begin_path(ctx, spec, settle)
            try:
                return _audit(ctx, spec, pair, canon, where, now, on_row, strategy, path_run)
            finally:
                if path_run is not None:
                    path_run.close()
    finally:
        pair.close()


def _audit(
    ctx: Context,
    spec: Spec,
    pair: Pair,
    canon: list[tuple[Any, ...]] | None,
    where: str | None,
    now: datetime | None,
    on_row: Callable[[], None] | None,
    strategy: str,
    path_run: PathRun | None = None,
) -> RunResult:
    store = ctx.store
    started = datetime.now(UTC)
    now = now or started
    if canon is None:
        refuse_null_keys(pair, where)  # under the lock: a topic side spills before it counts
    watch = _watch(store, spec, pair.kinds)
    spill = _Spill(RECHECK_LIMIT, spec.key_truth if path_run is not None else None) if canon is None else None
    outcome, used = _diff(pair, canon, where, now, set(watch), on_row, strategy, spill)
    sides = (pair.truth, pair.projection)
    summary = Summary()
    held: set[str] = set()  # key ids of watched findings found pending by the path
    if spill is not None and spill.spilled:
        # Too many to re-check: straight to the store, in batches (located batch by batch).
        seen: Iterable[Finding] = _located(spill, sides, spec.key_truth)
        if path_run is not None:  # causes as they stream by, after one pass over the path

            def on_pending(f: Finding) -> None:
                summary.pending += 1
                k = _canon_key(f, spec, pair.kinds)
                if k in watch:
                    held.add(watch[k])

            from .path import finish_stream

            seen = finish_stream(
                ctx, path_run, seen, spill.keys, pair.kinds, on_pending, truth=_sql_truth(pair)
            )
    else:
        if spill is not None:
            outcome.findings = spill.head
        outcome = _recheck(pair, outcome, where, set(watch))
        outcome.findings = locate(outcome.findings, sides, spec.key_truth)
        if path_run is not None:
            from .path import finish as finish_path

            got = finish_path(ctx, path_run, outcome.findings, pair.kinds, truth=_sql_truth(pair))
            outcome.findings = got.findings
            outcome.pending += len(got.pending)
            in_flight = {_canon_key(f, spec, pair.kinds) for f in got.pending}
            outcome.pending_keys |= {k for k in in_flight if k in watch}
        seen = outcome.findings
    clean = {watch[k] for k in outcome.clean}
    # With a spilled run, the stream adds the watched keys it finds pending to this very set
    # while the store reads it (record_run resolves the unseen ones only after the stream).
    pending = held
    pending |= {watch[k] for k in outcome.pending_keys}
    if canon is not None:  # watched keys asked for but absent on both sides are consistent
        seen_ids = {f.key_id for f in outcome.findings}
        asked = set(canon)
        clean |= {
            kid for k, kid in watch.items() if k in asked and kid not in seen_ids and kid not in pending
        }
    scope: dict[str, Any] = {
        "keys": len(canon) if canon is not None else None,
        "where": where,
        "started_by": ctx.who(),
    }
    if topics := topic_scope(pair.truth, pair.projection):
        scope["topics"] = topics
    if paced := throttle_scope(pair.truth, pair.projection):
        scope["throttle"] = paced
    cut = path_run.to_dict() if path_run is not None else None
    return _record(
        store,
        spec,
        outcome,
        summary=summary,
        cut=cut,
        causes=path_run.causes if path_run is not None and path_run.stats is not None else None,
        seen=seen,
        started_at=started,
        strategy=used,
        scope=scope,
        clean=clean,
        pending=pending,
        resolve_unseen=canon is None and where is None,
    )


def throttle_scope(*sides: Any) -> dict[str, Any]:
    """Each throttled side's chunks and pauses (empty when the spec has no ``throttle:``)."""
    return {s.role: s.throttle.to_dict() for s in sides if getattr(s, "throttle", None) is not None}


def refuse_null_keys(pair: Pair, where: str | None = None) -> None:
    """Raise SourceError when a side has rows with a NULL key part: they name no entity, so
    they could be neither compared nor corrected, and dropping them would hide them."""
    tplan, pplan = pair.plans()
    for src, plan in ((pair.truth, tplan), (pair.projection, pplan)):
        n = src.null_keys(plan, where)
        if n:
            what = f"table {src._table_name()}" if src.side.table else "the query's result"
            raise SourceError(
                f"spec {pair.spec.label}: {src.role}: {n:,} row(s) of {what} have a NULL key "
                f"({', '.join(plan.key)}) and name no entity; fix them, or exclude them on purpose "
                f"with `{src.role}.where: {plan.key[0]} IS NOT NULL`"
            )


class _Spill:
    """A run's findings: in memory up to ``limit`` (enough to re-check them), beyond that in a
    temporary file, in batches, so an audit with a million findings keeps memory flat."""

    def __init__(self, limit: int, key_names: Sequence[str] | None = None, batch: int = 5_000):
        self.limit, self.batch = limit, batch
        # With a path: every finding's key (memory grows with the findings) for the one pass.
        self.key_names = list(key_names) if key_names is not None else None
        self.keys: set[tuple[Any, ...]] = set()
        self.head: list[Finding] = []
        self._buf: list[Finding] = []
        self._file: Any = None
        self.count = 0

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def __call__(self, finding: Finding) -> None:
        self.count += 1
        if self.key_names is not None:
            self.keys.add(tuple(finding.key[n] for n in self.key_names))
        if self._file is None:
            if len(self.head) < self.limit:
                self.head.append(finding)
                return
            import tempfile

            self._file = tempfile.TemporaryFile(prefix="reconcile-findings-")
            self._buf, self.head = self.head, []
        self._buf.append(finding)
        if len(self._buf) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        import pickle

        if self._buf:
            pickle.dump(self._buf, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._buf = []

    def __iter__(self) -> Iterator[Finding]:
        import pickle

        if self._file is None:
            yield from self.head
            return
        self._flush()
        self._file.seek(0)
        try:
            while True:
                try:
                    batch = pickle.load(self._file)  # noqa: S301 - our own temporary file
                except EOFError:
                    break
                yield from batch
        finally:
            self._file.close()


def _located(
    findings: Iterable[Finding], sides: Any, names: Sequence[str], batch: int = 5_000
) -> Iterator[Finding]:
    """:func:`locate` over a stream of findings, a batch at a time."""
    buf: list[Finding] = []
    for f in findings:
        buf.append(f)
        if len(buf) >= batch:
            yield from locate(buf, sides, names)
            buf = []
    if buf:
        yield from locate(buf, sides, names)


def _record(
    store: Store,
    spec: Spec,
    outcome: DiffOutcome,
    *,
    summary: Summary | None = None,
    cut: dict[str, Any] | None = None,
    causes: dict[str, int] | None = None,
    seen: Iterable[Finding] | None = None,
    started_at: datetime,
    strategy: str,
    scope: dict[str, Any],
    clean: set[str],
    pending: set[str],
    resolve_unseen: bool,
) -> RunResult:
    # ``summary``: one the caller's stream of findings may still add pending entities to.
    summary = summary or Summary()
    summary.compared = outcome.compared
    summary.pending += outcome.pending
    summary.truth_rows = outcome.truth_rows
    summary.projection_rows = outcome.projection_rows
    run_id = str(uuid.uuid4())
    finished = datetime.now(UTC)
    confirmed, unconfirmed = store.record_run(
        run_id=run_id,
        spec=spec.name,
        started_at=started_at,
        finished_at=finished,
        strategy=strategy,
        scope=scope,
        summary=summary,
        seen=outcome.findings if seen is None else seen,
        clean=clean,
        pending=pending,
        resolve_unseen=resolve_unseen,
        confirm_runs=spec.freshness.confirm_runs,
        cut=cut,
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
        strategy=strategy,
        cut=cut,
        causes=causes,
    )


def _sql_truth(pair: Pair) -> SqlSource | None:
    """The truth side when it can say when an entity last changed (freshness.truth_column)."""
    return pair.truth if pair.spec.freshness.truth_column else None


def _canon_key(f: Finding, spec: Spec, kinds: Sequence[str]) -> tuple[Any, ...]:
    return tuple(key_part(f.key[n], k) for n, k in zip(spec.key_truth, kinds, strict=True))


def _grace(spec: Spec) -> timedelta:
    """The clock's freshness grace; none with a path, where pending is decided by positions."""
    return timedelta(0) if spec.path is not None else spec.freshness.grace


def _watch(store: Store, spec: Spec, kinds: Sequence[str]) -> dict[tuple[Any, ...], str]:
    """Canonical key -> key id of the spec's active findings (their keys are always re-judged)."""
    names = spec.key_truth
    return {
        tuple(key_part(key.get(n), k) for n, k in zip(names, kinds, strict=True)): kid
        for kid, key in store.finding_keys(spec.name, ACTIVE)
    }


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
        grace=_grace(pair.spec),
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


# -- fan-out --------------------------------------------------------------------------------
def plan_ranges(ctx: Context, spec: Spec, n: int) -> list[KeyRange]:
    """Up to ``n`` key ranges of the pair, cut at quantiles of the truth's first key column."""
    pair = open_pair(ctx, spec)
    try:
        refuse_null_keys(pair)
        tplan, _ = pair.plans()
        return split_ranges(pair.truth, tplan, max(1, n))
    finally:
        pair.close()


def key_kinds(ctx: Context, spec: Spec) -> list[str]:
    """The canonical kind of each key column (decided from both sides' types)."""
    pair = open_pair(ctx, spec)
    try:
        return list(pair.kinds)
    finally:
        pair.close()


def audit_range(ctx: Context, spec: Spec, rng: KeyRange, *, now: datetime | None = None) -> DiffOutcome:
    """Diff one key range and re-check its drifted keys, like a single-pass audit. Writes nothing."""
    pair = open_pair(ctx, spec)
    try:
        watch = set(_watch(ctx.store, spec, pair.kinds))
        # The range pushed down like a whole audit (checksums where both servers allow).
        first, _ = _diff(pair, None, None, now or datetime.now(UTC), watch, None, rng=rng)
        return _recheck(pair, first, None, watch)
    finally:
        pair.close()


def merge_ranges(
    ctx: Context,
    spec: Spec,
    parts: Sequence[DiffOutcome],
    *,
    started_at: datetime,
    kinds: Sequence[str] | None = None,
) -> RunResult:
    """Merge the outcomes of disjoint ranges covering every key and store them as one run."""
    outcome = DiffOutcome()
    for part in parts:
        outcome = outcome.merge(part)
    watch = _watch(ctx.store, spec, kinds if kinds is not None else key_kinds(ctx, spec))
    with ctx.store.audit_lock(spec.name, wait=True):  # the ranges' reads are done: only the write waits
        return _record(
            ctx.store,
            spec,
            outcome,  # ranges arrive in key order: the same order as one pass
            started_at=started_at,
            strategy="fanout",
            scope={"keys": None, "where": None, "ranges": len(parts), "started_by": ctx.who()},
            clean={watch[k] for k in outcome.clean if k in watch},
            pending={watch[k] for k in outcome.pending_keys if k in watch},
            resolve_unseen=True,
        )


def audit_fanout(ctx: Context, spec: Spec, n: int) -> RunResult:
    """Plan, diff every range in turn and merge them (what the Airflow fan-out does, in-process)."""
    started = datetime.now(UTC)
    pair = open_pair(ctx, spec)
    try:
        refuse_null_keys(pair)
        tplan, _ = pair.plans()
        ranges, kinds = split_ranges(pair.truth, tplan, max(1, n)), list(pair.kinds)
    finally:
        pair.close()
    parts = [audit_range(ctx, spec, r, now=started) for r in ranges]
    return merge_ranges(ctx, spec, parts, started_at=started, kinds=kinds)


# -- outcomes between workers (XCom) --------------------------------------------------------
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


def _diff(
    pair: Pair,
    keys: list[tuple[Any, ...]] | None,
    where: str | None,
    now: datetime,
    watch: set[tuple[Any, ...]],
    on_row: Callable[[], None] | None,
    strategy: str = "auto",
    sink: Callable[[Finding], None] | None = None,
    rng: KeyRange | None = None,
) -> tuple[DiffOutcome, str]:
    """Run the diff with the strategy asked for; returns the outcome and the strategy used.

    ``rng``: only this key range (a fan-out worker's), pushed down like the whole pair."""
    tplan, pplan = pair.plans()
    # auto falls back to streaming unless both sides are PostgreSQL, MariaDB or MySQL: skip
    # importing the pushdown (and its SQL dialects) when it cannot run anyway.
    servers = {"postgresql", "mysql", "mariadb"}
    pushdown_possible = keys is None and {pair.truth.dialect, pair.projection.dialect} <= servers
    if strategy != "stream" and (strategy != "auto" or pushdown_possible):
        from ..sources.checksum import checksum_diff, unsupported_reason

        why = "a --keys audit reads only those keys" if keys is not None else None
        why = why or ("a throttled spec scans in paced chunks" if pair.spec.throttle else None)
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
                grace=_grace(pair.spec),
                where=where,
                watch=watch,
                on_row=on_row,
                fallback=strategy == "auto",
                key_range=None if rng is None else (rng.lo, rng.hi),
            )
            if got is not None:
                if sink is not None:  # the checksum path hands its (bucket-sized) findings back
                    for f in got.outcome.findings:
                        sink(f)
                    got.outcome.findings = []
                return got.outcome, "checksum"
    if keys is None and rng is None:  # a large topic spill: the diff on two cores
        from .split import split_diff, split_wanted

        topic = split_wanted(pair.truth, pair.projection, tplan, pplan)
        if topic is not None:
            halves = split_diff(
                topic,
                pair.truth,
                pair.projection,
                (tplan, pplan),
                list(pair.rules),
                list(pair.spec.key_truth),
                where=where,
                now=now,
                grace=_grace(pair.spec),
                watch=watch,
                on_row=on_row,
                sink=sink,
            )
            if halves is not None:
                return halves, "stream"
    tf = None if rng is None else range_filter(pair.truth, tplan, rng)
    pf = None if rng is None else range_filter(pair.projection, pplan, rng)
    return diff_rows(
        pair.truth.stream(tplan, where=where, keys=keys, extra_filter=tf),
        pair.projection.stream(pplan, where=where, keys=keys, extra_filter=pf),
        pair.rules,
        pair.spec.key_truth,
        now=now,
        grace=_grace(pair.spec),
        watch=watch,
        on_row=on_row,
        sink=sink,
    ), "stream"
