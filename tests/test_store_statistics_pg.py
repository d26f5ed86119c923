"""A big run leaves fresh planner statistics on the findings table (PostgreSQL store)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.findings import Finding, FindingKind, Summary
from reconcile.store import ANALYZE_AFTER

pytestmark = pytest.mark.integration


def record(store: Any, n: int, clean: set[str]) -> None:
    store.record_run(
        run_id=str(uuid.uuid4()),
        spec="big",
        started_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
        strategy="stream",
        scope={"keys": None, "where": None},
        summary=Summary(compared=n),
        seen=(Finding(FindingKind.MISSING, {"sku": f"R{i:08d}"}, truth={"q": i}) for i in range(n)),
        clean=clean,
        pending=set(),
        resolve_unseen=False,
        confirm_runs=1,
    )


def test_a_big_run_analyzes_the_findings(make_pg_db: Any, make_store: Any) -> None:
    """Never analyzed, the table is planned as one row: resolving the next run's 30k clean keys
    then tested every finding against every key (49 s here; 13 minutes at 100k in the heal
    bench). After the big run's own ANALYZE, it is an index probe per key (timed in the heal
    bench, not here)."""
    store = make_store(make_pg_db("stats"))
    store.migrate()
    n = 3 * ANALYZE_AFTER
    record(store, n, set())
    with store.engine.connect() as conn:
        analyzed, tuples = conn.execute(
            sa.text(
                "SELECT s.last_analyze, c.reltuples FROM pg_stat_user_tables s"
                " JOIN pg_class c ON c.oid = s.relid WHERE s.relname = 'reconcile_findings'"
            )
        ).one()
        ids = set(conn.execute(sa.text("SELECT key_id FROM reconcile_findings")).scalars())
    assert analyzed is not None and tuples >= n  # by reconcile, not autovacuum (last_autoanalyze)
    record(store, 0, ids)  # every finding found clean: resolved by key
    with store.engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM reconcile_findings WHERE status <> 'resolved'"))
        assert left.scalar() == 0
