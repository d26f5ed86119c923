"""Preflight gates against the real PostgreSQL: a collapsed projection stops the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from reconcile.app import Context, audit, gate, preflight
from reconcile.errors import PreflightFailed, SourceError
from reconcile.spec import load_spec, spec_from_dict
from reconcile.store import AuditStore
from reconcile.store.preflight import preflight_history

from .audit_cases import build, spec_file
from .builders import execute, make_table

pytestmark = pytest.mark.integration


def test_gate_stops_when_the_projection_read_returns_nothing(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    build(truth, proj)
    spec = load_spec(spec_file(tmp_path, truth, proj))
    store = AuditStore(store_url)
    first = audit(Context.of(store), spec)  # the last successful audit: 21 truth rows, 22 projection rows
    assert (first.summary.truth_rows, first.summary.projection_rows) == (21, 22)
    assert gate(Context.of(store), spec, docs_dir=tmp_path / "docs").success

    execute(proj, "TRUNCATE stock_view")
    with pytest.raises(PreflightFailed) as err:
        gate(Context.of(store), spec, docs_dir=tmp_path / "docs")
    assert str(err.value) == (
        "preflight inventory: projection: expect_table_row_count_to_be_between failed (observed 0, min 11)"
    )
    assert err.value.exit_code == 2
    latest, earlier = preflight_history(store, "inventory")[:2]
    assert (latest.success, earlier.success) == (False, True)
    counts = {
        o["type"]: o["observed"]
        for o in latest.results["sides"]["projection"]["results"]
        if o["observed"] is not None
    }
    assert counts == {"expect_table_row_count_to_be_between": 0}
    assert latest.results["baseline"]["run_id"] == first.run_id
    # The docs show both validations and never the database password.
    html = "".join(p.read_text() for p in (tmp_path / "docs").rglob("*.html"))
    assert "inventory.projection" in html and ":postgres@" not in html
    store.dispose()


def test_row_count_ratio_and_scoped_audits(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    cols = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer)]
    make_table(truth, "t", cols, [{"id": i, "v": i} for i in range(1000)])
    make_table(
        proj,
        "p",
        [sa.Column("id", sa.Integer), sa.Column("v", sa.Integer)],
        [{"id": i, "v": i} for i in range(1000)],
    )
    spec = spec_from_dict(
        {
            "name": "ratio",
            "truth": {"url": truth, "table": "t"},
            # A query side with a filter: GX validates the same rows the audit reads.
            "projection": {"url": proj, "query": "SELECT id, v FROM p", "where": "v >= 0"},
            "key": ["id"],
            "columns": ["v"],
            "checks": {"min_row_ratio": 0.8},
        },
        "ratio.yaml",
    )
    store = AuditStore(f"sqlite:///{tmp_path / 's.db'}")
    audit(Context.of(store), spec)
    audit(Context.of(store), spec, keys=[(1,), (2,)])  # a scoped audit must not become the baseline
    execute(proj, "DELETE FROM p WHERE id >= 850")
    assert preflight(Context.of(store), spec, build_docs=False).success  # 850 >= 800
    execute(proj, "UPDATE p SET v = -1 WHERE id >= 700")  # filtered out by `where`: 700 rows left
    result = preflight(Context.of(store), spec, build_docs=False)
    assert [o.describe() for o in result.failures] == [
        "projection: expect_table_row_count_to_be_between failed (observed 700, min 800)"
    ]
    assert result.side("projection").source.startswith("query at postgresql://postgres:***@")


def test_unreachable_side_is_one_masked_source_error(tmp_path: Path, pg_url: str) -> None:
    make_table(pg_url, "t", [sa.Column("id", sa.Integer)], [{"id": 1}])
    dead = "postgresql://postgres:s3cret@127.0.0.1:1/nowhere"
    spec = spec_from_dict(
        {
            "name": "dead",
            "truth": {"url": pg_url, "table": "t"},
            "projection": {"url": dead, "table": "t"},
            "key": ["id"],
        }
    )
    with pytest.raises(SourceError) as err:
        preflight(Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}")), spec, build_docs=False)
    msg = str(err.value)
    assert msg.startswith("projection: database at postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere")
    assert "s3cret" not in msg and "\n" not in msg
