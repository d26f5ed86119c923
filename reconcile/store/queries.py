"""The audit store's read-only queries behind the dashboard and ``/metrics``.

Kept beside :class:`~reconcile.store.AuditStore` (they use its transactions and tables) the way
:mod:`reconcile.store.preflight` is. Nothing here writes. The ``/metrics`` ones (``latest_runs``,
``run_counts``, ``finding_counts``, ``outbox_backlogs``, ``heal_histograms``) answer for every
spec at once in one aggregate query each, so a scrape costs five queries however many specs,
runs and findings the store holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from . import ACTIVE, AuditStore, _aware, _finding, _outbox_row
from .port import CorrectionRecord, FindingRecord, HealHistogram, RunRecord
from .schema import findings as F
from .schema import outbox as O
from .schema import preflight_checks as P
from .schema import runs as R

__all__ = [
    "spec_names",
    "runs",
    "latest_runs",
    "run_counts",
    "finding_counts",
    "finding_records",
    "corrections",
    "outbox_backlogs",
    "heal_histograms",
]


def _run(r: Any) -> RunRecord:
    return RunRecord(
        r.id,
        r.spec,
        _aware(r.started_at),
        _aware(r.finished_at),
        r.status,
        r.strategy,
        dict(r.scope or {}),
        dict(r.summary or {}),
        getattr(r, "cut", None),
    )


def spec_names(store: AuditStore) -> list[str]:
    """Every spec the store has runs, findings or preflight gates of, sorted.

    A finding is only ever stored with the run that saw it, so the runs and the gates name them
    all (and their indexes lead with the spec: no row is read).
    """
    with store._begin() as conn:
        q = sa.union(sa.select(R.c.spec).group_by(R.c.spec), sa.select(P.c.spec).group_by(P.c.spec))
        return sorted({name for (name,) in conn.execute(q)})


def runs(
    store: AuditStore,
    spec: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> list[RunRecord]:
    """A spec's runs started in [since, until], newest first."""
    q = sa.select(R).where(R.c.spec == spec)
    if since is not None:
        q = q.where(R.c.started_at >= since)
    if until is not None:
        q = q.where(R.c.started_at <= until)
    q = q.order_by(R.c.started_at.desc(), R.c.finished_at.desc())
    if limit is not None:
        q = q.limit(limit)
    with store._begin() as conn:
        return [_run(r) for r in conn.execute(q).all()]


def latest_runs(store: AuditStore) -> dict[str, RunRecord]:
    """Spec name -> its most recent run (one query over the (spec, started_at) index)."""
    last = sa.select(R.c.spec, sa.func.max(R.c.started_at).label("at")).group_by(R.c.spec).subquery()
    q = (
        sa.select(R)
        .join(last, sa.and_(R.c.spec == last.c.spec, R.c.started_at == last.c.at))
        .order_by(R.c.finished_at)
    )
    with store._begin() as conn:
        return {r.spec: _run(r) for r in conn.execute(q).all()}  # the latest finished wins a tie


def run_counts(store: AuditStore) -> dict[tuple[str, str], int]:
    """(spec, run status) -> number of stored runs."""
    q = sa.select(R.c.spec, R.c.status, sa.func.count()).group_by(R.c.spec, R.c.status)
    with store._begin() as conn:
        return {(spec, status): int(n) for spec, status, n in conn.execute(q)}


def finding_counts(store: AuditStore) -> dict[tuple[str, str, str], int]:
    """(spec, kind, status) -> active findings."""
    q = (
        sa.select(F.c.spec, F.c.kind, F.c.status, sa.func.count())
        .where(F.c.status.in_(ACTIVE))
        .group_by(F.c.spec, F.c.kind, F.c.status)
    )
    with store._begin() as conn:
        return {(spec, kind, status): int(n) for spec, kind, status, n in conn.execute(q)}


