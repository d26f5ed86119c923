"""Checksum pushdown on PostgreSQL pairs: the same findings and summaries as the streaming path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app import Context, audit
from reconcile.app.audit import open_pair
from reconcile.errors import SpecError
from reconcile.findings import FindingStatus, RunResult
from reconcile.sources.checksum import checksum_diff
from reconcile.spec import Spec, load_spec, spec_from_dict
from reconcile.store import AuditStore

from .audit_cases import build, spec_file
from .builders import execute, make_table

pytestmark = pytest.mark.integration

OLD = datetime(2026, 1, 1)


def view(r: RunResult) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """What a user sees of a run, minus ids and times."""
    fs = [{k: v for k, v in f.to_dict().items() if k != "first_seen"} for f in r.findings]
    return sorted(fs, key=lambda d: json.dumps(d, sort_keys=True)), r.summary.to_dict()


def both(spec: Spec, stores: tuple[AuditStore, AuditStore], **kw: Any) -> tuple[RunResult, RunResult]:
    """Audit with each strategy (each with its own store), and check they agree."""
    s = audit(Context.of(stores[0]), spec, strategy="stream", **kw)
    c = audit(Context.of(stores[1]), spec, strategy="checksum", **kw)
    assert (s.strategy, c.strategy) == ("stream", "checksum")
    assert view(c) == view(s)
    return s, c


def stores(tmp: Path) -> tuple[AuditStore, AuditStore]:
    return AuditStore(f"sqlite:///{tmp / 's1.db'}"), AuditStore(f"sqlite:///{tmp / 's2.db'}")


def run_checksum(spec: Spec, **kw: Any) -> Any:
    """checksum_diff on the spec's pair, now, with ``kw``."""
    pair = open_pair(Context(store_url="sqlite://"), spec)
    try:
        return checksum_diff(
            pair.truth,
            pair.projection,
            pair.plans(),
            pair.rules,
            spec.key_truth,
            now=datetime.now(UTC),
            grace=spec.freshness.grace,
            **kw,
        )
    finally:
        pair.close()


