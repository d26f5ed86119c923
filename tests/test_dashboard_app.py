"""The dashboard's use cases (reconcile.app.dashboard, reconcile.app.metrics) over a store built
by real audits, and the store's read-only queries behind them."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconcile.app import Context
from reconcile.app import dashboard as D
from reconcile.app.metrics import HEAL_BUCKETS, snapshot
from reconcile.findings import FindingStatus
from reconcile.store import RunRecord, Store

from .dashboard_cases import ACKED, CORRECTING, HEALED, OPEN_MISMATCH, RETURNED, World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("dash") / "w")


@pytest.fixture
def ctx(world: World) -> Iterator[Context]:
    with Context(store_url=world.store_url) as c:
        yield c


def specs(world: World) -> list:  # type: ignore[type-arg]
    return [world.stock, world.clean, world.gated]


# -- the store's queries ---------------------------------------------------------------------
def test_store_queries_answer_for_every_spec_at_once(ctx: Context) -> None:
    store: Store = ctx.store
    assert store.spec_names() == ["clean", "gated", "stock"]  # gated: known by its preflight alone
    counts = store.finding_counts()
    assert counts[("stock", "mismatch", "open")] == 1
    assert counts[("stock", "mismatch", "acknowledged")] == 1
    assert counts[("stock", "missing", "correcting")] == 2
    assert counts[("stock", "missing", "open")] == 1
    assert all(spec == "stock" for spec, _, _ in counts)
    assert store.run_counts() == {("stock", "drift"): 3, ("stock", "clean"): 1, ("clean", "clean"): 1}
    latest = store.latest_runs()
    assert set(latest) == {"stock", "clean"}
    assert latest["stock"].scope["started_by"] == "on demand"
    assert [r.started_at for r in store.runs("stock")] == sorted(
        (r.started_at for r in store.runs("stock")), reverse=True
    )
    assert store.outbox_backlogs()["stock"][0] == 2
    hist = store.heal_histograms([1, 3600])["stock"]
    assert hist.count == HEALED and hist.cumulative[-1] == HEALED and hist.total_seconds > 0


def test_finding_records_carry_the_lifecycle_and_corrections(ctx: Context) -> None:
    recs = ctx.store.finding_records("stock")
    assert len(recs) == HEALED + 5
    by_status: dict[str, int] = {}
    for r in recs:
        by_status[r.finding.status.value] = by_status.get(r.finding.status.value, 0) + 1
    assert by_status == {"resolved": HEALED, "correcting": 2, "acknowledged": 1, "open": 2}
    resolved = [r for r in recs if r.finding.status is FindingStatus.RESOLVED]
    assert all(r.corrections == 1 and r.resolved_at is not None for r in resolved)
    events = ctx.store.corrections("stock", [r.id for r in recs])
    assert len(events) == HEALED + 2
    assert sum(1 for e in events if e.event.sent_at is None) == 2


# -- overview --------------------------------------------------------------------------------
def test_overview_states_and_numbers(ctx: Context, world: World) -> None:
    ov = D.overview(ctx, specs(world))
    by = {s.name: s for s in ov.specs}
    assert [s.name for s in ov.specs] == ["gated", "stock", "clean"]  # worst state first
    stock = by["stock"]
    assert stock.state == "drift" and stock.flags == ["drift", "correcting"]
    assert stock.open_by_kind == {"missing": 1, "orphan": 0, "mismatch": 1, "duplicate": 0}
    assert (stock.correcting, stock.acknowledged, stock.outbox_unsent, stock.lag) == (2, 1, 2, 0)
    assert stock.last_run is not None and stock.last_run.started_by == "on demand"
    assert stock.recent_step == "6h" and len(stock.recent_drift) in (28, 29)
    assert max(n for _, n in stock.recent_drift) == HEALED
    assert by["clean"].state == "healthy" and by["clean"].flags == []
    gated = by["gated"]
    assert gated.state == "preflight failed" and gated.flags == ["preflight failed", "stale"]
    assert "observed 0, min 30" in gated.reasons[0]
    assert ov.totals()["open"] == 2 and ov.totals()["drift"] == 1


def test_overview_lists_bad_spec_files_and_store_only_specs(ctx: Context, world: World) -> None:
    ov = D.overview(ctx, [world.clean], invalid=[("specs/broken.yaml", "spec specs/broken.yaml: YAML error")])
    names = {s.name: s for s in ov.specs}
    assert names["specs/broken.yaml"].error and names["specs/broken.yaml"].state == "stale"
    assert not names["stock"].spec_file and names["stock"].state == "drift"  # from the store alone


def test_spec_state_order() -> None:
    state, flags, _ = D.spec_state(open_findings=0, correcting=3, latest=None, preflight=None, pipe=None)
    assert (state, flags) == ("correcting", ["correcting"])
    state, _, _ = D.spec_state(open_findings=0, correcting=0, latest=None, preflight=None, pipe=None)
    assert state == "healthy"


# -- one spec --------------------------------------------------------------------------------
def test_spec_detail(ctx: Context, world: World) -> None:
    d = D.spec_detail(ctx, "stock", world.stock)
    assert d is not None
    assert [r.started_by for r in d.runs] == ["on demand", "cli", "schedule", "schedule"]
    assert [r.scope for r in d.runs][2] == f"{HEALED} key(s)"  # verify's re-check
    assert d.resolution == "run" and len(d.series) == 3  # whole-pair runs only
    assert [p["mismatch"] + p["missing"] + p["orphan"] + p["duplicate"] for p in d.series] == [HEALED, 3, 5]
    assert d.findings_total == 5
    rows = {f.key_text: f for f in d.findings}
    assert set(rows) == {OPEN_MISMATCH, ACKED, RETURNED, *CORRECTING}
    m = rows[OPEN_MISMATCH]
    assert m.kind == "mismatch" and m.columns == ["on_hand"]
    assert ("on_hand", 20, 27, True) in m.values and ("title", "item 20", "item 20", False) in m.values
    assert rows[CORRECTING[0]].to_dict()["projection"] is None  # missing: no projection side
    assert d.funnel == {
        "found": HEALED + 5,
        "corrected": HEALED + 2,
        "resolved": HEALED,
        "healed_by_correction": HEALED,
        "escalated": 0,
        "open": 2,
        "correcting": 2,
        "acknowledged": 1,
    }
    assert d.time_to_heal["count"] == HEALED and 0 < d.time_to_heal["p50"] <= d.time_to_heal["max"] < 60
    assert d.spec is not None and "sqlite" in d.spec["truth"]
    assert D.spec_detail(ctx, "no-such-spec") is None


def test_spec_detail_of_a_store_only_spec_and_a_failed_gate(ctx: Context, world: World) -> None:
    d = D.spec_detail(ctx, "stock")  # no spec file given
    assert d is not None and d.spec is None and d.findings_total == 5
    g = D.spec_detail(ctx, "gated", world.gated)
    assert g is not None and g.preflight is not None and not g.preflight["success"]
    assert g.runs == [] and g.series == []


def test_drift_series_resamples_when_runs_are_many() -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    runs = [
        RunRecord(
            f"r{i}",
            "s",
            t0 + timedelta(minutes=10 * i),
            t0 + timedelta(minutes=10 * i, seconds=3),
            "drift",
            "stream",
            {"keys": None, "where": None},
            {"compared": 100, "pending": i % 3, "missing": i % 6, "orphan": 0, "mismatch": 1, "duplicate": 0},
        )
        for i in range(6 * 48)  # every 10 minutes for two days
    ]
    resolution, points = D.drift_series(runs, max_points=120)
    assert resolution == "hour" and len(points) == 48
    assert all(p["missing"] == 5 for p in points)  # the worst of each hour
    resolution, points = D.drift_series(runs, max_points=10)
    assert resolution == "6 hours" and len(points) == 8
    resolution, points = D.drift_series(runs[:50])
    assert resolution == "run" and len(points) == 50


# -- one finding -----------------------------------------------------------------------------
def test_finding_detail_of_a_healed_entity(ctx: Context, world: World) -> None:
    d = D.finding_detail(ctx, "stock", "S00003", world.stock)
    assert d is not None and d.key == {"sku": "S00003"} and len(d.episodes) == 1
    (e,) = d.episodes
    assert e.finding.status == "resolved" and e.finding.kind == "missing"
    (event,) = e.corrections
    assert event["sent_at"] is not None and event["verified_at"] == e.finding.resolved_at
    assert [saw for _, saw in e.runs] == ["first seen", "resolved it"]
    assert [what.split(":")[0].split(" ")[0] for _, what in e.timeline] == [
        "first",
        "corrective",
        "corrective",
        "resolved",
    ]


def test_finding_detail_of_an_entity_with_two_episodes(ctx: Context, world: World) -> None:
    d = D.finding_detail(ctx, "stock", RETURNED)
    assert d is not None
    assert [e.finding.status for e in d.episodes] == ["open", "resolved"]
    assert d.episodes[0].corrections == [] and len(d.episodes[1].corrections) == 1
    assert [saw for _, saw in d.episodes[0].runs] == ["first seen"]
    c = D.finding_detail(ctx, "stock", CORRECTING[0])
    assert c is not None and [e.finding.status for e in c.episodes] == ["correcting"]
    (event,) = c.episodes[0].corrections
    assert event["sent_at"] is None and event["verified_at"] is None
    assert [saw for _, saw in c.episodes[0].runs] == ["first seen", "last seen"]
    assert c.to_dict()["episodes"][0]["corrections"][0]["created_at"].endswith("Z")


def test_finding_keys_resolve_in_every_form(ctx: Context, world: World) -> None:
    for key in ("S00020", '{"sku": "S00020"}'):
        d = D.finding_detail(ctx, "stock", key, world.stock)
        assert d is not None and d.key_text == "S00020", key
    assert D.finding_detail(ctx, "stock", "S99999") is None
    assert D.finding_detail(ctx, "stock", "{not json") is None
    assert D._candidate_ids("W1:7", ["warehouse", "n"]) == [
        '{"n":"7","warehouse":"W1"}',
        '{"n":7,"warehouse":"W1"}',
    ]
    assert D.key_text({"a": "x:y", "b": 1}) == '{"a":"x:y","b":1}'
    assert D.key_text({"a": "W1", "b": "x:y"}) == "W1:x:y"  # the last part may hold a colon


# -- exports ---------------------------------------------------------------------------------
def test_findings_csv(ctx: Context, world: World) -> None:
    found = ctx.store.findings("stock", ["open", "correcting", "acknowledged"])
    text = D.findings_csv("stock", found)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 5
    first = rows[0]
    assert list(first)[:4] == ["spec", "key", "key.sku", "kind"]
    m = next(r for r in rows if r["key"] == OPEN_MISMATCH)
    assert (m["kind"], m["columns"], m["truth.on_hand"], m["projection.on_hand"]) == (
        "mismatch",
        "on_hand",
        "20",
        "27",
    )
    assert D.findings_csv("stock", []).strip().startswith("spec,key,kind")


# -- metrics ---------------------------------------------------------------------------------
def test_snapshot_zero_fills_and_reads_lag(ctx: Context, world: World) -> None:
    snap = snapshot(ctx, specs(world))
    assert snap.specs == ["clean", "gated", "stock"]
    assert snap.findings[("clean", "missing", "open")] == 0
    assert snap.findings[("stock", "mismatch", "open")] == 1
    assert len(snap.findings) == 3 * 4 * 3
    assert snap.outbox["stock"][0] == 2 and snap.outbox["stock"][1] is not None
    assert snap.outbox["clean"] == (0, None)
    assert snap.lag["stock"].messages == 0 and snap.lag["stock"].consumer_group == "stock-projector"
    assert snap.heal["stock"].bounds == tuple(float(b) for b in HEAL_BUCKETS)


# -- pandas stays out of audits ----------------------------------------------------------------
def test_audits_do_not_import_pandas() -> None:
    code = (
        "import sys, reconcile.app, reconcile.cli, reconcile.app.metrics, reconcile.store.queries; "
        "sys.exit('pandas imported' if 'pandas' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_world_builds_spec_files(world: World) -> None:
    assert sorted(p.name for p in Path(world.specs_dir).iterdir()) == [
        "clean.yaml",
        "gated.yaml",
        "stock.yaml",
    ]


def test_heal_cache_recounts_a_spec_only_when_it_has_new_runs(ctx: Context, world: World) -> None:
    from reconcile.app.metrics import HealCache

    asked: list[list[str] | None] = []
    store = ctx.store
    real = store.heal_histograms

    def counting(bounds, specs=None):  # type: ignore[no-untyped-def]
        asked.append(None if specs is None else sorted(specs))
        return real(bounds, specs)

    store.heal_histograms = counting  # type: ignore[method-assign]
    try:
        cache = HealCache()
        first = snapshot(ctx, specs(world), lag=False, heal_cache=cache)
        again = snapshot(ctx, specs(world), lag=False, heal_cache=cache)
        assert asked == [["clean", "stock"]] and again.heal == first.heal
        runs = dict(store.run_counts())
        runs[("stock", "clean")] += 1  # as if stock had one more run
        assert cache.histograms(store, runs, HEAL_BUCKETS)["stock"].count == HEALED
        assert asked[-1] == ["stock"]
    finally:
        del store.heal_histograms  # type: ignore[method-assign]


def test_the_store_counts_findings_from_an_index(ctx: Context) -> None:
    import sqlalchemy as sa

    engine = ctx.store.engine  # type: ignore[attr-defined]
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("reconcile_findings")}
    assert "ix_reconcile_findings_status_spec_kind" in names
