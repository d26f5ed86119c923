"""SQL readers: one side of a spec (a table or a query) read through SQLAlchemy.

Rows are streamed from the server ordered by the canonical key (server-side cursors on
PostgreSQL and MySQL, SQLite's own lazy cursor), ``yield_per`` rows at a time, so memory stays
flat however large the table is. Text keys are ordered by code point (``COLLATE "C"`` /
``BINARY`` / their UTF-8 bytes on MySQL and MariaDB, whose ``utf8mb4_bin`` ignores trailing
spaces) because that is how Python orders them; an integer key facing a numeric-text key is
ordered as an integer on both sides.

Every connection is read-only (the database enforces it: see :func:`~reconcile.db.make_engine`)
with a statement timeout (``$RECONCILE_STATEMENT_TIMEOUT``, default 30m). Filters (``--where``,
a side's ``where:``) are parsed and rebuilt as expressions (:mod:`reconcile.filters`), never
pasted into the SQL; table names are quoted by the dialect.

Driver errors are translated here, once, into :class:`~reconcile.errors.SourceError` lines that
name the side and the (masked) database.
"""

from __future__ import annotations

import difflib
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from ..filters import Filter, parse_filter, resolve_column
from ..spec import Side, parse_duration
from .throttle import Throttle

__all__ = [
    "SqlSource",
    "open_engine",
    "source_errors",
    "key_kind",
    "KEY_KINDS",
    "statement_timeout_s",
]

KEY_KINDS = ("int", "number", "datetime", "text")
_BIN_COLLATION = {"postgresql": "C", "sqlite": "BINARY"}


def source_errors(role: str, url: str) -> Any:
    """Driver errors raised inside become one-line SourceErrors naming the side and database."""
    return map_errors(role, url, SourceError)


def statement_timeout_s() -> float | None:
    """How long one statement may run on truth or projection: ``$RECONCILE_STATEMENT_TIMEOUT``
    (``30s``, ``10m``...; ``0`` for none), default 30 minutes."""
    raw = os.environ.get("RECONCILE_STATEMENT_TIMEOUT", "30m").strip()
    try:
        seconds = parse_duration(raw).total_seconds()
    except ValueError as e:
        raise SpecError(f"RECONCILE_STATEMENT_TIMEOUT: {e}") from None
    return seconds or None


