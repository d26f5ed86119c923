"""The one writer among the SQL adapters: applies corrective events to a projection table.

Used only by the reference projector (:mod:`reconcile.app.project`), never by an audit (truth
and projection are read-only to reconcile). A batch is applied, and every applied event id
recorded, in ONE transaction of the projection database, so a redelivered batch is a no-op.

* state event -> the entity's row is replaced by the key + state (deleting duplicates too);
  with ``version_field``, an event older than the row's version is skipped as stale;
* tombstone (no value) -> the entity's rows are deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from ..db import make_engine

__all__ = ["ProjectionWriter", "ProjectorStats", "Incoming", "applied_events"]

_applied_meta = sa.MetaData()
applied_events = sa.Table(
    "reconcile_applied_events",
    _applied_meta,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


@dataclass
class ProjectorStats:
    """Counts of one projector run."""

    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    messages: int = 0


@dataclass(frozen=True)
class Incoming:
    """One corrective event as the projector sees it."""

    event_id: str
    key: dict[str, Any]
    state: dict[str, Any] | None  # None: tombstone


def _coerce(value: Any, column: sa.Column[Any]) -> Any:
    """JSON values into the column's Python type (ISO text -> datetime, float -> Decimal)."""
    if value is None:
        return None
    t = column.type
    if isinstance(t, sa.DateTime) and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(t, sa.Date) and isinstance(value, str):
        return date.fromisoformat(value[:10])
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float) and isinstance(value, float):
        return Decimal(repr(value))
    return value


class ProjectionWriter:
    """Applies corrective events to one projection table, remembering applied event ids."""

    def __init__(self, url: str, table: str, *, version_field: str | None = None, schema: str | None = None):
        self.engine = make_engine(url)
        self.table = sa.Table(table, sa.MetaData(), autoload_with=self.engine, schema=schema)
        self.version_field = version_field
        _applied_meta.create_all(self.engine, checkfirst=True)

    def apply(self, events: Iterable[Incoming], stats: ProjectorStats) -> None:
        """Apply a batch in one transaction, together with the ids it applied.

        Set-based, so a batch costs a handful of statements: ids already applied are skipped,
        the last event per entity wins (events of one entity arrive in order), rows of the
        touched entities are replaced.
        """
        t = self.table
        batch = list(events)
        stats.messages += len(batch)
        with self.engine.begin() as conn:
            ids = list(dict.fromkeys(ev.event_id for ev in batch))
            done = self._applied(conn, ids)
            latest: dict[tuple[Any, ...], Incoming] = {}
            fresh: list[str] = []
            for ev in batch:
                if ev.event_id in done:
                    stats.duplicates += 1
                    continue
                done.add(ev.event_id)
                fresh.append(ev.event_id)
                key = tuple(sorted(ev.key.items()))
                if key in latest:
                    stats.applied += 1  # superseded inside the batch by a newer event of the entity
                latest[key] = ev
            if not fresh:
                return
            pg = conn.dialect.name == "postgresql"
            if pg:  # one array parameter, not a statement per id (psycopg's executemany)
                conn.execute(_insert_arrays(applied_events, {"event_id": fresh}))
            else:
                conn.execute(applied_events.insert(), [{"event_id": i} for i in fresh])
            todo = list(latest.values())
            if self.version_field:
                todo = self._drop_stale(conn, todo, stats)
            for group in _by_key_shape(todo):
                names = list(group[0].key)
                cols = [t.c[n] for n in names]
                keys = [tuple(_coerce(ev.key[n], t.c[n]) for n in names) for ev in group]
                if len(cols) == 1 and pg:
                    # one array parameter: no IN list of 500 values to render and parse per chunk
                    conn.execute(t.delete().where(cols[0] == sa.any_(_array(cols[0], [k[0] for k in keys]))))
                    continue
                for i in range(0, len(keys), 500):
                    chunk = keys[i : i + 500]
                    cond = (
                        cols[0].in_([k[0] for k in chunk]) if len(cols) == 1 else sa.tuple_(*cols).in_(chunk)
                    )
                    conn.execute(t.delete().where(cond))
            # Rows by shape (the same columns): an executemany takes its columns from the first
            # row. On PostgreSQL a shape's rows go in as one array parameter per column (psycopg's
            # executemany is a statement per row) unless a column's type cannot be an array's.
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for ev in todo:
                if ev.state is not None:
                    row = {k: _coerce(v, t.c[k]) for k, v in {**ev.key, **ev.state}.items()}
                    shapes.setdefault(tuple(row), []).append(row)
            for shape, rows in shapes.items():
                if pg and all(_arrayable(t.c[n]) for n in shape):
                    conn.execute(_insert_arrays(t, {n: [r[n] for r in rows] for n in shape}))
                else:
                    conn.execute(t.insert(), rows)
            stats.applied += len(todo)

    @staticmethod
    def _applied(conn: sa.Connection, ids: list[str]) -> set[str]:
        """Which of these event ids this projection applied before."""
        col = applied_events.c.event_id
        if conn.dialect.name == "postgresql":
            return set(conn.execute(sa.select(col).where(col == sa.any_(_array(col, ids)))).scalars())
        done: set[str] = set()
        for i in range(0, len(ids), 1000):
            done.update(conn.execute(sa.select(col).where(col.in_(ids[i : i + 1000]))).scalars())
        return done

    def _drop_stale(self, conn: sa.Connection, todo: list[Incoming], stats: ProjectorStats) -> list[Incoming]:
        """Events whose state is older than the row's version are skipped (counted stale)."""
        t, vf = self.table, str(self.version_field)
        keep = []
        for ev in todo:
            if ev.state is None or vf not in ev.state:
                keep.append(ev)
                continue
            where = [t.c[k] == _coerce(v, t.c[k]) for k, v in ev.key.items()]
            current = conn.execute(sa.select(sa.func.max(t.c[vf])).where(*where)).scalar()
            if current is not None and current > ev.state[vf]:
                stats.stale += 1
            else:
                keep.append(ev)
        return keep

    def dispose(self) -> None:
        self.engine.dispose()


