"""Stores written by an older reconcile migrate forward: migration 7's index swap."""

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
        assert store.migrate() == len(schema.MIGRATIONS) == 7
        names = _indexes(store)
        assert "ix_reconcile_findings_spec_status_id" in names
        assert "ix_reconcile_findings_spec_status" not in names
        assert store.migrate() == 7  # nothing left to do, and doing it again is harmless
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
