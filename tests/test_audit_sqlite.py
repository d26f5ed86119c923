"""The audit engine end to end on SQLite files (no services needed)."""

from __future__ import annotations

from pathlib import Path

from .audit_cases import check_scenario


def test_sqlite_pair(tmp_path: Path) -> None:
    check_scenario(
        tmp_path,
        f"sqlite:///{tmp_path / 'truth.db'}",
        f"sqlite:///{tmp_path / 'proj.db'}",
        f"sqlite:///{tmp_path / 'store.db'}",
    )
