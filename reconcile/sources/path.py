"""The event path of a spec read for cause attribution: source table, topic window, applied journal.

* :func:`take_cut` records where everything stood when truth was read: the truth database's
  position (PostgreSQL: WAL LSN and transaction snapshot; other engines: null), the topic's end
  offsets and the group's committed offsets.
* :func:`settle` waits (bounded) until the group has consumed everything that was on the topic at
  the cut, so a projector that is merely behind is not mistaken for drift.
* :func:`collect` reads, in one pass each, the source table, the topic's window (through the
  topic-reading port) and the applied journal for the events touching the drifted entities,
  into a :class:`~reconcile.causes.Collector`.

Every connection opened here is read-only, like the audit's own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from ..causes import Collector, Positions
from ..errors import SpecError, mask_url
from ..events.reader import NEVER_COMMITTED, TopicReader
from ..fields import header_value, lookup, parse_field
from ..gcpause import no_collections
from ..jsonpath import MISSING, compile_path
from ..spec import EventPath
from .sql import _as_time, open_engine, source_errors

__all__ = ["Cut", "take_cut", "settle", "collect", "check_path", "truth_position"]

_decode = msgspec.json.Decoder().decode


@dataclass
class Cut:
    """The positions a run was taken at (stored with the run, printed as ``cut``)."""

    taken_at: datetime
    truth: dict[str, Any] | None  # {"engine", "lsn", "snapshot"} or None when unknown
    topic: str
    end_offsets: dict[int, int]
    committed: dict[int, int]  # the group's offsets when truth was read
    group: str
    settle_s: float = 0.0
    waited_s: float = 0.0
    reached: bool = False
    # The group's offsets when the projection was read (after the wait): pending is decided by them.
    projection_committed: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat().replace("+00:00", "Z"),
            "truth": self.truth,
            "topic": self.topic,
            "consumer_group": self.group,
            "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
            "committed": {str(p): o for p, o in sorted(self.committed.items())},
            "settle_s": self.settle_s,  # how long the run would wait for the group to reach the cut
            "waited_s": round(self.waited_s, 3),  # how long it waited
            "reached": self.reached,  # whether the group reached the end offsets in that time
            "committed_at_projection_read": {str(p): o for p, o in sorted(self.projection_committed.items())},
        }


def truth_position(url: str | None) -> dict[str, Any] | None:
    """The truth database's position now: PostgreSQL's WAL LSN and snapshot; None elsewhere."""
    if not url:
        return None
    engine = open_engine(url, "truth")
    try:
        if engine.dialect.name != "postgresql":
            return None
        with source_errors("truth", url), engine.connect() as conn:
            recovery, version = conn.exec_driver_sql(
                "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int"
            ).one()
            lsn_fn = "pg_last_wal_replay_lsn()" if recovery else "pg_current_wal_lsn()"
            snap_fn = "pg_current_snapshot()" if version >= 130000 else "txid_current_snapshot()"
            lsn, snap = conn.exec_driver_sql(f"SELECT {lsn_fn}::text, {snap_fn}::text").one()
            return {"engine": "postgresql", "lsn": lsn, "snapshot": snap}
    finally:
        engine.dispose()


def take_cut(
    path: EventPath, reader: TopicReader, truth_url: str | None, *, now: datetime | None = None
) -> Cut:
    """Record where truth, the topic and the group stand, before truth is read."""
    parts = reader.partitions(path.topic)
    taken = now or datetime.now(UTC)
    position = truth_position(truth_url)
    end = dict(reader.extent(path.topic, taken).end)  # `since` now: only the end offsets matter
    committed = reader.committed(path.consumer_group, path.topic, parts)
    return Cut(taken, position, path.topic, end, committed, path.consumer_group)


def _reached(committed: dict[int, int], end: dict[int, int]) -> bool:
    return all(e == 0 or committed.get(p, NEVER_COMMITTED) >= e for p, e in end.items())


def settle(
    cut: Cut,
    reader: TopicReader,
    limit_s: float,
    *,
    poll_s: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
) -> Cut:
    """Wait up to ``limit_s`` until the group has consumed every message that was on the topic at
    the cut; record how long it waited, whether it got there, and its offsets at the end."""
    started = time.monotonic()
    cut.settle_s = limit_s
    parts = sorted(cut.end_offsets)
    committed = dict(cut.committed)
    while True:
        if _reached(committed, cut.end_offsets):
            cut.reached = True
            break
        if time.monotonic() - started >= limit_s:
            break
        sleep(min(poll_s, max(0.0, limit_s - (time.monotonic() - started))))
        committed = reader.committed(cut.group, cut.topic, parts)
    cut.waited_s = time.monotonic() - started
    cut.projection_committed = committed
    return cut


@dataclass
class PathStats:
    """What one attribution pass read."""

    source_rows: int = 0
    messages: int = 0
    events: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process, every thread (librdkafka's included)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_rows": self.source_rows,
            "messages": self.messages,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


def collect(
    path: EventPath,
    collector: Collector,
    reader: TopicReader,
    *,
    truth_url: str | None,
    projection_url: str | None,
    resolve_conn: Callable[[str], str],
    now: datetime,
    committed: dict[int, int],
) -> tuple[Positions, PathStats]:
    """Feed the collector from the path, in the order that keeps positions consistent: the source
    table's statement first (its snapshot), then the topic's window, its end fixed after that
    snapshot (so every row the source shows published is inside it), then the applied journal.

    The source rows stream in a thread while the topic is read: each pass mostly waits for its
    server, and the collector merges what both find about one event in either order."""
    with no_collections():
        return _collect(path, collector, reader, truth_url, projection_url, resolve_conn, now, committed)


def _collect(
    path: EventPath,
    collector: Collector,
    reader: TopicReader,
    truth_url: str | None,
    projection_url: str | None,
    resolve_conn: Callable[[str], str],
    now: datetime,
    committed: dict[int, int],
) -> tuple[Positions, PathStats]:
    started, cpu = time.monotonic(), time.process_time()
    since = now - path.window
    window_start: datetime | None = since
    source: threading.Thread | None = None
    failed: list[BaseException] = []
    if path.source is not None:
        url = _url(path.source.url, path.source.conn_id, truth_url, resolve_conn, "path.source")
        snapshot = threading.Event()

        def read_source() -> None:
            try:
                _read_source(path, url, collector, since, snapshot)
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                failed.append(e)
            finally:
                snapshot.set()

        source = threading.Thread(target=read_source, name="reconcile-path-source", daemon=True)
        source.start()
        snapshot.wait()
        if failed:
            source.join()
            raise failed[0]
    try:
        extent = reader.extent(path.topic, since)
        earliest = reader.extent(path.topic, None).start
        from_earliest = all(extent.start.get(p, 0) == o for p, o in earliest.items())
        _read_topic(path, reader, extent, collector)
    finally:
        if source is not None:
            source.join()
    if failed:
        raise failed[0]
    has_applied = path.applied is not None
    if path.applied is not None:
        url = _url(path.applied.url, path.applied.conn_id, projection_url, resolve_conn, "path.applied")
        asked = collector.wanted_applied()
        collector.applied(_read_applied(path, url, asked), asked)
    stats = PathStats(
        collector.source_rows,
        collector.messages,
        len(collector.events),
        time.monotonic() - started,
        time.process_time() - cpu,
    )
    pos = Positions(
        committed,
        now,
        path.publish_grace,
        has_applied=has_applied,
        window_start=window_start,
        topic_from_earliest=from_earliest,
    )
    return pos, stats


def _url(
    url: str | None, conn_id: str | None, default: str | None, resolve: Callable[[str], str], where: str
) -> str:
    if url:
        return url
    if conn_id:
        return resolve(conn_id)
    if not default:
        raise SpecError(f"{where}: the side it defaults to is a topic; give `url:` or `conn_id:`")
    return default


def _table(engine: sa.Engine, name: str, schema: str | None, field: str, url: str) -> sa.Table:
    try:
        return sa.Table(name, sa.MetaData(), schema=schema, autoload_with=engine)
    except sa.exc.NoSuchTableError:
        raise SpecError(f"spec: {field}.table: table {name!r} does not exist in {mask_url(url)}") from None


def _column(table: sa.Table, name: str, field: str) -> sa.ColumnElement[Any]:
    if name not in table.c:
        have = ", ".join(table.c.keys())
        raise SpecError(f"spec: {field}: table {table.name} has no column {name!r} (its columns: {have})")
    return table.c[name]


def _as_doc(value: Any) -> Any:
    if value is None or isinstance(value, dict | list):
        return value
    if isinstance(value, bytes | str):
        try:
            return _decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
    return value


def _read_source(
    path: EventPath, url: str, collector: Collector, since: datetime, snapshot: threading.Event | None = None
) -> None:
    """Stream the source table's rows in the window into the collector; ``snapshot`` is set once
    the statement runs (its snapshot is taken: rows committed later are not in it)."""
    src = path.source
    assert src is not None
    engine = open_engine(url, "path.source")
    try:
        with source_errors("path.source", url):
            table = _table(engine, src.table, src.schema_, "path.source", url)
            eid = _column(table, src.event_id, "path.source.event_id")
            cols: list[Any] = [eid]
            payload = _column(table, src.payload, "path.source.payload") if src.payload else None
            published = _column(table, src.published, "path.source.published") if src.published else None
            written_col, written_path, headers_col = _written(table, src.written)
            for c in (payload, published, written_col, headers_col):
                if c is not None:
                    cols.append(c)
            at_ = {c: i for i, c in enumerate(cols)}
            ip = at_.get(payload) if payload is not None else None
            iw = at_.get(written_col) if written_col is not None else None
            ih = at_.get(headers_col) if headers_col is not None else None
            iu = at_.get(published) if published is not None else None
            pg = engine.dialect.driver == "psycopg"
            decode: Callable[[Any], Any] = _as_doc
            text = payload is not None and isinstance(payload.type, sa.String | sa.JSON)
            if pg and payload is not None and isinstance(payload.type, sa.JSON):
                # json/jsonb: read its text, so that rows touching no finding are rejected by it
                # undecoded; the others are decoded by json.loads, as psycopg would have.
                cols[ip] = sa.cast(payload, sa.Text)  # type: ignore[index]
                decode = _json_text
            window: list[Any] = []
            if written_col is not None:  # rows still unpublished are judged whatever their age
                unpublished = [published.is_(None)] if published is not None else []
                window.append(sa.or_(written_col >= since, written_col.is_(None), *unpublished))
            stmt: Any = sa.select(*cols).where(*window)
            needles = collector.extract.needles
            counted = False
            touching = collector.touching
            maybe = collector.extract.maybe or _anything
            rows = 0
            with engine.connect() as conn:
                if pg and text and needles is not None and _utf8(conn):
                    stmt = _pushed_down(cols, ip, window, needles, conn)  # type: ignore[arg-type]
                    counted = True
                batches = _pg_batches(conn, stmt, _binary(cols)) if pg else _sa_batches(conn, stmt)
                for batch in batches:
                    if snapshot is not None:  # the statement runs: its snapshot is taken
                        snapshot.set()
                        snapshot = None
                    if not counted:
                        rows += len(batch)
                    if ip is None:  # no payload: no row names an entity
                        continue
                    # Most rows touch no drifted entity: decide that first, with as little work as possible.
                    for row in batch:
                        if counted and row[-1] is not None:  # the count of the window's rows
                            rows += row[-1]
                            continue
                        raw = row[ip]
                        if not maybe(raw):
                            continue
                        doc = decode(raw)
                        touched = touching(doc)
                        if not touched or row[0] is None:
                            continue
                        pub_at = row[iu] if iu is not None else None
                        at: datetime | None = None
                        if iw is not None:
                            at = _as_time(row[iw])
                        elif written_path is not None:
                            at = _as_time(_lookup_time(written_path, doc, None))
                        elif ih is not None:
                            at = _as_time(header_value(_as_doc(row[ih]) or {}, "ce_time"))
                        ident: dict[str, Any] = {"event_id": row[0]}
                        if iu is not None:
                            ident["published_at"] = pub_at
                        collector.add_source(
                            row[0],
                            touched,
                            published=None if iu is None else pub_at is not None,
                            written_at=at,
                            row=ident,
                        )
            collector.source_rows += rows
    finally:
        engine.dispose()


def _utf8(conn: sa.Connection) -> bool:
    return conn.exec_driver_sql("SHOW server_encoding").scalar() == "UTF8"


def _pushed_down(
    cols: list[Any], ip: int, window: list[Any], needles: frozenset[str], conn: sa.Connection
) -> Any:
    """The source statement with :func:`~reconcile.causes._text_filter`'s test done by PostgreSQL:
    only rows whose payload text has a backslash, or a piece between two ``"`` equal to a needle,
    come back (the same test, so they are a superset of the rows that touch a finding; each is
    checked again here). A last column counts every row of the window, in one more row of the same
    statement (one snapshot): ``source_rows`` stays what was read, not what was kept."""
    from sqlalchemy.dialects.postgresql import ARRAY

    text = cols[ip]
    quote = sa.literal('"')
    if (conn.dialect.server_version_info or (0,)) >= (14,):
        split: Any = sa.func.string_to_table(text, quote)
    else:  # PostgreSQL 13 and older: the same pieces through an array
        split = sa.func.unnest(sa.func.string_to_array(text, quote))
    pieces = split.table_valued("piece").render_derived(name="p")
    wanted = sa.bindparam("reconcile_needles", sorted(needles), type_=ARRAY(sa.Text))
    named = sa.exists(sa.select(sa.literal(1)).select_from(pieces).where(pieces.c.piece == sa.any_(wanted)))
    escaped = sa.func.strpos(text, sa.literal("\\")) > 0
    kept = sa.select(*cols, sa.null().label("reconcile_rows")).where(*window, sa.or_(escaped, named))
    every = sa.select(*[sa.null() for _ in cols], sa.func.count().label("reconcile_rows")).where(*window)
    if not window:
        every = every.select_from(cols[0].table)
    return sa.union_all(kept, every)


def _anything(raw: Any) -> bool:
    return True


def _json_text(value: Any) -> Any:
    return None if value is None else json.loads(value)


_BATCH = 10_000


def _sa_batches(conn: sa.Connection, stmt: sa.Select[Any]) -> Iterator[Sequence[Any]]:
    result = conn.execution_options(stream_results=True, yield_per=_BATCH).execute(stmt)
    yield []  # the statement runs (its snapshot is taken) before its first rows arrive
    yield from result.partitions()


def _binary(cols: Sequence[Any]) -> bool:
    """Whether psycopg returns these columns' values alike in binary and in text: true of the types
    SQLAlchemy knows (psycopg loads every builtin type either way), not of an enum, an extension's
    or a user-defined type (bytes in binary, str in text)."""
    return not any(isinstance(c.type, sa.types.NullType | sa.Enum | sa.types.UserDefinedType) for c in cols)


def _pg_batches(conn: sa.Connection, stmt: Any, binary: bool) -> Iterator[Sequence[Any]]:
    """The statement's rows through a psycopg server-side cursor: a million rows come as plain
    tuples (no SQLAlchemy row each), in binary when ``binary`` (timestamps without parsing their
    text). Its errors come out as SQLAlchemy's, like any other statement's."""
    import psycopg

    compiled = stmt.compile(dialect=conn.dialect)
    try:
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor(name=f"reconcile_path_source_{uuid.uuid4().hex[:8]}", binary=binary) as cur:
            cur.execute(str(compiled), compiled.params)
            yield []  # the statement runs (its snapshot is taken) before its first rows arrive
            while batch := cur.fetchmany(_BATCH):
                yield batch
    except psycopg.Error as e:
        raise sa.exc.DBAPIError.instance(str(compiled), None, e, psycopg.Error) from e


def _written(table: sa.Table, written: str | None) -> tuple[Any, Any, Any]:
    """Where a source row's time is: (column, payload path, headers column), one of them or none."""
    if written is not None:
        if written.startswith("$"):
            return None, compile_path(written), None
        return _column(table, written, "path.source.written"), None, None
    if "created_at" in table.c:
        return table.c["created_at"], None, None
    if "headers" in table.c:  # an outbox row carrying its CloudEvents attributes: ce_time
        return None, None, table.c["headers"]
    return None, compile_path("$.time"), None