def test_shared_scenario_every_kind_where_and_lifecycle(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    """The scenario of audit_cases: renamed composite key, float vs numeric, normalisers, pending."""
    t, p = make_pg_db("truth"), make_pg_db("proj")
    build(t, p)
    spec = load_spec(spec_file(tmp_path, t, p))
    st = stores(tmp_path)
    s1, _ = both(spec, st)
    assert (s1.summary.compared, s1.summary.pending, s1.summary.drift) == (22, 1, 4)
    both(spec, st)  # seen twice
    execute(p, "UPDATE stock_view SET on_hand = 7 WHERE product_id = 'A-7'")
    both(spec, st, where="warehouse = 'W1'")
    for store in st:
        statuses = {f.key["sku"]: f.status for f in store.findings("inventory", list(FindingStatus))}
        assert statuses["A-7"] is FindingStatus.RESOLVED and statuses["A-3"] is FindingStatus.OPEN
    # Every row differs in representation (title case, float price): auto sees no gain and streams.
    assert audit(Context.of(st[0]), spec).strategy == "stream"


def _accounts(truth: str, proj: str, n: int = 4000) -> Spec:
    """Same types on both sides, so almost every bucket matches; drift of every kind planted."""

    def cols() -> list[sa.Column[Any]]:
        return [
            sa.Column("balance", sa.Numeric(12, 2)),
            sa.Column("name", sa.Text),
            sa.Column("status", sa.Text),
            sa.Column("updated_at", sa.DateTime),
        ]

    rows: list[dict[str, Any]] = [
        {
            "region": "eu" if i % 2 else "us",
            "id": i,
            "balance": Decimal(i) / 4,
            "name": f"Name {i}",
            "status": "ok",
            "updated_at": OLD,
        }
        for i in range(n)
    ]
    make_table(
        truth,
        "accounts",
        [
            sa.Column("region", sa.String(8), primary_key=True),  # MariaDB keys need a length
            sa.Column("id", sa.Integer, primary_key=True),
            *cols(),
        ],
        rows,
    )
    prows: list[dict[str, Any]] = []
    for r in rows:
        i = r["id"]
        q: dict[str, Any] = {**r, "account_id": i}
        del q["id"]
        if i in (11, 1500, 3999):  # missing
            continue
        if i in (20, 2000, 3001):  # mismatch
            q["status"] = "closed"
        if i == 21:  # NULL facing '' is drift
            q["status"] = None
        if i == 23:
            q["status"] = ""
        if i in (30, 2500):  # within tolerance: not drift
            q["balance"] = r["balance"] + Decimal("0.01")
        if i in (40, 2600):  # only case and spaces: not drift
            q["name"] = f"  NAME {i} "
        if i in (50, 51):  # pending: truth changed a moment ago
            q["status"] = "old"
        prows.append(q)
        if i in (60, 3333):  # duplicate
            prows.append(dict(q))
    prows += [{**prows[0], "account_id": 10_000 + j, "region": "eu"} for j in range(3)]  # orphans
    make_table(
        proj,
        "account_view",
        [sa.Column("region", sa.String(8)), sa.Column("account_id", sa.Integer), *cols()],
        prows,
    )
    execute(truth, "UPDATE accounts SET updated_at = :now WHERE id IN (50, 51)", now=datetime.now(UTC))
    return spec_from_dict(
        {
            "name": "accounts",
            "truth": {"url": truth, "table": "accounts"},
            "projection": {"url": proj, "table": "account_view"},
            "key": ["region", {"id": "account_id"}],
            "columns": {
                "balance": {"tolerance": 0.01},
                "name": {"normalize": ["strip", "casefold"]},
                "status": {},
            },
            "freshness": {"truth_column": "updated_at", "grace": "5m"},
        }
    )


def test_matching_buckets_are_skipped_and_findings_stay(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    t, p = make_pg_db("truth"), make_pg_db("proj")
    spec = _accounts(t, p)
    st = stores(tmp_path)
    s, c = both(spec, st)
    sm = s.summary
    assert (sm.missing, sm.orphan, sm.mismatch, sm.duplicate, sm.pending) == (3, 3, 5, 2, 2)
    assert (sm.compared, sm.truth_rows, sm.projection_rows) == (4003, 4000, 4002)
    auto = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 'auto.db'}")), spec)
    assert auto.strategy == "checksum" and view(auto) == view(c)  # auto picks it: few buckets differ

    got = run_checksum(spec, first_bits=10)
    assert got is not None
    assert got.stats.fetched_truth < 400 and got.stats.skipped_rows > 3500
    assert len(got.outcome.findings) == 13

    # A filter, and a finding healed behind reconcile's back: resolved under both strategies.
    execute(p, "UPDATE account_view SET status = 'ok' WHERE account_id = 2001 - 1")
    s, c = both(spec, st, where="region = 'us'")
    assert s.summary.compared < 2100
    for store in st:
        f = {x.key["id"]: x.status for x in store.findings("accounts", list(FindingStatus))}
        assert f[2000] is FindingStatus.RESOLVED and f[20] is FindingStatus.OPEN


def test_refinement_levels(tmp_path: Path, make_pg_db, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from reconcile.sources import checksum

    monkeypatch.setattr(checksum, "REFINE_ROWS", 10)
    t, p = make_pg_db("truth"), make_pg_db("proj")
    spec = _accounts(t, p)
    got = run_checksum(spec, first_bits=6, fallback=False)
    assert got is not None and [lv.bits for lv in got.stats.levels] == [6, 14, 22]  # MAX_LEVELS
    s = audit(Context.of(stores(tmp_path)[0]), spec, strategy="stream")
    assert sorted(f.key_id for f in got.outcome.findings) == sorted(f.key_id for f in s.findings)
    assert got.outcome.compared == s.summary.compared and got.outcome.pending == s.summary.pending


def test_integer_key_facing_numeric_text(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    t, p = make_pg_db("truth"), make_pg_db("proj")
    make_table(
        t,
        "t",
        [sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer)],
        [{"id": i, "v": i} for i in range(1, 500)],
    )
    make_table(
        p,
        "p",
        [sa.Column("id", sa.Text), sa.Column("v", sa.Numeric(10, 2))],
        [{"id": str(i), "v": i} for i in range(1, 500) if i != 100] + [{"id": "900", "v": 1}],
    )
    spec = spec_from_dict(
        {
            "name": "ids",
            "truth": {"url": t, "table": "t"},
            "projection": {"url": p, "table": "p"},
            "key": ["id"],
            "columns": ["v"],
        }
    )
    st = stores(tmp_path)
    s, _ = both(spec, st)
    assert {(f.kind.value, f.key["id"]) for f in s.findings} == {("missing", 100), ("orphan", 900)}
    # Canonical forms (bigint keys, trim_scale numbers) make the equal rows hash equal.
    assert audit(Context.of(st[1]), spec).strategy == "checksum"


def test_when_checksum_cannot_run(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    t = make_pg_db("truth")
    p = f"sqlite:///{tmp_path / 'p.db'}"
    build(t, p)
    spec = load_spec(spec_file(tmp_path, t, p))
    store = AuditStore(f"sqlite:///{tmp_path / 's.db'}")
    assert audit(Context.of(store), spec).strategy == "stream"
    with pytest.raises(SpecError, match="projection is sqlite"):
        audit(Context.of(store), spec, strategy="checksum")
    with pytest.raises(SpecError, match="--strategy: 'fast'"):
        audit(Context.of(store), spec, strategy="fast")
    t2, p2 = make_pg_db("truth"), make_pg_db("proj")
    build(t2, p2)
    spec2 = load_spec(spec_file(tmp_path, t2, p2))
    assert audit(Context.of(store), spec2, keys=[("W1", "A-7")]).strategy == "stream"
    with pytest.raises(SpecError, match="--keys"):
        audit(Context.of(store), spec2, keys=[("W1", "A-7")], strategy="checksum")


def test_cli_strategy(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    t, p = make_pg_db("truth"), make_pg_db("proj")
    build(t, p)
    path = spec_file(tmp_path, t, p)
    env = {**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    run = [sys.executable, "-m", "reconcile", "audit", str(path), "--format", "json"]
    r = subprocess.run([*run, "--strategy", "checksum"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["strategy"] == "checksum" and doc["summary"]["compared"] == 22
    r = subprocess.run([*run, "--strategy", "fast"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "reconcile: error: --strategy: 'fast' is not one of auto, stream, checksum"
    ]
