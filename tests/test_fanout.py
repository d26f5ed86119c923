"""Fan-out: the key space split into ranges, diffed apart and merged, equals one pass (real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app import (
    Context,
    audit,
    audit_fanout,
    audit_range,
    merge_ranges,
    outcome_from_dict,
    outcome_to_dict,
    plan_ranges,
)
from reconcile.findings import RunResult
from reconcile.sources.ranges import KeyRange
from reconcile.spec import load_spec, spec_from_dict
from reconcile.store import AuditStore

from .audit_cases import build, spec_file
from .builders import execute, make_table

pytestmark = pytest.mark.integration


def _view(r: RunResult) -> tuple[Any, ...]:
    findings = sorted(
        (
            f["kind"],
            tuple(sorted(f["key"].items())),
            tuple(f["columns"]),
            tuple(sorted((f["truth"] or {}).items())),
            tuple(sorted((f["projection"] or {}).items())),
        )
        for f in r.to_dict()["findings"]
    )
    return r.summary.to_dict(), findings


def _int_pair(make_pg_db) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    cols = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("qty", sa.Integer)]
    make_table(truth, "t", cols, [{"id": i, "qty": i % 7} for i in range(1, 1001)])
    prows = [{"id": str(i), "qty": i % 7} for i in range(1, 1001) if i % 97]  # missing every 97th
    prows += [{"id": "5000", "qty": 1}, {"id": "-3", "qty": 1}]  # orphans beyond both ends
    prows += [{"id": "500", "qty": 500 % 7}]  # an identical copy of 500
    make_table(proj, "p", [sa.Column("id", sa.Text), sa.Column("qty", sa.Integer)], prows)
    execute(proj, "UPDATE p SET qty = 99 WHERE id IN ('250', '251', '999')")
    return truth, proj


def test_merged_ranges_equal_one_pass_on_int_keys(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    truth, proj = _int_pair(make_pg_db)
    spec = spec_from_dict(
        {
            "name": "ids",
            "truth": {"url": truth, "table": "t"},
            "projection": {"url": proj, "table": "p"},
            "key": ["id"],
            "columns": ["qty"],
        }
    )
    ranges = plan_ranges(Context(store_url=f"sqlite:///{tmp_path / 'p.db'}"), spec, 4)
    assert len(ranges) == 4 and ranges[0].lo is None and ranges[-1].hi is None
    assert [r.hi for r in ranges[:-1]] == [r.lo for r in ranges[1:]] == [251, 501, 751]

    single = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 'a.db'}")), spec)
    fanned = audit_fanout(Context.of(AuditStore(f"sqlite:///{tmp_path / 'b.db'}")), spec, 4)
    assert single.summary.drift == 10 + 2 + 1 + 3
    assert _view(fanned) == _view(single)
    assert fanned.strategy == "fanout" and fanned.scope["ranges"] == 4


def test_ranges_travel_as_json_and_resolve_findings(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    """The Airflow path: ranges and outcomes cross process boundaries as JSON."""
    build(truth := make_pg_db("truth"), proj := make_pg_db("proj"))
    spec = load_spec(spec_file(tmp_path, truth, proj))
    single = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 'a.db'}")), spec)

    store = AuditStore(f"sqlite:///{tmp_path / 'b.db'}")
    ctx = Context.of(store)
    kinds = ["text", "text"]

    def fan() -> RunResult:
        wire = [r.to_dict() for r in plan_ranges(ctx, spec, 3)]
        parts = [
            outcome_to_dict(audit_range(ctx, spec, KeyRange.from_dict(w, kinds[0])), kinds) for w in wire
        ]
        got = [outcome_from_dict(p, spec.key_truth) for p in parts]
        return merge_ranges(ctx, spec, got, started_at=single.started_at, kinds=kinds)

    first = fan()
    assert _view(first) == _view(single)
    # Heal the mismatch: the next fanned run resolves it (watched keys survive the JSON trip).
    execute(proj, "UPDATE stock_view SET on_hand = 7 WHERE product_id = 'A-7'")
    second = fan()
    assert {f.key["sku"] for f in second.findings} == {"A-3", "A-99", "A-5"}
    statuses = {f.key["sku"]: f.status.value for f in store.findings(spec.name, ["resolved"])}
    assert statuses == {"A-7": "resolved"}
