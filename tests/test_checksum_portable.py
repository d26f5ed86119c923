"""Checksum pushdown with MariaDB on either side: MariaDB↔MariaDB and PostgreSQL↔MariaDB.

Both servers hash a canonical text of each row (reconcile.sources.portable); the findings must
be exactly the streaming path's, and rows equal by meaning must hash equal across the engines
(else every bucket would differ and pushdown would save nothing).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from reconcile.app import Context, audit, audit_fanout
from reconcile.errors import SpecError
from reconcile.spec import load_spec, spec_from_dict
from reconcile.store import AuditStore

from .audit_cases import build, spec_file
from .builders import make_table
from .test_checksum_pg import _accounts, both, run_checksum, stores, view

pytestmark = pytest.mark.integration

PAIRS = [("mysql", "mysql"), ("pg", "mysql"), ("mysql", "pg")]


def _dbs(make_pg_db: Any, make_mysql_db: Any, pair: tuple[str, str]) -> tuple[str, str]:
    make = {"pg": make_pg_db, "mysql": make_mysql_db}
    return make[pair[0]]("truth"), make[pair[1]]("proj")


@pytest.mark.parametrize("engines", PAIRS, ids="-".join)
def test_same_findings_as_streaming_and_buckets_skipped(
    tmp_path: Path, make_pg_db, make_mysql_db, engines: tuple[str, str]
) -> None:  # type: ignore[no-untyped-def]
    t, p = _dbs(make_pg_db, make_mysql_db, engines)
    spec = _accounts(t, p)
    s, c = both(spec, stores(tmp_path))
    sm = s.summary
    assert (sm.missing, sm.orphan, sm.mismatch, sm.duplicate, sm.pending) == (3, 3, 5, 2, 2)
    auto = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 'auto.db'}")), spec)
    assert auto.strategy == "checksum" and view(auto) == view(c)

    got = run_checksum(spec, first_bits=10)
    assert got is not None and got.stats.buckets == "hash"  # a text first key column
    # Numbers, texts, NULLs and '' hash alike on both engines: only the drifted rows' buckets differ.
    assert got.stats.fetched_truth < 400 and got.stats.skipped_rows > 3500
    assert len(got.outcome.findings) == 13


@pytest.mark.parametrize("engines", PAIRS, ids="-".join)
def test_shared_scenario_forced_checksum(
    tmp_path: Path, make_pg_db, make_mysql_db, engines: tuple[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Every row differs in representation (float vs numeric, case): all buckets fetched, the
    same findings; auto sees no gain and streams."""
    t, p = _dbs(make_pg_db, make_mysql_db, engines)
    build(t, p)
    spec = load_spec(spec_file(tmp_path, t, p))
    st = stores(tmp_path)
    s, _ = both(spec, st)
    assert (s.summary.compared, s.summary.pending, s.summary.drift) == (22, 1, 4)
    assert audit(Context.of(st[0]), spec).strategy == "stream"
    with pytest.raises(SpecError, match="key ranges cannot run"):
        run_checksum(spec, buckets="range")


