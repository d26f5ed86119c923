"""One audit scenario, run against several engine pairs (SQLite/SQLite, PG/PG, PG/SQLite).

The truth is a stock table with a composite key (warehouse, sku); the projection renames sku to
product_id and price to unit_price, stores price as a float and title in other case/spacing.
Drift planted: A-3 missing, A-99 orphan, A-7 mismatched on_hand, A-5 duplicated, A-9 changed
a moment ago (pending), A-11 a price off by less than the tolerance (not drift).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from reconcile.app import Context, audit
from reconcile.findings import FindingKind, FindingStatus
from reconcile.spec import load_spec
from reconcile.store import AuditStore

from .builders import execute, make_table, write_spec

OLD = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)


def build(truth_url: str, proj_url: str) -> None:
    truth_rows: list[dict[str, Any]] = [
        {
            "warehouse": "W1",
            "sku": f"A-{i}",
            "on_hand": i,
            "price": Decimal(f"{i}.50"),
            "title": f"Item {i}",
            "updated_at": OLD,
        }
        for i in range(20)
    ]
    truth_rows.append({**truth_rows[0], "warehouse": "W2"})  # same sku, other warehouse
    make_table(
        truth_url,
        "stock_levels",
        [
            sa.Column("warehouse", sa.String(10), primary_key=True),
            sa.Column("sku", sa.String(20), primary_key=True),
            sa.Column("on_hand", sa.Integer),
            sa.Column("price", sa.Numeric(10, 2)),
            sa.Column("title", sa.Text),
            sa.Column("updated_at", sa.DateTime),
        ],
        truth_rows,
    )
    proj = []
    for r in truth_rows:
        if r["sku"] == "A-3" and r["warehouse"] == "W1":
            continue
        row = {
            "warehouse": r["warehouse"],
            "product_id": r["sku"],
            "on_hand": r["on_hand"],
            "unit_price": float(r["price"]),
            "title": "  " + r["title"].upper(),
        }
        if r["sku"] == "A-7":
            row["on_hand"] = 70
        if r["sku"] == "A-11":
            row["unit_price"] = float(r["price"]) + 0.004
        if r["sku"] == "A-9":
            row["on_hand"] = 0
        proj.append(row)
        if r["sku"] == "A-5":
            proj.append(dict(row))
    proj.append({"warehouse": "W1", "product_id": "A-99", "on_hand": 1, "unit_price": 1.0, "title": "x"})
    make_table(
        proj_url,
        "stock_view",
        [
            sa.Column("warehouse", sa.String(10)),
            sa.Column("product_id", sa.String(20)),
            sa.Column("on_hand", sa.Integer),
            sa.Column("unit_price", sa.Float),
            sa.Column("title", sa.Text),
        ],
        proj,
    )
    # A-9 changed a moment ago: its event is still in flight.
    execute(
        truth_url,
        "UPDATE stock_levels SET updated_at = :now, on_hand = 999 WHERE sku = 'A-9'",
        now=datetime.now(UTC).replace(tzinfo=None),
    )


SPEC = """
name: inventory
truth:
  url: {truth}
  table: stock_levels
projection:
  url: {proj}
  table: stock_view
key: [warehouse, {{sku: product_id}}]
columns:
  on_hand: {{}}
  price: {{projection: unit_price, tolerance: 0.005}}
  title: {{normalize: [strip, casefold]}}
freshness:
  truth_column: updated_at
  grace: 5m
"""


def spec_file(tmp: Path, truth_url: str, proj_url: str) -> Path:
    return write_spec(tmp / "inventory.yaml", SPEC.format(truth=truth_url, proj=proj_url))


def check_scenario(tmp: Path, truth_url: str, proj_url: str, store_url: str) -> None:
    """The whole lifecycle on one engine pair."""
    build(truth_url, proj_url)
    spec = load_spec(spec_file(tmp, truth_url, proj_url))
    store = AuditStore(store_url)
    r1 = audit(Context.of(store), spec)
    got = {(f.kind, f.key["warehouse"], f.key["sku"]) for f in r1.findings}
    assert got == {
        (FindingKind.MISSING, "W1", "A-3"),
        (FindingKind.ORPHAN, "W1", "A-99"),
        (FindingKind.MISMATCH, "W1", "A-7"),
        (FindingKind.DUPLICATE, "W1", "A-5"),
    }
    s = r1.summary
    assert (s.compared, s.pending, s.missing, s.orphan, s.mismatch, s.duplicate) == (22, 1, 1, 1, 1, 1)
    mm = next(f for f in r1.findings if f.kind is FindingKind.MISMATCH)
    assert mm.truth is not None and mm.projection is not None
    assert mm.columns == ("on_hand",) and mm.truth["on_hand"] == 7 and mm.projection["on_hand"] == 70
    assert r1.exit_code == 1

    # Second run: same findings seen twice; nothing new.
    r2 = audit(Context.of(store), spec)
    assert {f.key_id: f.times_seen for f in r2.findings} == {f.key_id: 2 for f in r1.findings}

    # Restricted by keys: only A-7 is looked at; the others stay open.
    r3 = audit(Context.of(store), spec, keys=[("W1", "A-7")])
    assert [f.key["sku"] for f in r3.findings] == ["A-7"] and r3.summary.compared == 1

    # Heal the projection behind reconcile's back: the mismatch resolves, the rest stays open.
    execute(proj_url, "UPDATE stock_view SET on_hand = 7 WHERE product_id = 'A-7'")
    r4 = audit(Context.of(store), spec, where="warehouse = 'W1'")
    assert FindingKind.MISMATCH not in {f.kind for f in r4.findings}
    statuses = {f.key["sku"]: f.status for f in store.findings(spec.name, [s.value for s in FindingStatus])}
    assert statuses["A-7"] is FindingStatus.RESOLVED
    assert statuses["A-3"] is FindingStatus.OPEN
    store.dispose()
