"""SQL readers: one side of a spec (a table or a query) read through SQLAlchemy.

Rows are streamed from the server ordered by the canonical key (server-side cursors on
PostgreSQL and MySQL, SQLite's own lazy cursor), ``yield_per`` rows at a time, so memory stays
flat however large the table is. Text keys are ordered by code point (``COLLATE "C"`` /
``BINARY`` / ``utf8mb4_bin``) because that is how Python orders them; an integer key facing a
numeric-text key is ordered as an integer on both sides.

Driver errors are translated here, once, into :class:`~reconcile.errors.SourceError` lines that
name the side and the (masked) database.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from ..compare import key_part, to_utc
from ..db import make_engine, map_errors
from ..diff import Row
from ..errors import SourceError, SpecError, mask_url
from ..spec import Side

__all__ = [
    "SqlSource",
    "open_engine",
    "source_errors",
    "key_kind",
    "KEY_KINDS",
]

KEY_KINDS = ("int", "number", "datetime", "text")
_BIN_COLLATION = {"postgresql": "C", "sqlite": "BINARY", "mysql": "utf8mb4_bin", "mariadb": "utf8mb4_bin"}


def source_errors(role: str, url: str) -> Any:
    """Driver errors raised inside become one-line SourceErrors naming the side and database."""
    return map_errors(role, url, SourceError)


def open_engine(url: str, role: str = "database") -> Engine:
    """:func:`~reconcile.db.make_engine` for a truth or projection URL, errors as SourceErrors."""
    with source_errors(role, url):
        return make_engine(url)


def _type_kind(t: sa.types.TypeEngine[Any] | type | None) -> str | None:
    if t is None:
        return None
    if isinstance(t, type):  # a Python type sampled from a query's row
        if issubclass(t, bool):
            return "int"
        if issubclass(t, int):
            return "int"
        if issubclass(t, float | Decimal):
            return "number"
        if issubclass(t, datetime | date):
            return "datetime"
        if issubclass(t, str):
            return "text"
        return None
    if isinstance(t, sa.Integer | sa.Boolean):
        return "int"
    if isinstance(t, sa.Numeric):
        scale = getattr(t, "scale", None)
        return "int" if scale == 0 and not isinstance(t, sa.Float) else "number"
    if isinstance(t, sa.DateTime | sa.Date):
        return "datetime"
    if isinstance(t, sa.String):
        return "text"
    return None


def key_kind(truth_type: Any, projection_type: Any) -> str:
    """How one key column is canonicalised and ordered, from both sides' types."""
    a, b = _type_kind(truth_type), _type_kind(projection_type)
    kinds = {a, b} - {None}
    if kinds == {"int"} or kinds == {"int", "text"}:
        return "int"
    if kinds <= {"int", "number"} and kinds:
        return "number"
    if kinds == {"datetime"}:
        return "datetime"
    return "text"


@dataclass(frozen=True)
class ReadPlan:
    """What to read from one side, by that side's own column names."""

    key: Sequence[str]
    kinds: Sequence[str]
    values: Sequence[str]
    changed_at: str | None = None