def _arrayable(column: sa.Column[Any]) -> bool:
    """Whether the column's values travel as a PostgreSQL array of its type (not JSON, arrays)."""
    return not isinstance(column.type, (sa.JSON, sa.ARRAY, sa.types.NullType))


def _insert_arrays(table: sa.Table, columns: dict[str, list[Any]]) -> Any:
    """``INSERT INTO table (columns) SELECT unnest(...), unnest(...)``: the rows as one array
    per column (equal lengths: unnest zips them)."""
    cols = [table.c[n] for n in columns]
    unnest = [sa.func.unnest(_array(c, v)) for c, v in zip(cols, columns.values(), strict=True)]
    return table.insert().from_select(cols, sa.select(*unnest))


def _array(column: sa.Column[Any], values: list[Any]) -> Any:
    """``values`` as one PostgreSQL array parameter of the column's type.

    Texts and ints into a text or integer column go as one array literal (:func:`_array_text`)
    the server reads as the column's array type: psycopg dumps a list in Python one item at a
    time. The parameter is untyped (no ``::VARCHAR`` cast on it), so the server parses it as the
    array at bind time, not through a text-to-array cast run as the statement executes."""
    from sqlalchemy.dialects.postgresql import ARRAY

    t = column.type
    if isinstance(t, (sa.String, sa.Integer)) and not isinstance(t, sa.Enum):
        text = _array_text(values)
        if text is not None:
            return sa.cast(sa.bindparam(None, text, type_=sa.types.NullType()), ARRAY(t))
    return sa.bindparam(None, values, type_=ARRAY(t))


def _array_text(values: list[Any]) -> str | None:
    """A PostgreSQL array literal of texts, ints and NULLs (None: some value is something else)."""
    out = []
    for v in values:
        k = type(v)
        if k is str:
            out.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif k is int:
            out.append(int.__repr__(v))
        elif v is None:
            out.append("NULL")
        else:
            return None
    return "{" + ",".join(out) + "}"


def _by_key_shape(events: list[Incoming]) -> list[list[Incoming]]:
    shapes: dict[tuple[str, ...], list[Incoming]] = {}
    for ev in events:
        shapes.setdefault(tuple(ev.key), []).append(ev)
    return list(shapes.values())