def _lookup_time(p: Any, doc: Any, headers: Any) -> Any:
    if doc is None:
        return None
    got = lookup(p, doc, headers)
    return None if got is MISSING else got


def _read_topic(path: EventPath, reader: TopicReader, extent: Any, collector: Collector) -> None:
    f = parse_field(path.event_id)
    header = f.header or ""
    for batch in reader.read(extent):
        if f.part == "header":
            items: Any = [(header_value(h, header), p, o, ms, v) for p, o, ms, _k, v, h in batch]
        else:
            items = [(_message_id(f, p, o, k, v, h), p, o, ms, v) for p, o, ms, k, v, h in batch]
        collector.message_batch(items, _as_doc)


def _message_id(f: Any, p: int, o: int, key: Any, value: Any, headers: Any) -> Any:
    if f.part == "key":
        return key if key is None or isinstance(key, str) else bytes(key).decode("utf-8", "replace")
    if f.part in ("offset", "partition"):
        return f"{p}:{o}"
    if f.path is None:
        return None
    got = lookup(f.path, _as_doc(value), headers)
    return None if got is MISSING else got


def _read_applied(path: EventPath, url: str, ids: Sequence[str]) -> set[str]:
    ap = path.applied
    assert ap is not None
    if not ids:
        return set()
    engine = open_engine(url, "path.applied")
    try:
        with source_errors("path.applied", url):
            table = _table(engine, ap.table, ap.schema_, "path.applied", url)
            col = _column(table, ap.event_id, "path.applied.event_id")
            out: set[str] = set()
            with engine.connect() as conn:
                for i in range(0, len(ids), 1000):
                    chunk = list(ids[i : i + 1000])
                    out.update(str(x) for x in conn.execute(sa.select(col).where(col.in_(chunk))).scalars())
            return out
    finally:
        engine.dispose()