class SqlSource:
    """One side of a spec: connection, column discovery, ordered streaming."""

    def __init__(self, side: Side, role: str, url: str | None = None, *, chunk_rows: int = 10_000):
        self.side = side
        self.role = role
        self.url = url or side.url or ""
        if not self.url:
            raise SpecError(f"{role}: no URL (conn_id {side.conn_id!r} must be resolved by the caller)")
        self.chunk_rows = chunk_rows
        self.engine = open_engine(self.url, role)
        self.dialect = self.engine.dialect.name
        self._columns: dict[str, Any] | None = None

    # -- discovery -------------------------------------------------------------------------
    def errors(self) -> Any:
        return source_errors(self.role, self.url)

    @property
    def where(self) -> str:
        return f"{self.role} {self.side.display}"

    def columns(self) -> dict[str, Any]:
        """Column name -> SQLAlchemy type (tables) or sampled Python type (queries)."""
        if self._columns is None:
            with self.errors():
                if self.side.table:
                    try:
                        cols = sa.inspect(self.engine).get_columns(self.side.table, schema=self.side.schema_)
                    except NoSuchTableError:
                        raise SpecError(
                            f"spec: {self.role}.table: table {self._table_name()!r} does not exist "
                            f"in {mask_url(self.url)}"
                        ) from None
                    if not cols:  # some dialects return [] for a missing table
                        raise SpecError(
                            f"spec: {self.role}.table: table {self._table_name()!r} does not exist "
                            f"in {mask_url(self.url)}"
                        )
                    self._columns = {c["name"]: c["type"] for c in cols}
                else:
                    with self.engine.connect() as conn:
                        sub = sa.text(self.side.query or "").columns().subquery("q")
                        res = conn.execute(sa.select(sa.text("*")).select_from(sub).limit(1))
                        names = list(res.keys())
                        first = res.first()
                    self._columns = {
                        n: (type(v) if first is not None and (v := first[i]) is not None else None)
                        for i, n in enumerate(names)
                    }
        return self._columns

    def _table_name(self) -> str:
        return f"{self.side.schema_}.{self.side.table}" if self.side.schema_ else str(self.side.table)

    def require(self, field: str, names: Sequence[str]) -> None:
        """Raise a SpecError naming the spec field when a column does not exist on this side."""
        have = self.columns()
        for name in names:
            if name not in have:
                near = difflib.get_close_matches(name, list(have), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                what = f"table {self._table_name()}" if self.side.table else "the query's result"
                raise SpecError(f"spec: {field}: {self.role} column {name!r} not found in {what}{hint}")

    # -- reading ---------------------------------------------------------------------------
    def _selectable(self, names: Sequence[str]) -> sa.FromClause:
        cols: list[sa.ColumnClause[Any]] = [sa.column(n) for n in dict.fromkeys(names)]
        if self.side.table:
            return sa.table(self.side.table, *cols, schema=self.side.schema_)
        return sa.text(self.side.query or "").columns(*cols).subquery("q")

    def _order_expr(self, col: sa.ColumnElement[Any], name: str, kind: str) -> sa.ColumnElement[Any]:
        mine = _type_kind(self.columns().get(name))
        if kind == "int" and mine == "text":
            return sa.cast(col, sa.BigInteger)
        if kind == "text":
            expr = col if mine == "text" else sa.cast(col, sa.String)
            coll = _BIN_COLLATION.get(self.dialect)
            return sa.collate(expr, coll) if coll else expr
        return col

    def select(
        self,
        plan: ReadPlan,
        *,
        where: str | None = None,
        keys: Sequence[tuple[Any, ...]] | None = None,
        extra_filter: Callable[[sa.FromClause], Any] | None = None,
    ) -> sa.Select[Any]:
        names = [*plan.key, *plan.values, *([plan.changed_at] if plan.changed_at else [])]
        src = self._selectable(names)
        c = src.c
        stmt = sa.select(*[c[n] for n in names]).select_from(src)
        stmt = stmt.where(*[c[k].is_not(None) for k in plan.key])
        if self.side.where:
            stmt = stmt.where(sa.text(f"({self.side.where})"))
        if where:
            stmt = stmt.where(sa.text(f"({where})"))
        if keys is not None:
            kcols = [self._key_bind_expr(c[k], k, kind) for k, kind in zip(plan.key, plan.kinds, strict=True)]
            if len(kcols) == 1:
                stmt = stmt.where(kcols[0].in_([k[0] for k in keys]))
            else:
                stmt = stmt.where(sa.tuple_(*kcols).in_(list(keys)))
        if extra_filter is not None:
            stmt = stmt.where(extra_filter(src))
        order = [self._order_expr(c[k], k, kind) for k, kind in zip(plan.key, plan.kinds, strict=True)]
        return stmt.order_by(*order)

    def _key_bind_expr(self, col: sa.ColumnElement[Any], name: str, kind: str) -> sa.ColumnElement[Any]:
        if kind == "int" and _type_kind(self.columns().get(name)) == "text":
            return sa.cast(col, sa.BigInteger)
        return col

    def stream(
        self,
        plan: ReadPlan,
        *,
        where: str | None = None,
        keys: Sequence[tuple[Any, ...]] | None = None,
        extra_filter: Callable[[sa.FromClause], Any] | None = None,
        session: Sequence[str] = (),
    ) -> Iterator[Row]:
        """Yield this side's rows as :class:`~reconcile.diff.Row`, ordered by canonical key.

        ``session`` holds SQL run first on the same connection (reconcile's own ``SET LOCAL``
        planner settings, never user input).
        """
        nk, nv = len(plan.key), len(plan.values)
        kinds = list(plan.kinds)
        has_changed = plan.changed_at is not None
        batches = [None] if keys is None else [keys[i : i + 1000] for i in range(0, len(keys), 1000)]
        with self.errors(), self.engine.connect() as conn:
            for sql in session:
                conn.exec_driver_sql(sql)
            for batch in batches:
                if batch is not None and not batch:
                    continue
                stmt = self.select(plan, where=where, keys=batch, extra_filter=extra_filter)
                result = conn.execution_options(stream_results=True, yield_per=self.chunk_rows).execute(stmt)
                for r in result:
                    try:
                        key = tuple(key_part(r[i], kinds[i]) for i in range(nk))
                    except ValueError as e:
                        raise SourceError(f"{self.role}: {e} (key columns {list(plan.key)})") from None
                    changed = _as_time(r[nk + nv]) if has_changed else None
                    yield Row(key, tuple(r[nk : nk + nv]), changed)

    def estimate_rows(self) -> int | None:
        """A cheap row-count estimate for progress bars (PostgreSQL statistics), or None."""
        if self.dialect != "postgresql" or not self.side.table:
            return None
        try:
            with self.engine.connect() as conn:
                n = conn.execute(
                    sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)"),
                    {"t": self._table_name()},
                ).scalar()
            return int(n) if n is not None and n > 0 else None
        except SQLAlchemyError:
            return None

    def dispose(self) -> None:
        self.engine.dispose()


def _as_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, date):
        return to_utc(datetime(value.year, value.month, value.day))
    if isinstance(value, str):
        try:
            return to_utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            return None
    if isinstance(value, int | float):  # epoch seconds
        return datetime.fromtimestamp(value, UTC)
    return None
