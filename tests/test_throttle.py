"""Gentle on production: `throttle:` paces scans in chunks and pauses while the database is
busy; `statement_timeout:` stops a statement that runs too long, with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from reconcile.app import Context, audit
from reconcile.errors import SourceError, SpecError
from reconcile.sources.throttle import MAX_ROWS, MIN_ROWS, Throttle
from reconcile.spec import spec_from_dict
from reconcile.store import AuditStore

from .builders import make_table


# -- the pacing, without a database ---------------------------------------------------------
def test_chunks_are_sized_to_the_target_time() -> None:
    t = Throttle("truth", chunk_time_s=0.5)
    t.done(t.rows, 0.05)  # 10x too fast: grows, at most 4x per chunk
    assert t.rows == 4_000
    t.done(t.rows, 1.0)  # 2x too slow: halves
    assert t.rows == 2_000
    t.done(10, 5.0)  # a short last chunk says nothing about speed
    assert t.rows == 2_000 and t.chunks == 3
    for _ in range(50):
        t.done(t.rows, 100.0)
    assert t.rows == MIN_ROWS
    for _ in range(50):
        t.done(t.rows, 0.0)
    assert t.rows == MAX_ROWS


def test_a_busy_database_pauses_the_scan_until_it_calms_down() -> None:
    busy = iter([5, 4, 3, 1, 9, 0])
    slept: list[float] = []
    t = Throttle("projection", 0.5, max_active=2, probe=lambda: next(busy), sleep=slept.append)
    t.wait()
    assert t.pauses == 1 and len(slept) == 3 and slept == sorted(slept) and t.busiest == 5
    t.wait()  # 9 > 2 again: a second pause
    assert t.pauses == 2


def test_no_limit_means_no_probe() -> None:
    t = Throttle("truth", 0.5, max_active=None, probe=lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    t.wait()
    assert t.pauses == 0


@pytest.mark.parametrize(
    "throttle, why",
    [
        ({"chunk_time": 0}, "must be more than 0"),
        ({"chunk_time": "soon"}, "not a duration"),
        ({"max_active_sessions": 0}, "greater than or equal to 1"),
        ({"chunks": 3}, "unknown key"),
    ],
)
def test_bad_throttle_is_a_spec_error(throttle: dict[str, Any], why: str) -> None:
    doc = {
        "name": "x",
        "truth": {"url": "sqlite://", "table": "t"},
        "projection": {"url": "sqlite://", "table": "p"},
        "key": ["id"],
        "throttle": throttle,
    }
    with pytest.raises(SpecError, match=why):
        spec_from_dict(doc)


# -- against the real PostgreSQL ------------------------------------------------------------
N = 20_000


def _pair(make_pg_db: Any) -> tuple[str, str]:
    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    cols: list[sa.Column[Any]] = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)]
    make_table(truth, "t", cols, [{"id": i, "v": f"v{i}"} for i in range(N)])
    cols = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)]
    make_table(proj, "p", cols, [{"id": i, "v": "x" if i % 5000 == 7 else f"v{i}"} for i in range(1, N)])
    return truth, proj


def _doc(truth: str, proj: str, **more: Any) -> dict[str, Any]:
    return {
        "name": "paced",
        "truth": {"url": truth, "table": "t"},
        "projection": {"url": proj, "table": "p"},
        "key": ["id"],
        "columns": {"v": {}},
        **more,
    }


@pytest.mark.integration
def test_a_throttled_audit_reads_in_chunks_and_finds_the_same_drift(tmp_path: Path, make_pg_db: Any) -> None:
    truth, proj = _pair(make_pg_db)
    ctx = Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}"))
    plain = audit(ctx, spec_from_dict(_doc(truth, proj)))
    paced = audit(ctx, spec_from_dict(_doc(truth, proj, throttle={"chunk_time": "20ms"})))
    want = {(f.kind.value, f.key["id"]) for f in plain.findings}
    assert want == {("missing", 0)} | {("mismatch", i) for i in (7, 5007, 10007, 15007)}
    assert {(f.kind.value, f.key["id"]) for f in paced.findings} == want
    assert paced.strategy == "stream" and "throttle" not in plain.scope
    for role in ("truth", "projection"):
        t = paced.scope["throttle"][role]
        assert t["chunks"] > 2 and t["pauses"] == 0 and t["chunk_time_s"] == 0.02


@pytest.mark.integration
def test_the_scan_pauses_while_the_database_is_busier_than_the_limit(tmp_path: Path, make_pg_db: Any) -> None:
    truth, proj = _pair(make_pg_db)
    ctx = Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}"))
    engine = sa.create_engine(sa.make_url(truth).set(drivername="postgresql+psycopg"))
    started = threading.Barrier(3)

    def busy() -> None:  # two sessions running a statement for 2 s: the database is "busy"
        with engine.connect() as c:
            started.wait()
            c.execute(sa.text("SELECT pg_sleep(2)"))

    workers = [threading.Thread(target=busy) for _ in range(2)]
    for w in workers:
        w.start()
    started.wait()
    try:
        doc = _doc(truth, proj, throttle={"chunk_time": "50ms", "max_active_sessions": 1})
        result = audit(ctx, spec_from_dict(doc))
    finally:
        for w in workers:
            w.join()
        engine.dispose()
    t = result.scope["throttle"]["truth"]
    assert t["pauses"] >= 1 and t["paused_s"] > 0.5 and t["busiest"] >= 2
    assert len(result.findings) == 5


@pytest.mark.integration
def test_a_statement_over_the_timeout_stops_with_one_clear_line(tmp_path: Path, make_pg_db: Any) -> None:
    truth, proj = _pair(make_pg_db)
    doc = _doc(truth, proj, statement_timeout="200ms")
    doc["truth"] = {"url": truth, "query": "SELECT id, v FROM t WHERE pg_sleep(0.5) IS NOT NULL"}
    ctx = Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}"))
    with pytest.raises(SourceError, match=r"^truth: .*statement timeout.*`statement_timeout:`") as e:
        audit(ctx, spec_from_dict(doc))
    assert "\n" not in str(e.value)


@pytest.mark.integration
def test_cli_flags_override_the_spec_and_bad_ones_exit_2(tmp_path: Path, make_pg_db: Any) -> None:
    truth, proj = _pair(make_pg_db)
    path = tmp_path / "paced.yaml"
    path.write_text(yaml.safe_dump(_doc(truth, proj)))
    env = {**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    cmd = [sys.executable, "-m", "reconcile", "audit", str(path), "--format", "json"]
    ok = subprocess.run([*cmd, "--chunk-time", "30ms"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 1, ok.stderr
    import json

    doc = json.loads(ok.stdout)
    assert doc["scope"]["throttle"]["truth"]["chunks"] > 2
    bad = subprocess.run([*cmd, "--chunk-time", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--chunk-time" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.integration
def test_mariadb_sides_are_paced_and_their_sessions_counted(tmp_path: Path, make_mysql_db: Any) -> None:
    truth, proj = make_mysql_db("truth"), make_mysql_db("proj")
    cols: list[sa.Column[Any]] = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", sa.String(20)),
    ]
    make_table(truth, "t", cols, [{"id": i, "v": f"v{i}"} for i in range(1, 5_001)])
    cols = [sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), sa.Column("v", sa.String(20))]
    make_table(proj, "p", cols, [{"id": i, "v": f"v{i}"} for i in range(2, 5_001)])
    ctx = Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}"))
    doc = _doc(truth, proj, throttle={"chunk_time": "10ms", "max_active_sessions": 50})
    result = audit(ctx, spec_from_dict(doc))
    assert [(f.kind.value, f.key["id"]) for f in result.findings] == [("missing", 1)]
    t = result.scope["throttle"]["truth"]
    assert t["chunks"] > 2 and t["pauses"] == 0  # the probe ran (50 is never reached here)