def check_path(
    path: EventPath,
    reader: TopicReader,
    *,
    truth_url: str | None,
    projection_url: str | None,
    resolve_conn: Callable[[str], str],
) -> dict[str, Any]:
    """Check that everything the path names exists — the topic, the consumer group, the source
    and applied tables and their columns — reading nothing but catalogs; describe it.

    Raises SpecError naming the field (``path.source.published: table shop_outbox has no column
    ...``) so an audit fails before it reads anything, not after the diff."""
    try:
        parts = reader.partitions(path.topic)
    except SpecError as e:
        raise SpecError(f"spec: path.topic: {e}") from None
    if not reader.group_known(path.consumer_group):
        raise SpecError(
            f"spec: path.consumer_group: group {path.consumer_group!r} is not known at {reader.where} "
            "(it never joined or committed; check the name)"
        )
    out: dict[str, Any] = {
        "topic": path.topic,
        "partitions": len(parts),
        "consumer_group": path.consumer_group,
        "window": path.window.total_seconds(),
    }
    if path.source is not None:
        src = path.source
        url = _url(src.url, src.conn_id, truth_url, resolve_conn, "path.source")
        engine = open_engine(url, "path.source")
        try:
            with source_errors("path.source", url):
                table = _table(engine, src.table, src.schema_, "path.source", url)
                for field, name in (
                    ("event_id", src.event_id),
                    ("payload", src.payload),
                    ("published", src.published),
                    ("written", src.written if src.written and not src.written.startswith("$") else None),
                ):
                    if name:
                        _column(table, name, f"path.source.{field}")
        finally:
            engine.dispose()
        out["source"] = f"table {src.table} at {mask_url(url)}"
    if path.applied is not None:
        ap = path.applied
        url = _url(ap.url, ap.conn_id, projection_url, resolve_conn, "path.applied")
        engine = open_engine(url, "path.applied")
        try:
            with source_errors("path.applied", url):
                _column(
                    _table(engine, ap.table, ap.schema_, "path.applied", url),
                    ap.event_id,
                    "path.applied.event_id",
                )
        finally:
            engine.dispose()
        out["applied"] = f"table {ap.table} at {mask_url(url)}"
    return out
