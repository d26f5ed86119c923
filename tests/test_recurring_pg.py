"""Issue 15, cases 2 and 3, against the real PostgreSQL (and Kafka): concurrent audits of one
spec, and drift that comes back in the same form healing every time."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app import Context, Projector, audit, correct, relay, verify
from reconcile.events.kafka import KafkaSettings
from reconcile.findings import FindingStatus

from .builders import engine, execute, make_table
from .heal_cases import heal_spec, write_spec_file

pytestmark = pytest.mark.integration


def _pair(truth: str, proj: str, n: int, drifted: int) -> None:
    cols: list[sa.Column[Any]] = [
        sa.Column("sku", sa.String(20), primary_key=True),
        sa.Column("on_hand", sa.Integer),
        sa.Column("title", sa.Text),
    ]
    rows: list[dict[str, Any]] = [{"sku": f"S{i:05d}", "on_hand": i, "title": f"item {i}"} for i in range(n)]
    make_table(truth, "stock", cols, rows)
    make_table(
        proj,
        "stock_view",
        [
            sa.Column("product_id", sa.String(20), primary_key=True),
            sa.Column("on_hand", sa.Integer),
            sa.Column("title", sa.Text),
        ],
        [
            {"product_id": r["sku"], "on_hand": r["on_hand"] + (1 if i < drifted else 0), "title": r["title"]}
            for i, r in enumerate(rows)
        ],
    )


def test_three_parallel_audits_of_one_spec_leave_one_finding_per_entity(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    _pair(truth, proj, 4000, 2000)
    spec = write_spec_file(
        tmp_path / "s.yaml", heal_spec(truth, proj, topic="t", group="g", transport="kafka")
    )
    env = {**os.environ, "RECONCILE_STORE_URL": store_url}
    cmd = [sys.executable, "-m", "reconcile", "audit", str(spec), "--format", "json", "--strategy", "stream"]
    # (stdout to nowhere: a JSON of 2,000 findings fills a pipe nobody reads while the others wait)
    procs = [
        subprocess.Popen(
            [*cmd, "--wait"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1, 1], errs
    e = engine(store_url)
    with e.connect() as c:
        rows = c.execute(
            sa.text("SELECT key_id, times_seen FROM reconcile_findings WHERE status = 'open'")
        ).all()
    assert len(rows) == 2000 and {t for _, t in rows} == {3}

    # Without --wait the runs that overlap exit 2 and write nothing; the drift heals, the
    # findings resolve, and nothing duplicated stays open.
    # (stdout to nowhere: a JSON of 2,000 findings fills a pipe nobody reads while the others wait)
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {1, 2} and 1 in codes
    for err, code in zip(errs, codes, strict=True):
        if code == 2:
            assert "another audit is running" in err
    execute(proj, "UPDATE stock_view SET on_hand = CAST(substr(product_id, 2) AS int)")
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    with e.connect() as c:
        active = c.execute(
            sa.text("SELECT count(*) FROM reconcile_findings WHERE status IN ('open', 'correcting')")
        ).scalar()
    e.dispose()
    assert active == 0


def test_drift_that_comes_back_in_the_same_form_heals_every_time(
    make_pg_db, make_store, kafka_bootstrap, topic
) -> None:  # type: ignore[no-untyped-def]
    truth, proj, store_url = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    _pair(truth, proj, 50, 0)
    group = f"projector-{uuid.uuid4().hex[:8]}"
    spec = heal_spec(truth, proj, topic=topic, group=group, transport="kafka", max_ratio=1.0)
    store = make_store(store_url)
    ctx = Context.of(store, kafka=KafkaSettings(kafka_bootstrap))
    ids: list[set[str]] = []
    for episode in (1, 2, 3):
        execute(proj, "UPDATE stock_view SET on_hand = 999 WHERE product_id IN ('S00003', 'S00007')")
        found = audit(ctx, spec)
        assert {f.key["sku"] for f in found.findings} == {"S00003", "S00007"}
        assert {f.episode for f in found.findings} == {episode}
        corrected = correct(ctx, spec)
        assert corrected.written == 2, f"episode {episode}: the correction must not be a no-op"
        ids.append({e.id for e in corrected.events})
        assert relay(ctx, spec_name=spec.name).sent == 2
        projector = Projector(ctx, spec)
        projector.run(idle_timeout_s=2, max_seconds=60)
        projector.close()
        v = verify(ctx, spec)
        assert (v.resolved, v.escalated) == (2, 0), v.to_dict()
        assert audit(ctx, spec).findings == []
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    resolved = store.findings(spec.name, [FindingStatus.RESOLVED.value])
    assert sorted(f.episode for f in resolved) == [1, 1, 2, 2, 3, 3]
