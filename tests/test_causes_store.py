"""Causes in the audit store: migration 5 upgrades a store written before it (SQLite and
PostgreSQL), and a finding's cause and evidence and a run's cut survive the round trip."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from reconcile.findings import Finding, FindingKind, Summary
from reconcile.store import AuditStore, schema


def _downgrade_to_v4(url: str) -> None:
    """A store as migration 4 left it: no cause, evidence or cut column."""
    from reconcile.db import make_engine

    e = make_engine(url)
    with e.begin() as conn:
        for table, column in (
            ("reconcile_findings", "cause"),
            ("reconcile_findings", "evidence"),
            ("reconcile_runs", "cut"),
        ):
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(sa.text("DELETE FROM reconcile_schema_version WHERE version >= 5"))
    e.dispose()


def _roundtrip(url: str) -> None:
    store = AuditStore(url)
    store.migrate()
    store.dispose()
    _downgrade_to_v4(url)
    store = AuditStore(url)
    try:
        assert store.migrate() == len(schema.MIGRATIONS)
        evidence = ({"event_id": "e-1", "stage": "lost", "source_row": {"event_id": "e-1"}},)
        f = Finding(
            FindingKind.MISMATCH,
            {"warehouse": "W1", "sku": "A"},
            columns=("on_hand",),
            truth={"on_hand": 9},
            projection={"on_hand": 10},
            cause="lost",
            evidence=evidence,
        )
        plain = Finding(FindingKind.MISSING, {"warehouse": "W1", "sku": "B"}, truth={"on_hand": 1})
        now = datetime.now(UTC)
        cut = {"topic": "t", "end_offsets": {"0": 4}, "settle": {"reached": True}}
        store.record_run(
            run_id="00000000-0000-0000-0000-000000000001",
            spec="inv",
            started_at=now,
            finished_at=now,
            strategy="stream",
            scope={},
            summary=Summary(),
            seen=[f, plain],
            clean=set(),
            pending=set(),
            resolve_unseen=True,
            confirm_runs=1,
            cut=cut,
        )
        got = {x.key["sku"]: x for x in store.active_findings("inv")}
        assert got["A"].cause == "lost" and got["A"].evidence == evidence
        assert got["B"].cause is None and got["B"].evidence == ()
        run = store.latest_run("inv")
        assert run is not None and run.cut == cut
        assert store.runs("inv")[0].cut == cut
    finally:
        store.dispose()


def test_sqlite_store_migrates_to_causes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _roundtrip(f"sqlite:///{tmp_path / 'store.db'}")


@pytest.mark.integration
def test_postgresql_store_migrates_to_causes(make_pg_db: Callable[[str], str]) -> None:
    _roundtrip(make_pg_db("store"))


@pytest.mark.integration
def test_mariadb_store_migrates_to_causes(make_mysql_db: Callable[[str], str]) -> None:
    _roundtrip(make_mysql_db("store"))
