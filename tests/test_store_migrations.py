"""Stores written by an older reconcile migrate forward: migration 7's and 8's index swaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from reconcile.store import AuditStore, schema


def _indexes(store: AuditStore) -> set[str]:
    return {i["name"] or "" for i in sa.inspect(store.engine).get_indexes("reconcile_findings")}


def _as_of_v6(url: str) -> None:
    """A store as migration 6 left it: findings indexed by (spec, status), not (spec, status, id)."""
    store = AuditStore(url)
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_reconcile_findings_spec_status_id"))
        conn.execute(
            sa.text("CREATE INDEX ix_reconcile_findings_spec_status ON reconcile_findings (spec, status)")
        )
        conn.execute(sa.text("DELETE FROM reconcile_schema_version WHERE version >= 7"))
    store.dispose()


def _check(url: str) -> None:
    _as_of_v6(url)
    store = AuditStore(url)
    try:
        assert store.migrate() == len(schema.MIGRATIONS) == 8
        names = _indexes(store)
        assert "ix_reconcile_findings_spec_status_id" in names
        assert "ix_reconcile_findings_spec_status" not in names
        assert store.migrate() == 8  # nothing left to do, and doing it again is harmless
    finally:
        store.dispose()


def test_sqlite_store_swaps_the_findings_index(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 's.db'}")


@pytest.mark.integration
def test_postgresql_store_swaps_the_findings_index(make_pg_db) -> None:  # type: ignore[no-untyped-def]
    _check(make_pg_db("store"))


def test_a_new_store_has_only_the_new_index(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'n.db'}")
    store.migrate()
    assert {"ix_reconcile_findings_spec_status_id"} <= _indexes(store)
    assert "ix_reconcile_findings_spec_status" not in _indexes(store)
    store.dispose()


def _seed(store: AuditStore) -> None:
    """Findings of two specs in every status, straight into the table."""
    now = "2026-11-28 10:00:00+00:00"
    rows: list[dict[str, object]] = []
    for spec in ("a", "b"):
        for i, status in enumerate(["open", "open", "correcting", "acknowledged", "resolved", "resolved"]):
            rows.append(
                {
                    "spec": spec,
                    "key_id": f"k{i}",
                    "entity_key": {"id": i},
                    "kind": "missing" if i % 2 else "mismatch",
                    "columns": [],
                    "copies": 1,
                    "status": status,
                    "times_seen": 1,
                    "first_seen": now,
                    "last_seen": now,
                    "first_run_id": "r",
                    "last_run_id": "r",
                    "resolved_at": now if status == "resolved" else None,
                }
            )
    with store.engine.begin() as conn:
        conn.execute(schema.findings.insert(), rows)


@pytest.mark.integration
def test_postgresql_counts_active_findings_from_the_unique_index(make_pg_db) -> None:  # type: ignore[no-untyped-def]
    """Migration 8 on a store holding findings: the (status, spec, kind) index is gone, the
    unique index of active findings carries kind and status, still refuses a second active
    finding of one entity, and the active counts come from it alone (an index-only scan)."""
    url = make_pg_db("store")
    store = AuditStore(url)
    store.migrate()
    with store.engine.begin() as conn:  # back to a store as migration 7 left it
        conn.execute(sa.text("DROP INDEX ux_reconcile_findings_active"))
        conn.execute(
            sa.text(
                "CREATE UNIQUE INDEX ux_reconcile_findings_active ON reconcile_findings (spec, key_id) "
                "WHERE status IN ('open', 'correcting', 'acknowledged')"
            )
        )
        schema.findings_by_status.create(conn)
        conn.execute(sa.text("DELETE FROM reconcile_schema_version WHERE version >= 8"))
    _seed(store)
    store.dispose()
    store = AuditStore(url)  # a new process's store: it migrates once, on first use
    try:
        assert store.migrate() == 8
        names = _indexes(store)
        assert "ix_reconcile_findings_status_spec_kind" not in names
        assert "ux_reconcile_findings_active_v8" not in names
        unique = next(
            i
            for i in sa.inspect(store.engine).get_indexes("reconcile_findings")
            if i["name"] == "ux_reconcile_findings_active"
        )
        assert unique["unique"] and unique["column_names"] == ["spec", "key_id"]
        assert unique["dialect_options"]["postgresql_include"] == ["kind", "status"]
        counts = store.finding_counts()
        assert counts == {
            ("a", "mismatch", "open"): 1,
            ("a", "missing", "open"): 1,
            ("a", "mismatch", "correcting"): 1,
            ("a", "missing", "acknowledged"): 1,
            ("b", "mismatch", "open"): 1,
            ("b", "missing", "open"): 1,
            ("b", "mismatch", "correcting"): 1,
            ("b", "missing", "acknowledged"): 1,
        }
        with store.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE reconcile_findings"))
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # six rows: force the choice
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    sa.text(
                        "EXPLAIN SELECT spec, kind, status, count(*) FROM reconcile_findings "
                        "WHERE status IN ('open', 'correcting', 'acknowledged') GROUP BY spec, kind, status"
                    )
                )
            )
        assert "Index Only Scan using ux_reconcile_findings_active" in plan, plan
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE reconcile_findings SET status = 'open' WHERE spec = 'a' AND key_id = 'k4'")
            )
            conn.execute(
                sa.text("UPDATE reconcile_findings SET key_id = 'k0' WHERE spec = 'a' AND key_id = 'k4'")
            )
    finally:
        store.dispose()