def open_engine(url: str, role: str = "database", timeout_s: float | None = None) -> Engine:
    """:func:`~reconcile.db.make_engine` for a truth or projection URL: read-only, with a
    statement timeout (``timeout_s``: the spec's ``statement_timeout``, 0 for none; else
    :func:`statement_timeout_s`); errors as SourceErrors."""
    timeout = statement_timeout_s() if timeout_s is None else (timeout_s or None)
    with source_errors(role, url):
        return make_engine(url, read_only=True, statement_timeout_s=timeout)


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

    is_topic = False  # TopicSource: a Kafka topic read as a table

    def __init__(
        self,
        side: Side,
        role: str,
        url: str | None = None,
        *,
        chunk_rows: int = 10_000,
        filter_columns: Mapping[str, str] | None = None,
        statement_timeout: float | None = None,
        throttle: tuple[float, int | None] | None = None,
    ):
        """``statement_timeout``: seconds per statement (0: none; None: the environment's).
        ``throttle``: (chunk_time seconds, max_active_sessions) for a chunked, paused scan."""
        self.side = side
        self.role = role
        # The names a run's filter (--where) may use, mapped to this side's own column names.
        self.filter_columns = dict(filter_columns or {})
        self.url = url or side.url or ""
        if not self.url:
            raise SpecError(f"{role}: no URL (conn_id {side.conn_id!r} must be resolved by the caller)")
        self.chunk_rows = chunk_rows
        self.statement_timeout = statement_timeout  # kept for a second process reopening the side
        self.engine = open_engine(self.url, role, statement_timeout)
        self.dialect = self.engine.dialect.name
        self.throttle = Throttle.for_engine(role, self.engine, *throttle) if throttle else None
        self._mysql = self.dialect in ("mysql", "mariadb")
        self._columns: dict[str, Any] | None = None
        self._side_filter: Filter | None = None
        self._not_null: set[str] = set()

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
                    self._not_null = {c["name"] for c in cols if c.get("nullable") is False}
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

    # -- filters ---------------------------------------------------------------------------
    def side_filter(self) -> Filter | None:
        """This side's own ``where:``, checked against its columns (any of them)."""
        if not self.side.where:
            return None
        if self._side_filter is None:
            self._side_filter = parse_filter(
                self.side.where, origin=f"spec: {self.role}.where", columns=list(self.columns())
            )
        return self._side_filter

    def run_filter(self, where: str) -> Filter:
        """A run's filter (``--where``), checked against the names it may use."""
        return parse_filter(where, origin="--where", columns=list(self.filter_columns))

    def _filter_names(self, where: str | None) -> list[str]:
        """This side's columns that the side's and the run's filters read."""
        names: list[str] = []
        own = self.side_filter()
        if own is not None:
            names += [resolve_column(n, list(self.columns())) or n for n in own.columns]
        if where:
            vocab = list(self.filter_columns)
            names += [
                self.filter_columns[resolve_column(n, vocab) or n] for n in self.run_filter(where).columns
            ]
        return names

    def _filters(self, src: sa.FromClause, where: str | None, *, literal: bool = False) -> list[Any]:
        out: list[Any] = []
        own = self.side_filter()
        if own is not None:
            cols = list(self.columns())
            out.append(own.to_sql(lambda n: src.c[resolve_column(n, cols) or n], literal=literal))
        if where:
            vocab = list(self.filter_columns)
            run = self.run_filter(where)
            out.append(
                run.to_sql(
                    lambda n: src.c[self.filter_columns[resolve_column(n, vocab) or n]], literal=literal
                )
            )
        return out

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
            if self._mysql:
                # utf8mb4_bin pads with spaces, so it sorts 'a\t' before 'a'; UTF-8 bytes compare
                # in code point order with no padding, whatever the column's charset was.
                from sqlalchemy.dialects import mysql  # only for MySQL sides: not imported at start-up

                return sa.cast(sa.cast(expr, mysql.CHAR(charset="utf8mb4")), sa.LargeBinary)
            coll = _BIN_COLLATION.get(self.dialect)
            return sa.collate(expr, coll) if coll else expr
        return col

    def order_bound(self, value: Any, kind: str) -> Any:
        """A canonical key value as compared with :meth:`_order_expr` (UTF-8 bytes on MySQL)."""
        if self._mysql and kind == "text" and isinstance(value, str):
            return value.encode("utf-8")
        return value

    def select(
        self,
        plan: ReadPlan,
        *,
        where: str | None = None,
        keys: Sequence[tuple[Any, ...]] | None = None,
        extra_filter: Callable[[sa.FromClause], Any] | None = None,
    ) -> sa.Select[Any]:
        names = [*plan.key, *plan.values, *([plan.changed_at] if plan.changed_at else [])]
        src = self._selectable([*names, *self._filter_names(where)])
        c = src.c
        stmt = sa.select(*[c[n] for n in names]).select_from(src)
        stmt = stmt.where(*[c[k].is_not(None) for k in plan.key])
        stmt = stmt.where(*self._filters(src, where))
        if keys is not None:
            kcols = [self._key_bind_expr(c[k], k, kind) for k, kind in zip(plan.key, plan.kinds, strict=True)]
            if self._array_keys(plan):
                # one array parameter: an IN list is rendered as 1,000 literals per statement
                # (SQLAlchemy, then psycopg parsing the text), most of a keyed audit's client time
                from sqlalchemy.dialects.postgresql import ARRAY

                kt = kcols[0].type
                if isinstance(kt, sa.types.NullType):
                    kt = sa.BigInteger() if plan.kinds[0] == "int" else sa.Text()
                asked = sa.bindparam(None, [k[0] for k in keys], type_=ARRAY(kt))
                stmt = stmt.where(kcols[0] == sa.any_(asked))
            elif len(kcols) == 1:
                stmt = stmt.where(kcols[0].in_([k[0] for k in keys]))
            else:
                stmt = stmt.where(sa.tuple_(*kcols).in_(list(keys)))
        if extra_filter is not None:
            stmt = stmt.where(extra_filter(src))
        order = [self._order_expr(c[k], k, kind) for k, kind in zip(plan.key, plan.kinds, strict=True)]
        return stmt.order_by(*order)

    def _array_keys(self, plan: ReadPlan) -> bool:
        """Whether keys are looked up as one PostgreSQL array (``= ANY``): one text or int key
        column, whose canonical values are the ``str`` / ``int`` the driver sends as they are."""
        return self.dialect == "postgresql" and len(plan.key) == 1 and plan.kinds[0] in _READY_KEY_TYPES

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
        # The Python type a key value of each kind already has in canonical form: such a value
        # (nearly every one, on most tables) skips key_part.
        ready = [_READY_KEY_TYPES.get(k) for k in kinds]
        single = nk == 1
        kind0, ready0 = kinds[0], ready[0]
        has_changed = plan.changed_at is not None
        make_row = tuple.__new__  # Row(...) without its Python-level __new__: a row per row read
        # IN lists of 1000 (bound parameters' limits); one array of up to 50,000 on PostgreSQL
        size = 50_000 if self._array_keys(plan) else 1000
        batches = [None] if keys is None else [keys[i : i + size] for i in range(0, len(keys), size)]
        with self.errors(), self.engine.connect() as conn:
            for sql in session:
                conn.exec_driver_sql(sql)
            for batch in batches:
                if batch is not None and not batch:
                    continue
                # A key lookup matches by the column's collation: on MySQL and MariaDB a
                # case-insensitive, space-padded one also returns 'A' and 'a ' for 'a'. Those
                # are other entities (and may sort outside this batch), so only asked keys pass.
                asked = set(batch) if batch is not None and self._mysql else None
                stmt = self.select(plan, where=where, keys=batch, extra_filter=extra_filter)
                result = None
                if self.throttle is None:
                    rows: Iterator[Any] | None = _driver_rows(conn, stmt, self.chunk_rows)
                    if rows is None:
                        opts = conn.execution_options(stream_results=True, yield_per=self.chunk_rows)
                        result = opts.execute(stmt)
                        rows = iter(result)
                else:
                    result = conn.execution_options(stream_results=True).execute(stmt)
                    rows = self._paced(result, self.throttle)
                try:
                    for r in rows:
                        key: tuple[Any, ...]
                        try:
                            if single:
                                v = r[0]
                                key = (v,) if v.__class__ is ready0 else (key_part(v, kind0),)
                            else:
                                key = tuple(
                                    v if v.__class__ is t else key_part(v, k)
                                    for v, t, k in zip(r[:nk], ready, kinds, strict=True)
                                )
                        except ValueError as e:
                            raise SourceError(f"{self.role}: {e} (key columns {list(plan.key)})") from None
                        if asked is not None and key not in asked:
                            continue
                        changed = _as_time(r[nk + nv]) if has_changed else None
                        yield make_row(Row, (key, tuple(r[nk : nk + nv]), changed))
                except BaseException:  # an error, Ctrl-C, or the merge stopped early
                    if result is not None:
                        self._abandon(conn, result)
                    raise

    @staticmethod
    def _paced(result: sa.CursorResult[Any], throttle: Throttle) -> Iterator[Any]:
        """The result's rows in chunks sized by ``throttle``, waiting before each while the
        database is busy. The time of a chunk is the database's (the fetch), not the caller's."""
        while True:
            throttle.wait()
            started = time.monotonic()
            chunk = result.fetchmany(throttle.rows)
            throttle.done(len(chunk), time.monotonic() - started)
            if not chunk:
                return
            yield from chunk

    def _abandon(self, conn: sa.Connection, result: sa.CursorResult[Any]) -> None:
        """Let go of a result that was not read to its end.

        MySQL's protocol cannot cancel a streaming query: PyMySQL would read every row left
        (minutes on a big table, after Ctrl-C) and warn on stderr when the pool reuses the
        connection. Closing the connection ends the query on the server at once; the pool
        opens another one.
        """
        if not self._mysql:
            return
        unread = getattr(result.cursor, "_result", None)  # PyMySQL's unbuffered MySQLResult
        conn.invalidate()
        if unread is not None:  # its socket is gone: nothing left to read at garbage collection
            unread.unbuffered_active = False

    def null_keys(self, plan: ReadPlan, where: str | None = None) -> int:
        """Rows this side would read whose key has a NULL part: no entity can be named by them,
        so they are counted (and refused by the audit), never silently skipped."""
        if all(k in self._not_null for k in plan.key):
            return 0  # the catalog promises there are none
        src = self._selectable([*plan.key, *self._filter_names(where)])
        stmt = (
            sa.select(sa.func.count())
            .select_from(src)
            .where(sa.or_(*[src.c[k].is_(None) for k in plan.key]), *self._filters(src, where))
        )
        with self.errors(), self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)

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


