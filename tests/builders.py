"""Small builders for truth/projection tables on any SQLAlchemy URL (tests only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def engine(url: str) -> sa.Engine:
    from reconcile.db import normalize_url

    return sa.create_engine(normalize_url(url))


def make_table(
    url: str, name: str, columns: Sequence[sa.Column[Any]], rows: Sequence[dict[str, Any]]
) -> None:
    e = engine(url)
    meta = sa.MetaData()
    t = sa.Table(name, meta, *columns)
    meta.drop_all(e)
    meta.create_all(e)
    if rows:
        with e.begin() as conn:
            conn.execute(t.insert(), list(rows))
    e.dispose()


def execute(url: str, sql: str, **params: Any) -> None:
    e = engine(url)
    with e.begin() as conn:
        conn.execute(sa.text(sql), params)
    e.dispose()


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
