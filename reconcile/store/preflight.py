"""The audit store's side of the preflight gates: their results, and the baseline they compare with.

Kept beside :class:`~reconcile.store.AuditStore` (it uses the store's transactions and tables)
so the gates never touch SQL themselves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from . import AuditStore, _aware
from .port import PreflightRecord, RunRecord
from .schema import preflight_checks as P
from .schema import runs as R

__all__ = ["PreflightRecord", "record_preflight", "preflight_history", "baseline_run"]


def record_preflight(
    store: AuditStore,
    *,
    check_id: str,
    spec: str,
    checked_at: datetime,
    success: bool,
    results: dict[str, Any],
    docs: str | None,
) -> None:
    """Store one gate's outcome and its JSON results."""
    with store._begin() as conn:
        conn.execute(
            P.insert().values(
                id=check_id, spec=spec, checked_at=checked_at, success=success, results=results, docs=docs
            )
        )


def preflight_history(store: AuditStore, spec: str, limit: int = 20) -> list[PreflightRecord]:
    """The latest stored gates of a spec, newest first."""
    with store._begin() as conn:
        rows = conn.execute(
            sa.select(P).where(P.c.spec == spec).order_by(P.c.checked_at.desc()).limit(limit)
        ).all()
    return [
        PreflightRecord(r.id, r.spec, _aware(r.checked_at), bool(r.success), dict(r.results), r.docs)
        for r in rows
    ]


def baseline_run(store: AuditStore, spec: str, lookback: int = 50) -> RunRecord | None:
    """The latest audit of a spec that covered the whole pair (no --keys, no --where).

    Its summary's ``truth_rows`` / ``projection_rows`` are what "the row count collapsed" is
    measured against; a scoped audit read only a slice and would make a useless baseline.
    """
    with store._begin() as conn:
        rows = conn.execute(
            sa.select(R)
            .where(R.c.spec == spec)
            .order_by(R.c.started_at.desc(), R.c.finished_at.desc())
            .limit(lookback)
        ).all()
    for r in rows:
        scope = r.scope or {}
        summary = r.summary or {}
        if scope.get("keys") is None and scope.get("where") is None and "truth_rows" in summary:
            return RunRecord(
                r.id,
                r.spec,
                _aware(r.started_at),
                _aware(r.finished_at),
                r.status,
                r.strategy,
                scope,
                summary,
                getattr(r, "cut", None),
            )
    return None