_READY_KEY_TYPES: dict[str, type] = {"text": str, "int": int}


def _driver_rows(conn: sa.Connection, stmt: sa.Select[Any], size: int) -> Iterator[Any] | None:
    """The statement's rows as psycopg's own tuples, from a server-side cursor of ``conn``'s
    driver connection; None (run it through SQLAlchemy) on other databases. Bound values go
    through SQLAlchemy's bind processors first, as its own execution sends them.

    The reader's columns are untyped (``sa.column``), so SQLAlchemy converts no value it reads:
    its Row objects are the driver's tuples wrapped once more, about 0.5 s per million rows
    (bench/TOPIC.md). Driver errors are raised as SQLAlchemy's, so the caller's mapping names
    them like any other.
    """
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        return None
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    procs = getattr(compiled, "_bind_processors", None)
    if not isinstance(procs, dict) or conn.dialect.paramstyle != "pyformat":
        return None  # not known how SQLAlchemy would bind them: its own path
    import psycopg

    # Bound values converted as SQLAlchemy's execution would (the keys' array of a keyed read)
    sql = str(compiled)
    params = {k: procs[k](v) if k in procs else v for k, v in compiled.params.items()}
    driver: Any = conn.connection.dbapi_connection

    def rows() -> Iterator[Any]:
        cursor = driver.cursor(name=f"reconcile_{uuid.uuid4().hex[:12]}")
        try:
            cursor.execute(sql, params)
            first = cursor.fetchmany(size)
            yield from first
            if len(first) == size:  # more to come: the next chunks are fetched while these are used
                yield from _prefetched(cursor, size)
        except psycopg.Error as e:
            raise sa.exc.DBAPIError.instance(sql, params, e, psycopg.Error) from None
        finally:
            try:
                cursor.close()
            except psycopg.Error:
                pass  # the connection broke: the error above says why

    return rows()


def _prefetched(cursor: Any, size: int, ahead: int = 2) -> Iterator[Any]:
    """The cursor's remaining rows, fetched ``size`` at a time by a thread at most ``ahead``
    chunks ahead of the caller.

    A fetch is mostly the server's work (reading the index, sending the rows) and waiting for
    it, during which psycopg releases the GIL: the thread overlaps it with what the caller does
    with the rows before (the merge), on another core. Memory stays bounded by ``ahead`` chunks.
    A driver error in the thread is raised here; when the caller stops early the thread ends
    after its current fetch.
    """
    chunks: queue.Queue[Any] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                chunk = cursor.fetchmany(size)
                chunks.put(chunk)
                if not chunk:
                    return
        except BaseException as e:  # handed to the caller, raised there
            chunks.put(e)

    thread = threading.Thread(target=fetch, name="reconcile-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            chunk = chunks.get()
            if isinstance(chunk, BaseException):
                raise chunk
            if not chunk:
                return
            yield from chunk
    finally:
        stop.set()
        while thread.is_alive():  # let a waiting put() through, then the thread sees stop
            try:
                chunks.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.05)


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
