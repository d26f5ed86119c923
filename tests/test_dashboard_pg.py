"""The dashboard's store queries on the real PostgreSQL: the same story, the same numbers as on
SQLite (the time-to-heal histogram is counted with PostgreSQL's own interval arithmetic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconcile.app import Context
from reconcile.app import dashboard as D
from reconcile.app.metrics import HEAL_BUCKETS, snapshot

from .dashboard_cases import HEALED, build_world

pytestmark = [pytest.mark.integration]


def test_the_story_reads_the_same_from_a_postgresql_store(tmp_path: Path, pg_url: str) -> None:
    world = build_world(tmp_path / "w", store_url=pg_url)
    with Context(store_url=pg_url) as ctx:
        store = ctx.store
        assert store.spec_names() == ["clean", "gated", "stock"]
        counts = store.finding_counts()
        assert counts[("stock", "missing", "correcting")] == 2 and counts[("stock", "mismatch", "open")] == 1
        assert store.run_counts()[("stock", "drift")] == 3
        assert store.latest_runs()["stock"].scope["started_by"] == "on demand"
        assert store.outbox_backlogs()["stock"][0] == 2
        hist = store.heal_histograms(HEAL_BUCKETS)["stock"]
        assert hist.count == HEALED and hist.cumulative[0] == HEALED and 0 < hist.total_seconds < 60 * HEALED
        assert store.heal_histograms(HEAL_BUCKETS, ["clean"]) == {}
        recs = store.finding_records("stock")
        assert len(recs) == HEALED + 5
        assert len(store.corrections("stock", [r.id for r in recs])) == HEALED + 2

        ov = D.overview(ctx, [world.stock, world.clean, world.gated])
        assert [(s.name, s.state) for s in ov.specs] == [
            ("gated", "preflight failed"),
            ("stock", "drift"),
            ("clean", "healthy"),
        ]
        d = D.spec_detail(ctx, "stock", world.stock)
        assert d is not None and d.funnel["healed_by_correction"] == HEALED and d.findings_total == 5
        f = D.finding_detail(ctx, "stock", "S00013", world.stock)
        assert f is not None and [e.finding.status for e in f.episodes] == ["open", "resolved"]
        snap = snapshot(ctx, [world.stock, world.clean, world.gated])
        assert snap.findings[("stock", "missing", "open")] == 1 and snap.lag["stock"].messages == 0