def finding_records(
    store: AuditStore,
    spec: str,
    *,
    statuses: Sequence[str] | None = None,
    since: datetime | None = None,
    key_ids: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[FindingRecord]:
    """A spec's findings with their lifecycle and how many corrective events each got.

    ``since``: only findings still active, or first seen or resolved at or after it.
    """
    sent = (
        sa.select(O.c.finding_id, sa.func.count().label("n"))
        .where(O.c.spec == spec, O.c.finding_id.is_not(None))
        .group_by(O.c.finding_id)
        .subquery()
    )
    q = sa.select(F, sent.c.n).outerjoin(sent, sent.c.finding_id == F.c.id).where(F.c.spec == spec)
    if statuses is not None:
        q = q.where(F.c.status.in_(list(statuses)))
    if since is not None:
        q = q.where(sa.or_(F.c.status.in_(ACTIVE), F.c.first_seen >= since, F.c.resolved_at >= since))
    if key_ids is not None:
        if not key_ids:
            return []
        q = q.where(F.c.key_id.in_(list(key_ids)))
    q = q.order_by(F.c.first_seen.desc(), F.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    with store._begin() as conn:
        rows = conn.execute(q).all()
    return [
        FindingRecord(
            id=r.id,
            spec=r.spec,
            finding=_finding(r),
            last_seen=_aware(r.last_seen),
            resolved_at=_aware(r.resolved_at),
            first_run_id=r.first_run_id,
            last_run_id=r.last_run_id,
            corrections=int(r.n or 0),
        )
        for r in rows
    ]


def corrections(store: AuditStore, spec: str, finding_ids: Sequence[int]) -> list[CorrectionRecord]:
    """The corrective events written for these findings, oldest first."""
    out: list[CorrectionRecord] = []
    ids = list(finding_ids)
    with store._begin() as conn:
        for i in range(0, len(ids), 1000):
            q = sa.select(O).where(O.c.spec == spec, O.c.finding_id.in_(ids[i : i + 1000])).order_by(O.c.id)
            out += [
                CorrectionRecord(_outbox_row(r), r.finding_id, r.attempts, r.last_error)
                for r in conn.execute(q)
            ]
    return sorted(out, key=lambda c: c.event.id)


def outbox_backlogs(store: AuditStore) -> dict[str, tuple[int, datetime | None]]:
    """Spec name -> (unsent rows, creation time of the oldest), for specs with unsent rows.
    Parked (dead) rows are not a backlog: no relay will take them; see :func:`outbox_dead`."""
    q = (
        sa.select(O.c.spec, sa.func.count(), sa.func.min(O.c.created_at))
        .where(O.c.sent_at.is_(None), O.c.dead_at.is_(None))
        .group_by(O.c.spec)
    )
    with store._begin() as conn:
        return {spec: (int(n), _aware(oldest)) for spec, n, oldest in conn.execute(q)}


def outbox_dead(store: AuditStore) -> dict[str, int]:
    """Spec name -> corrective events parked for good (the broker refused them), where any are."""
    q = sa.select(O.c.spec, sa.func.count()).where(O.c.dead_at.is_not(None)).group_by(O.c.spec)
    with store._begin() as conn:
        return {spec: int(n) for spec, n in conn.execute(q)}


def _seconds_between(dialect: str, start: Any, end: Any) -> Any:
    """``end - start`` in seconds, as SQL of this dialect (None when it has no such function)."""
    if dialect == "postgresql":  # date_part: double precision (extract() is numeric, and slower)
        return sa.func.date_part("epoch", end - start)
    if dialect == "sqlite":
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0
    if dialect in ("mysql", "mariadb"):
        return sa.func.timestampdiff(sa.text("MICROSECOND"), start, end) / 1e6
    return None


def heal_histograms(
    store: AuditStore, bounds: Sequence[float], specs: Sequence[str] | None = None
) -> dict[str, HealHistogram]:
    """Spec name -> the time-to-heal histogram of its resolved findings (of ``specs`` only, when
    given), counted in the database."""
    edges = tuple(sorted(float(b) for b in bounds))
    resolved = sa.and_(F.c.status == "resolved", F.c.resolved_at.is_not(None))
    if specs is not None:
        if not specs:
            return {}
        resolved = sa.and_(resolved, F.c.spec.in_(list(specs)))
    d = _seconds_between(store.engine.dialect.name, F.c.first_seen, F.c.resolved_at)
    out: dict[str, HealHistogram] = {}
    with store._begin() as conn:
        if d is None:  # an engine without a portable interval function: count here instead
            rows = conn.execute(sa.select(F.c.spec, F.c.first_seen, F.c.resolved_at).where(resolved))
            per: dict[str, list[float]] = {}
            for spec, first, done in rows:
                per.setdefault(spec, []).append(max((_aware(done) - _aware(first)).total_seconds(), 0.0))
            for spec, ds in per.items():
                out[spec] = HealHistogram(
                    edges, tuple(sum(1 for x in ds if x <= b) for b in edges), len(ds), sum(ds)
                )
            return out
        cols = [sa.func.sum(sa.case((d <= b, 1), else_=0)) for b in edges]
        q = sa.select(F.c.spec, sa.func.count(), sa.func.sum(d), *cols).where(resolved).group_by(F.c.spec)
        for spec, n, total, *cum in conn.execute(q):
            out[spec] = HealHistogram(edges, tuple(int(c or 0) for c in cum), int(n), float(total or 0.0))
    return out