def test_types_hash_alike_across_engines(tmp_path: Path, make_pg_db, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """Each type both engines hold, equal by meaning, in different column types where they
    usually differ between a PostgreSQL service and a MariaDB one: no bucket differs."""
    t, p = make_pg_db("truth"), make_mysql_db("proj")
    rows = [
        {
            "id": i,
            "qty": i * 3,
            "price": Decimal(i) / 8,
            "note": None if i % 7 == 0 else ("" if i % 11 == 0 else f"n{i} é"),
            "flag": i % 2 == 0,
            "at": datetime(2026, 1, 1, 12, 0, i % 60, (1000 * i) % 1_000_000),
        }
        for i in range(1, 2001)
    ]
    make_table(
        t,
        "facts",
        [
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("qty", sa.Integer),
            sa.Column("price", sa.Numeric(12, 4)),
            sa.Column("note", sa.Text),
            sa.Column("flag", sa.Boolean),
            sa.Column("at", sa.DateTime),
        ],
        rows,
    )
    make_table(
        p,
        "facts_view",
        [
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("qty", sa.BigInteger),
            sa.Column("price", sa.Numeric(14, 6)),
            sa.Column("note", sa.String(40)),
            sa.Column("flag", sa.Boolean),
            sa.Column("at", mysql.DATETIME(fsp=6)),  # MariaDB keeps no microseconds unless asked
        ],
        rows,
    )
    spec = spec_from_dict(
        {
            "name": "facts",
            "truth": {"url": t, "table": "facts"},
            "projection": {"url": p, "table": "facts_view"},
            "key": ["id"],
            "columns": {"qty": {}, "price": {}, "note": {}, "flag": {}, "at": {}},
        }
    )
    got = run_checksum(spec, first_bits=8)
    assert got is not None
    assert got.outcome.findings == [] and got.stats.skipped_rows == 2000
    assert got.stats.fetched_truth == 0 and got.outcome.compared == 2000


def test_fanout_ranges_push_down(tmp_path: Path, make_pg_db, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """The fan-out's ranges use the same pushdown, and together find what one pass finds."""
    t, p = make_pg_db("truth"), make_mysql_db("proj")
    spec = _accounts(t, p)
    one = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 'one.db'}")), spec)
    fan = audit_fanout(Context.of(AuditStore(f"sqlite:///{tmp_path / 'fan.db'}")), spec, 3)
    assert one.strategy == "checksum"
    assert view(fan)[0] == view(one)[0]


def _orders(truth: str, proj: str, n: int = 5000) -> Any:
    """An integer key on both sides (int4 facing bigint), drift scattered, keys with gaps."""
    rows: list[dict[str, Any]] = [
        {"id": 3 * i + 7, "amount": Decimal(i % 997) / 4, "status": "paid"} for i in range(n)
    ]

    def cols() -> list[sa.Column[Any]]:
        return [sa.Column("amount", sa.Numeric(12, 2)), sa.Column("status", sa.String(12))]

    make_table(
        truth, "orders", [sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), *cols()], rows
    )
    missing = (7, 3007, 3 * (n - 1) + 7)  # the first, one in the middle, the last
    prows = [dict(r) for r in rows if r["id"] not in missing]
    for r in prows:
        if r["id"] in (1000, 9001, 12001):
            r["status"] = "lost"
    prows += [
        {"id": 3 * n + 100, "amount": Decimal(1), "status": "x"},
        {"id": 1, "amount": None, "status": None},
    ]
    make_table(
        proj,
        "orders_view",
        [sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False), *cols()],
        prows,
    )
    return spec_from_dict(
        {
            "name": "orders",
            "truth": {"url": truth, "table": "orders"},
            "projection": {"url": proj, "table": "orders_view"},
            "key": ["id"],
            "columns": {"amount": {}, "status": {}},
        }
    )


@pytest.mark.parametrize("engines", PAIRS, ids="-".join)
def test_integer_keys_use_spans(
    tmp_path: Path, make_pg_db, make_mysql_db, monkeypatch: pytest.MonkeyPatch, engines: tuple[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """An integer first key column: buckets are spans of it, refined and fetched by key range."""
    from reconcile.sources import checksum

    t, p = _dbs(make_pg_db, make_mysql_db, engines)
    spec = _orders(t, p)
    s, c = both(spec, stores(tmp_path))
    sm = s.summary
    assert (sm.missing, sm.orphan, sm.mismatch) == (3, 2, 3)

    got = run_checksum(spec, first_bits=8)
    assert got.stats.buckets == "range" and got.stats.why_hash is None
    assert len(got.outcome.findings) == 8 and got.stats.fetched_truth < 200
    # Refined to spans of one key, then fetched by many spans (or, past MAX_SPANS, by bucket id).
    monkeypatch.setattr(checksum, "REFINE_ROWS", 5)
    monkeypatch.setattr(checksum._IntRanges, "MAX_SPANS", 3)
    fine = run_checksum(spec, first_bits=6)
    assert len(fine.stats.levels) >= 2 and fine.stats.fetched_truth <= 8
    assert sorted(map(repr, fine.outcome.findings)) == sorted(map(repr, got.outcome.findings))
    assert len(run_checksum(spec, buckets="hash").outcome.findings) == 8
