"""The audit engine against the real PostgreSQL: PG/PG and PG/SQLite pairs, store on PG."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from reconcile.app import Context, audit
from reconcile.findings import FindingKind
from reconcile.spec import spec_from_dict
from reconcile.store import AuditStore

from .audit_cases import check_scenario
from .builders import make_table

pytestmark = pytest.mark.integration


def test_pg_to_pg(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(tmp_path, make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store"))


def test_pg_to_sqlite_with_sqlite_store(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(
        tmp_path, make_pg_db("truth"), f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 's.db'}"
    )


def test_sqlite_truth_pg_projection(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(tmp_path, f"sqlite:///{tmp_path / 't.db'}", make_pg_db("proj"), make_pg_db("store"))


def test_integer_key_facing_numeric_text_key_and_collation(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    """Truth keys are integers, projection keys text: 9 < 10 on both sides, never '10' < '9'."""
    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    make_table(
        truth,
        "t",
        [sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)],
        [{"id": i, "v": f"v{i}"} for i in range(1, 120)],
    )
    make_table(
        proj,
        "p",
        [sa.Column("id", sa.Text), sa.Column("v", sa.Text)],
        [{"id": str(i), "v": f"v{i}"} for i in range(1, 120) if i != 100] + [{"id": "200", "v": "x"}],
    )
    spec = spec_from_dict(
        {
            "name": "ids",
            "truth": {"url": truth, "table": "t"},
            "projection": {"url": proj, "table": "p"},
            "key": ["id"],
            "columns": {"v": {}},
        }
    )
    result = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}")), spec)
    assert {(f.kind, f.key["id"]) for f in result.findings} == {
        (FindingKind.MISSING, 100),
        (FindingKind.ORPHAN, 200),
    }


def test_text_keys_order_by_code_point_not_locale(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    keys = ["a", "B", "_x", "a-b", "ab", "Z", "é", "a b", "10", "9"]
    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    make_table(truth, "t", [sa.Column("k", sa.Text, primary_key=True)], [{"k": k} for k in keys])
    make_table(proj, "p", [sa.Column("k", sa.Text)], [{"k": k} for k in keys if k != "ab"])
    spec = spec_from_dict(
        {
            "name": "txt",
            "truth": {"url": truth, "table": "t"},
            "projection": {"url": proj, "table": "p"},
            "key": ["k"],
        }
    )
    result = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}")), spec)
    assert [(f.kind, f.key["k"]) for f in result.findings] == [(FindingKind.MISSING, "ab")]


def test_query_side(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    make_table(
        truth,
        "orders",
        [
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("sku", sa.Text),
            sa.Column("qty", sa.Integer),
        ],
        [{"id": i, "sku": f"S{i % 3}", "qty": 1} for i in range(30)],
    )
    make_table(
        proj,
        "sold",
        [sa.Column("sku", sa.Text), sa.Column("qty", sa.Integer)],
        [{"sku": "S0", "qty": 10}, {"sku": "S1", "qty": 10}, {"sku": "S2", "qty": 9}],
    )
    spec = spec_from_dict(
        {
            "name": "sold",
            "truth": {"url": truth, "query": "SELECT sku, sum(qty)::int AS qty FROM orders GROUP BY sku"},
            "projection": {"url": proj, "table": "sold"},
            "key": ["sku"],
            "columns": ["qty"],
        }
    )
    result = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}")), spec)
    assert [(f.kind, f.key["sku"], f.truth, f.projection) for f in result.findings] == [
        (FindingKind.MISMATCH, "S2", {"qty": 10}, {"qty": 9})
    ]
