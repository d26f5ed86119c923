"""A Kafka topic read as one side of a spec: its messages become rows, ordered by key.

When a run starts, :class:`TopicSource` fixes the topic's **extent** through the topic-reading
port (:mod:`reconcile.events.reader`): every partition's end offset now, and where the window
begins (``since:``, or the earliest offset). With ``freshness.consumer_group`` it takes that
group's committed offsets at the same moment. Nothing is read yet, so ``reconcile validate``
only checks that the topic (and the group) exist.

On the first read, every message of the extent is decoded into a row: each spec *field*
(:mod:`reconcile.fields` — the message key, partition, offset, timestamp, a header or a JSON
path into the value) becomes a column, plus ``_partition``, ``_offset`` and ``_timestamp``. The
rows go to a temporary SQLite file (``$TMPDIR``), in batches, so memory stays bounded however
long the topic is: SQLite keeps at most ``cache_mb`` (default 64 MiB,
``RECONCILE_TOPIC_CACHE_MB``) of it in memory and spills the rest to disk. From there the rows are
streamed back ordered by the canonical key exactly like a SQL side — this class *is* a
:class:`~reconcile.sources.sql.SqlSource` over that file, and runs that reader's own statement
on a plain sqlite3 cursor — so the diff, ``--keys``, the recheck, ``where:`` filters (SQLite
SQL over the field names) and key ranges work unchanged.

* A message whose value is not valid JSON (when a JSON field needs it) is counted and reported
  with its partition and offset; it makes no row. So is a message whose key field cannot be read
  as the key's kind. A message without the key field (another event type on the topic) is
  counted and left out.
* ``latest_per_key``: a compacted topic's view — the last message of each message key (by
  offset within a partition, by timestamp across partitions); a tombstone (null value) deletes
  the key.
* On the truth side a topic may hold one key twice (a redelivered event): the first copy (by
  partition, offset) is compared, and the repeats are counted.
* In flight: with ``freshness.consumer_group``, a message at or past the group's committed
  offset of its partition (every message of a partition the group never committed) has not been
  consumed yet, so an entity it touches is **pending**, never drift. The row carries a change time
  in the far future, which the diff's freshness rule reads as "changed just now".
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import sqlalchemy as sa

from ..compare import key_part
from ..db import map_errors
from ..diff import Row
from ..errors import SourceError, SpecError
from ..fields import Field, lookup, parse_field
from ..findings import Finding
from ..gcpause import fewer_collections
from ..jsonpath import MISSING
from ..spec import Side
from . import spill_writer
from .spill_writer import SpillWriteError, SpillWriter
from .sql import ReadPlan, SqlSource, _as_time

__all__ = ["TopicSource", "TopicStats", "topic_scope", "locate", "DEFAULT_CACHE_MB", "IN_FLIGHT"]

DEFAULT_CACHE_MB = 64
# Offsets in an extent from which a writer process inserts the spill's rows (about 2.7 s of CPU
# per million rows moved off the reading process, for ~30 ms to start it and 0.2 s to marshal the
# rows); RECONCILE_TOPIC_SPILL_PROCESS_MIN sets another bound.
SPILL_PROCESS_MIN = 100_000
SAMPLES = 10  # locations kept per kind of unreadable message
# The change time of an in-flight row: the diff's freshness rule sees it as changed just now.
IN_FLIGHT = datetime(9999, 12, 31, tzinfo=UTC)
_IN_FLIGHT_TEXT = "9999-12-31T00:00:00+00:00"
_TABLE = "topic_rows"  # a view over _DATA: what the SQL reader's statement, filters and users read
_DATA = "topic_data"  # the stored rows
_TS, _CHANGED, _MKEY, _TOMB = "__rc_ts", "__rc_changed_at", "__rc_mkey", "__rc_tombstone"
_TS_TEXT = (
    f"CASE WHEN {_TS} >= 0 THEN strftime('%Y-%m-%dT%H:%M:%f', {_TS} / 1000.0, 'unixepoch') || '+00:00' END"
)
_KIND_TYPES: dict[str, Callable[[], Any]] = {
    "int": sa.BigInteger,
    "number": sa.Float,
    "datetime": sa.DateTime,
    "text": sa.String,
}
_PART_TYPES: dict[str, Callable[[], Any]] = {
    "key": sa.String,
    "header": sa.String,
    "partition": sa.BigInteger,
    "offset": sa.BigInteger,
    "timestamp": sa.DateTime,
}
_JSON, _HEADER, _KEY, _PARTITION, _OFFSET, _TIMESTAMP = range(6)
_CODES = {
    "json": _JSON,
    "header": _HEADER,
    "key": _KEY,
    "partition": _PARTITION,
    "offset": _OFFSET,
    "timestamp": _TIMESTAMP,
}
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _iso(ms: int) -> str | None:
    if ms is None or ms < 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _store_key(value: Any, kind: str) -> Any:
    """A canonical key value as the spill stores it (so SQLite orders it like Python does)."""
    if value is None:
        return None
    v = key_part(value, kind)
    if kind == "datetime":
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    if kind == "number":
        return float(v)
    if kind == "int" and not -(2**63) <= v < 2**63:
        raise ValueError(f"key value {value!r} does not fit in 64 bits")
    return v


def _store_value(value: Any) -> Any:
    t = type(value)
    if t is dict or t is list:
        return _encode(value)  # bytes: a BLOB, decoded again when read
    if t is int and not -(2**63) <= value < 2**63:
        return str(value)
    return value


@dataclass
class TopicStats:
    """What reading the extent met: counts, and where the unreadable messages are."""

    messages: int = 0
    rows: int = 0
    tombstones: int = 0
    invalid_json: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    bad_key: int = 0
    bad_keys: list[dict[str, Any]] = field(default_factory=list)
    no_key: int = 0
    unkeyed: int = 0  # latest_per_key: messages without a message key (cannot be compacted)
    duplicate_keys: int = 0  # truth side: keys with more than one message (the first is compared)
    in_flight: int = 0
    read_seconds: float = 0.0
    spill_bytes: int = 0

    @property
    def rate(self) -> float:
        """Messages read per second."""
        return self.messages / self.read_seconds if self.read_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": self.messages,
            "rows": self.rows,
            "tombstones": self.tombstones,
            "invalid_json": self.invalid_json,
            "invalid": self.invalid,
            "bad_key": self.bad_key,
            "bad_keys": self.bad_keys,
            "no_key": self.no_key,
            "unkeyed": self.unkeyed,
            "duplicate_keys": self.duplicate_keys,
            "in_flight": self.in_flight,
            "read_seconds": round(self.read_seconds, 3),
            "messages_per_second": round(self.rate),
            "spill_bytes": self.spill_bytes,
        }
        return out


@dataclass(frozen=True)
class _Layout:
    """How the spill stores this run's rows: the key columns with their kinds, the freshness column."""

    key: tuple[str, ...]
    kinds: tuple[str, ...]
    changed_at: str | None


class TopicSource(SqlSource):
    """One topic side: extent fixed at construction, rows spilled to SQLite on the first read."""

    is_topic = True

    def __init__(
        self,
        side: Side,
        role: str,
        reader: Any,
        *,
        consumer_group: str | None = None,
        chunk_rows: int = 10_000,
        cache_mb: int | None = None,
        spill_dir: str | None = None,
        now: datetime | None = None,
        filter_columns: Mapping[str, str] | None = None,
    ):
        if not side.is_topic or side.topic is None:
            raise ValueError("TopicSource needs a topic side")
        self.topic_side = side
        self.topic = side.topic
        self.reader = reader
        self.consumer_group = consumer_group
        self.fields: dict[str, Field] = {name: parse_field(expr) for name, expr in side.fields.items()}
        self.cache_mb = cache_mb or int(os.environ.get("RECONCILE_TOPIC_CACHE_MB") or DEFAULT_CACHE_MB)
        self.generated_extractor = True  # False: every message through the general loop (tests compare)
        self.spill_process: bool | None = None  # a writer process for the spill? None: by size
        self.stats = TopicStats()
        self.committed: dict[int, int] | None = None
        self._layout: _Layout | None = None
        self._blobs: set[str] = set()  # columns with JSON objects/arrays stored as BLOBs
        self._types: dict[str, Any] | None = None
        self._dir = tempfile.mkdtemp(prefix="reconcile-topic-", dir=spill_dir)
        self.path = os.path.join(self._dir, "rows.db")
        try:
            super().__init__(
                Side(url=f"sqlite:///{self.path}", table=_TABLE, where=side.where),
                role,
                chunk_rows=chunk_rows,
                filter_columns=filter_columns,
            )
            since = (now or datetime.now(UTC)) - side.since if side.since else None
            try:
                self.extent = reader.extent(self.topic, since)
            except SpecError as e:
                raise SpecError(f"spec: {role}.topic: {e}") from None
            if consumer_group:
                if not reader.group_known(consumer_group):
                    raise SpecError(
                        f"spec: freshness.consumer_group: group {consumer_group!r} is not known at "
                        f"{reader.where} (it never joined or committed; check the name)"
                    )
                self.committed = reader.committed(consumer_group, self.topic, self.extent.partitions)
        except BaseException:
            self.dispose()
            raise

    # -- what SqlSource asks ---------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.role} {self.topic_side.display}"

    def errors(self) -> Any:
        return map_errors(f"{self.role} topic {self.topic}", "its rows (spilled to SQLite)", SourceError)

    def _table_name(self) -> str:
        return f"topic {self.topic}"

    def columns(self) -> dict[str, Any]:
        """Column name -> type: message parts have theirs, JSON paths none (the other side decides)."""
        if self._types is None:
            types: dict[str, Any] = {
                n: (_PART_TYPES[f.part]() if f.part in _PART_TYPES else None) for n, f in self.fields.items()
            }
            types.update(
                {"_partition": sa.BigInteger(), "_offset": sa.BigInteger(), "_timestamp": sa.DateTime()}
            )
            self._types = types
        return self._types

    def require(self, field: str, names: Sequence[str]) -> None:
        """Raise a SpecError naming the spec field when a column is not a field of this topic."""
        have = self.columns()
        for name in names:
            if name not in have:
                raise SpecError(
                    f"spec: {field}: {self.role} topic {self.topic} has no field {name!r} "
                    f"(its fields: {', '.join(have)}; add `{name}: ...` under {self.role}.fields)"
                )

    def null_keys(self, plan: ReadPlan, where: str | None = None) -> int:
        """0: a message without the key field is another kind of event on the topic, not a broken
        row. Such messages are left out, counted (``no_key``) and listed in the run's problems."""
        self.load(plan)
        return 0

    def select(self, plan: ReadPlan, **kw: Any) -> sa.Select[Any]:
        # Copies of one key come in a fixed order: the first message first.
        return super().select(plan, **kw).order_by(sa.column("_partition"), sa.column("_offset"))

    def stream(
        self,
        plan: ReadPlan,
        *,
        where: str | None = None,
        keys: Sequence[tuple[Any, ...]] | None = None,
        extra_filter: Callable[[sa.FromClause], Any] | None = None,
        session: Sequence[str] = (),
    ) -> Iterator[Row]:
        """The topic's rows ordered by canonical key, read from the spill (made on the first call).

        The statement is the SQL reader's own (same filters, same order), run on a plain
        read-only sqlite3 cursor: the stored keys are canonical already, so the rows need no
        per-value conversion except JSON containers, timestamps and non-text, non-integer keys.
        """
        self.load(plan)
        kinds = list(plan.kinds)
        nk, nv = len(plan.key), len(plan.values)
        fix_key = [None if k in ("text", "int") else k for k in kinds]
        plain_keys = all(k is None for k in fix_key)
        convert = self._converters(plan.values)
        full = replace(plan, changed_at=_CHANGED)
        dedupe = self.role == "truth"
        batches: list[Sequence[tuple[Any, ...]] | None] = [None]
        if keys is not None:
            stored = [tuple(_store_key(v, k) for v, k in zip(key, kinds, strict=True)) for key in keys]
            batches = [stored[i : i + 500] for i in range(0, len(stored), 500)]
        last: tuple[Any, ...] | None = None
        make_row = tuple.__new__  # Row(...) without its Python-level __new__: a row per message
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            for batch in batches:
                stmt = self.select(full, where=where, keys=batch, extra_filter=extra_filter)
                compiled = stmt.compile(
                    dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True}
                )
                args = [compiled.params[name] for name in compiled.positiontup or ()]
                try:
                    cursor = conn.execute(str(compiled), args)
                except sqlite3.Error as e:
                    raise SourceError(f"{self.role} topic {self.topic}: cannot read its rows: {e}") from None
                while chunk := cursor.fetchmany(self.chunk_rows):
                    for r in chunk:
                        if plain_keys:
                            key = tuple(r[:nk])
                        else:
                            key = tuple(
                                v if f is None or v is None else key_part(v, f)
                                for v, f in zip(r[:nk], fix_key, strict=True)
                            )
                        if dedupe:
                            if key == last:
                                continue
                            last = key
                        values = tuple(r[nk : nk + nv])
                        if convert is not None:
                            values = convert(values)
                        changed = r[nk + nv]
                        yield make_row(Row, (key, values, None if changed is None else _as_time(changed)))
        finally:
            conn.close()

    def dispose(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- the spill -------------------------------------------------------------------------
    def _converters(self, names: Sequence[str]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
        """Values as they left the message: JSON objects and arrays decoded, timestamps as datetimes."""
        times = {n for n, f in self.fields.items() if f.part == "timestamp"} | {"_timestamp"}
        jsons = self._blobs  # the JSON columns that hold an object or an array somewhere
        todo = [(i, n in times) for i, n in enumerate(names) if n in times or n in jsons]
        if not todo:
            return None

        def convert(values: tuple[Any, ...]) -> tuple[Any, ...]:
            out = list(values)
            for i, is_time in todo:
                v = out[i]
                if v is None:
                    continue
                if is_time:
                    out[i] = datetime.fromisoformat(v)
                elif isinstance(v, bytes):
                    out[i] = _decode(v)
            return tuple(out)

        return convert

    def load(self, plan: ReadPlan) -> None:
        """Read the extent into the spill, once; later plans must key the rows the same way."""
        layout = _Layout(tuple(plan.key), tuple(plan.kinds), plan.changed_at)
        if "_timestamp" in layout.key:
            raise SpecError(
                f"spec: key: {self.role} topic {self.topic} cannot be keyed by _timestamp "
                "(add a field `at: timestamp` and key by it)"
            )
        if self._layout is not None:
            if (layout.key, layout.kinds) != (self._layout.key, self._layout.kinds):
                raise SourceError(
                    f"{self.where}: read again with another key ({layout.key} vs {self._layout.key})"
                )
            return
        started = time.monotonic()
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            for pragma in self._pragmas():
                conn.execute(f"PRAGMA {pragma}")
            with fewer_collections():  # a few tuples per message, none of them in a cycle
                self._fill(conn, layout, plan.values)
        except (sqlite3.Error, SpillWriteError) as e:
            raise SourceError(f"{self.where}: cannot spill rows to {self.path}: {e}") from None
        finally:
            conn.close()
        self._layout = layout
        self.stats.read_seconds = time.monotonic() - started
        self.stats.spill_bytes = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        types = dict(self.columns())
        for name, kind in zip(layout.key, layout.kinds, strict=True):
            if name in self.fields:
                types[name] = _KIND_TYPES[kind]()
        self._types = types

    def _pragmas(self) -> list[str]:
        mb = self.cache_mb
        return ["journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", f"cache_size=-{mb * 1024}"]

    def _writer_wanted(self) -> bool:
        """Whether the rows go to the spill through a writer process (:mod:`.spill_writer`)."""
        if self.spill_process is not None:
            return self.spill_process
        raw = os.environ.get("RECONCILE_TOPIC_SPILL_PROCESS_MIN", "").strip()
        least = int(raw) if raw else SPILL_PROCESS_MIN
        return self.extent.messages >= least and spill_writer.available()

    def _fill(self, conn: sqlite3.Connection, layout: _Layout, values: Sequence[str] = ()) -> None:
        side, stats = self.topic_side, self.stats
        latest = side.latest_per_key
        # Timestamp fields are computed from the stored milliseconds when read, unless one is
        # (part of) the key: then it is stored canonical, like every key column.
        generated = [n for n, f in self.fields.items() if f.part == "timestamp" and n not in layout.key]
        stored = [n for n in self.fields if n not in generated]
        cols = [
            "_partition INTEGER",
            "_offset INTEGER",
            f"{_TS} INTEGER",
            f"{_CHANGED}",
            *[_q(n) for n in stored],
        ]
        if latest:
            cols += [f"{_MKEY} BLOB", f"{_TOMB} INTEGER"]
        conn.execute(f"CREATE TABLE {_DATA} ({', '.join(cols)})")
        # The message time as text, and the timestamp fields, are computed when read, by a view:
        # not generated columns of the table, which cost about 1.2 s per million rows inserted
        # even as VIRTUAL ones (SQLite 3.40; bench/TOPIC.md). The view is flattened into every
        # query on it, so the index on the table serves the ordered read as before.
        shown = ", ".join(f"{_TS_TEXT} AS {_q(n)}" for n in ["_timestamp", *generated])
        conn.execute(f"CREATE VIEW {_TABLE} AS SELECT *, {shown} FROM {_DATA}")
        names = ["_partition", "_offset", _TS, _CHANGED, *stored] + ([_MKEY, _TOMB] if latest else [])
        insert = f"INSERT INTO {_DATA} ({', '.join(map(_q, names))}) VALUES ({', '.join('?' * len(names))})"
        if latest:
            conn.execute(f"CREATE UNIQUE INDEX {_DATA}_mkey ON {_DATA} ({_MKEY})")
            newer = (
                f"CASE WHEN excluded._partition = {_DATA}._partition "
                f"THEN excluded._offset > {_DATA}._offset "
                f"ELSE (excluded.{_TS}, excluded._partition) > ({_DATA}.{_TS}, {_DATA}._partition) END"
            )
            sets = ", ".join(f"{_q(n)} = excluded.{_q(n)}" for n in names if n != _MKEY)
            insert += f" ON CONFLICT ({_MKEY}) DO UPDATE SET {sets} WHERE {newer}"

        key_kind = dict(zip(layout.key, layout.kinds, strict=True))
        fresh = layout.changed_at
        committed = self.committed
        extract = self._extractor(stored, key_kind)
        fresh_index = stored.index(fresh) if fresh in stored else None
        fresh_is_time = fresh == "_timestamp" or (
            fresh in self.fields and self.fields[fresh].part == "timestamp"
        )
        simple = committed is None and fresh is None and not latest
        writer = SpillWriter(self.path, self._pragmas(), insert) if self._writer_wanted() else None
        try:
            if writer is not None:
                put: Callable[[list[tuple[Any, ...]]], Any] = writer.write
            else:
                conn.execute("BEGIN")
                put = partial(conn.executemany, insert)
            for batch in self.reader.read(self.extent, batch=self.chunk_rows):
                stats.messages += len(batch)
                if simple:  # the common case: the extractor's rows go in as they are
                    put([r for r in map(extract, batch) if r is not None])
                    continue
                out: list[tuple[Any, ...]] = []
                for msg in batch:
                    row = extract(msg)
                    if row is None:
                        continue
                    p, o, ms = row[0], row[1], row[2]
                    if committed is not None and o >= committed.get(p, -1):
                        changed: Any = _IN_FLIGHT_TEXT
                        stats.in_flight += 1
                    elif fresh_index is not None:
                        changed = row[4 + fresh_index]
                    elif fresh_is_time:  # _timestamp or a timestamp field: the message time
                        changed = _iso(ms)
                    else:
                        changed = None
                    if changed is not None:
                        row = (p, o, ms, changed, *row[4:])
                    if latest:
                        key, value = msg[3], msg[4]
                        if key is None:
                            stats.unkeyed += 1
                            continue
                        row = (
                            *row,
                            key if isinstance(key, bytes) else str(key).encode(),
                            1 if value is None else 0,
                        )
                    out.append(row)
                put(out)
            if writer is not None:
                writer.finish()
            else:
                conn.execute("COMMIT")
        except BaseException:
            if writer is not None:
                writer.stop()
            raise

        if latest:
            conn.execute(f"DELETE FROM {_DATA} WHERE {_TOMB} = 1")
        key_cols = ", ".join(_q(k) for k in layout.key)
        # The index also holds the compared values and the change time (a covering index): the
        # rows then come back in key order from the index alone, not by a table lookup per row
        # (about 1 s per million rows). Other columns (a later plan's, a where: filter's) are
        # still read, from the table.
        covered = [n for n in dict.fromkeys(values) if n in stored and n not in layout.key]
        if any(n == "_timestamp" or n in generated for n in values):
            covered.append(_TS)
        extra = "".join(f", {_q(n)}" for n in [*covered, _CHANGED])
        conn.execute(f"CREATE INDEX {_DATA}_key ON {_DATA} ({key_cols}, _partition, _offset{extra})")
        nulls = " OR ".join(f"{_q(k)} IS NULL" for k in layout.key)
        stats.no_key = int(conn.execute(f"SELECT count(*) FROM {_DATA} WHERE {nulls}").fetchone()[0])
        stats.rows = int(conn.execute(f"SELECT count(*) FROM {_DATA}").fetchone()[0]) - stats.no_key
        if self.role == "truth":
            stats.duplicate_keys = int(
                conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM {_DATA} WHERE NOT ({nulls}) "
                    f"GROUP BY {key_cols} HAVING count(*) > 1)"
                ).fetchone()[0]
            )

    def _extractor(
        self, stored: Sequence[str], key_kind: dict[str, str]
    ) -> Callable[[tuple[Any, ...]], tuple[Any, ...] | None]:
        """A function from one raw message to its spill row: partition, offset, timestamp (ms),
        change time (None; the caller sets it), then the stored field values. None: not a row.

        It runs once per message, so the work that does not depend on the message is done here:
        each field becomes a small int and its arguments (a header name; a JSON path's member
        names, and the names after ``data`` for a binary-mode CloudEvent). Per message, the
        headers become one dict and the CloudEvents mode is decided once, and plain member paths
        (``$.a.b``, the common case) are walked inline, without calls.
        """
        fields = [self.fields[n] for n in stored]
        specs: list[tuple[int, Any, Any, Any, str | None, str]] = []
        for n, f in zip(stored, fields, strict=True):
            code = _CODES[f.part]
            path = f.path
            names = inner = None
            if code == _JSON:
                assert path is not None
                names = path.names
                # A binary-mode CloudEvent's value is its data: $.data.x is the value's x.
                if path.head == "data" and path.after_head is not None and not path.wildcard:
                    inner = path.after_head.names or path.after_head
            specs.append((code, f.header if code == _HEADER else path, names, inner, key_kind.get(n), n))
        needs_json = any(f.uses_value for f in fields)
        needs_headers = any(f.part in ("header", "json") for f in fields)
        stats = self.stats
        blobs = self._blobs
        big = 2**63
        no_headers: dict[str, Any] = {}

        def extract(msg: tuple[Any, ...]) -> tuple[Any, ...] | None:
            p, o, ms, key, value, raw_headers = msg
            if value is None:
                stats.tombstones += 1
            doc: Any = None
            if value is not None and needs_json:
                try:
                    doc = _decode(value)
                except (msgspec.DecodeError, UnicodeDecodeError) as e:
                    stats.invalid_json += 1
                    if len(stats.invalid) < SAMPLES:
                        stats.invalid.append({"partition": p, "offset": o, "error": str(e)[:200]})
                    return None
            hd: Any = no_headers
            binary = False  # a binary-mode CloudEvent (ce_specversion or ce_id header)?
            if needs_headers and raw_headers:
                # A mapping, or (name, value) pairs as Kafka clients hand them over: the last of
                # a repeated name wins, as in header_value.
                hd = raw_headers if raw_headers.__class__ is dict else dict(raw_headers)
                binary = hd.get("ce_specversion") is not None or hd.get("ce_id") is not None
            out: list[Any] = [p, o, ms, None]  # position, time, change time (set by the caller)
            for code, arg, names, inner, kind, name in specs:
                if code == _JSON:
                    if names is not None:  # $.a.b: _walk inline (no call per message on the hot path)
                        x = doc
                        for step in names:
                            if x.__class__ is not dict:
                                x = MISSING
                                break
                            x = x.get(step, MISSING)
                            if x is MISSING:
                                break
                    else:
                        x = arg.first(doc)
                    if x is MISSING or (arg.wildcard and not x):
                        if (
                            binary
                            and inner is not None
                            and not (doc.__class__ is dict and "specversion" in doc)
                        ):
                            x = _walk(doc, inner) if inner.__class__ is tuple else inner.first(doc)
                        else:
                            x = lookup(arg, doc, hd, binary)
                        if x is MISSING:
                            x = None
                elif code == _HEADER:
                    x = hd.get(arg)
                    if x is None:
                        if arg[:3] == "ce_" and value is not None:
                            x = _structured_attribute(doc if needs_json else _try_decode(value), arg[3:])
                    elif x.__class__ is not str:
                        x = bytes(x).decode("utf-8", "replace")
                elif code == _KEY:
                    x = key if key is None or key.__class__ is str else bytes(key).decode("utf-8", "replace")
                elif code == _PARTITION:
                    x = p
                elif code == _OFFSET:
                    x = o
                else:  # a timestamp field that is a key column
                    x = datetime.fromtimestamp(ms / 1000, UTC) if ms is not None and ms >= 0 else None
                if kind is None:
                    t = x.__class__
                    if t is dict or t is list or (t is int and not -big <= x < big):
                        x = _store_value(x)
                        if x.__class__ is bytes:
                            blobs.add(name)
                elif x is not None and not (
                    (kind == "text" and x.__class__ is str)
                    or (kind == "int" and x.__class__ is int and -big <= x < big)
                ):
                    try:
                        x = _store_key(x, kind)
                    except (ValueError, TypeError) as e:
                        stats.bad_key += 1
                        if len(stats.bad_keys) < SAMPLES:
                            stats.bad_keys.append({"partition": p, "offset": o, "error": str(e)[:200]})
                        return None
                out.append(x)
            return tuple(out)

        if not self.generated_extractor:
            return extract
        return _generated_extractor(specs, needs_json, extract) or extract

    # -- after the diff --------------------------------------------------------------------
    def locations(self, key: Sequence[Any]) -> list[tuple[int, int, datetime | None]]:
        """(partition, offset, timestamp) of every message with this canonical key, in offset order."""
        if self._layout is None:
            return []
        layout = self._layout
        cond = " AND ".join(f"{_q(k)} = ?" for k in layout.key)
        args = [_store_key(v, kind) for v, kind in zip(key, layout.kinds, strict=True)]
        with self.errors(), self.engine.connect() as conn:
            got = conn.exec_driver_sql(
                f"SELECT _partition, _offset, {_TS} FROM {_DATA} WHERE {cond} ORDER BY _partition, _offset",
                tuple(args),
            ).all()
        return [
            (int(p), int(o), datetime.fromtimestamp(ms / 1000, UTC) if ms >= 0 else None) for p, o, ms in got
        ]

    def annotate(self, findings: Sequence[Finding], key_names: Sequence[str]) -> list[Finding]:
        """Findings with this side's values extended by where its message(s) sit on the topic:
        ``_partition``, ``_offset``, ``_timestamp`` (the compared copy), and ``_copies`` (every
        copy's partition and offset) when the key is on the topic more than once."""
        attr = "truth" if self.role == "truth" else "projection"
        out: list[Finding] = []
        for f in findings:
            values = getattr(f, attr)
            if values is None:
                out.append(f)
                continue
            locs = self.locations([f.key[n] for n in key_names])
            if not locs:
                out.append(f)
                continue
            p, o, ts = locs[0]
            more: dict[str, Any] = {"_partition": p, "_offset": o, "_timestamp": ts}
            if len(locs) > 1:
                more["_copies"] = [{"partition": a, "offset": b} for a, b, _ in locs]
            merged = {**values, **more}
            out.append(replace(f, truth=merged) if attr == "truth" else replace(f, projection=merged))
        return out

    def describe(self) -> dict[str, Any]:
        """The recorded extent and what reading it met: for the run's scope and for validate."""
        out: dict[str, Any] = {
            **self.extent.to_dict(),
            "transport": self.topic_side.transport,
            "latest_per_key": self.topic_side.latest_per_key,
        }
        if self.consumer_group:
            out["consumer_group"] = self.consumer_group
            out["committed"] = {str(p): o for p, o in sorted((self.committed or {}).items())}
        if self._layout is not None:
            out["read"] = self.stats.to_dict()
            out["problems"] = self.problems()
        return out

    def problems(self) -> list[str]:
        """One line per kind of message that made no row (empty when every message was read)."""
        s, lines = self.stats, []
        on = f"{self.role} topic {self.topic}"

        def at(samples: list[dict[str, Any]]) -> str:
            shown = ", ".join(f"partition {x['partition']} offset {x['offset']}" for x in samples[:3])
            return shown + (" ..." if len(samples) > 3 else "")

        if s.invalid_json:
            lines.append(f"{on}: {s.invalid_json} message(s) not valid JSON, skipped ({at(s.invalid)})")
        if s.bad_key:
            lines.append(f"{on}: {s.bad_key} message(s) with an unreadable key, skipped ({at(s.bad_keys)})")
        if s.no_key:
            lines.append(f"{on}: {s.no_key} message(s) without the key field, left out")
        if s.unkeyed:
            lines.append(f"{on}: {s.unkeyed} message(s) without a message key, left out of latest_per_key")
        if s.duplicate_keys:
            lines.append(
                f"{on}: {s.duplicate_keys} key(s) more than once on the topic; the first is compared"
            )
        return lines


def _generated_extractor(
    specs: Sequence[tuple[int, Any, Any, Any, str | None, str]],
    needs_json: bool,
    general: Callable[[tuple[Any, ...]], tuple[Any, ...] | None],
) -> Callable[[tuple[Any, ...]], tuple[Any, ...] | None] | None:
    """The extractor for these fields as one generated function (as ``dataclasses`` generates
    ``__init__``): each field's code inlined, no loop, no dispatch on the field's part.

    It handles the common message only — a decoded JSON object, plain member paths (a binary
    CloudEvent's ``$.data.x`` read as the value's ``x``), headers present or absent, key values
    already canonical — and hands every other message to ``general`` (the loop in
    :meth:`TopicSource._extractor`), which counts tombstones, invalid JSON and bad keys, and walks
    the other CloudEvents views. Where it returns a row itself, ``general`` returns the same row.
    None: some field is of a kind it does not generate (a wildcard or indexed path, a timestamp).
    """
    env: dict[str, Any] = {
        "general": general,
        "decode": _decode,
        "MISSING": MISSING,
        "errors": (msgspec.DecodeError, UnicodeDecodeError),
        "big": 2**63,
    }
    body = [
        "    p, o, ms, key, value, raw_headers = msg",
        "    if value is None:",
        "        return general(msg)",
    ]
    if needs_json:
        body += [
            "    try:",
            "        doc = decode(value)",
            "    except errors:",
            "        return general(msg)",
            "    if doc.__class__ is not dict:",
            "        return general(msg)",
        ]
    if any(code in (_HEADER, _JSON) for code, *_ in specs):
        body += [
            "    if raw_headers:",
            "        hd = raw_headers if raw_headers.__class__ is dict else dict(raw_headers)",
            "        binary = hd.get('ce_specversion') is not None or hd.get('ce_id') is not None",
            "    else:",
            "        hd = {}",
            "        binary = False",
        ]

    def walk(var: str, start: str, names: tuple[str, ...]) -> list[str]:
        out = [f"    {var} = {start}.get({names[0]!r}, MISSING)"]
        for step in names[1:]:
            out += [
                f"    if {var} is not MISSING:",
                f"        {var} = {var}.get({step!r}, MISSING) if {var}.__class__ is dict else MISSING",
            ]
        return out

    values = []
    for i, (code, arg, names, inner, kind, _) in enumerate(specs):
        x = f"x{i}"
        values.append(x)
        if code == _JSON:
            if not names:
                return None
            body += walk(x, "doc", names)
            body.append(f"    if {x} is MISSING:")
            if inner.__class__ is tuple and inner:
                body += [
                    "        if not binary or 'specversion' in doc:",
                    "            return general(msg)",
                    *("    " + line for line in walk(x, "doc", inner)),
                    f"        if {x} is MISSING:",
                    f"            {x} = None",
                ]
            else:
                body.append("        return general(msg)")
        elif code == _HEADER:
            body += [f"    {x} = hd.get({arg!r})"]
            if arg[:3] == "ce_":  # absent: a structured-mode attribute, maybe
                body += [f"    if {x} is None:", "        return general(msg)"]
            body += [
                f"    if {x} is not None and {x}.__class__ is not str:",
                f"        {x} = bytes({x}).decode('utf-8', 'replace')",
            ]
        elif code == _KEY:
            body += [
                f"    {x} = key",
                f"    if {x} is not None and {x}.__class__ is not str:",
                f"        {x} = bytes({x}).decode('utf-8', 'replace')",
            ]
        elif code == _PARTITION:
            body.append(f"    {x} = p")
        elif code == _OFFSET:
            body.append(f"    {x} = o")
        else:
            return None
        if code in (_HEADER, _KEY) and kind in (None, "text"):
            continue  # text or None already: stored as it is
        if kind is None:  # containers and huge integers are stored another way: general does it
            body += [
                f"    t = {x}.__class__",
                f"    if t is dict or t is list or (t is int and not -big <= {x} < big):",
                "        return general(msg)",
            ]
        elif kind == "text":
            body += [f"    if {x} is not None and {x}.__class__ is not str:", "        return general(msg)"]
        elif kind == "int":
            body += [
                f"    if {x} is not None and not ({x}.__class__ is int and -big <= {x} < big):",
                "        return general(msg)",
            ]
        else:
            body += [f"    if {x} is not None:", "        return general(msg)"]
    body.append(f"    return (p, o, ms, None, {', '.join(values)}{',' if len(values) == 1 else ''})")
    source = "def extract(msg):\n" + "\n".join(body) + "\n"
    exec(compile(source, "<reconcile.sources.topic generated extractor>", "exec"), env)  # noqa: S102
    fn: Callable[[tuple[Any, ...]], tuple[Any, ...] | None] = env["extract"]
    fn.__doc__ = source
    return fn


def _walk(doc: Any, steps: tuple[str, ...]) -> Any:
    """The value at a plain path (``$.a.b`` as its names), or MISSING: what JsonPath.first does."""
    x = doc
    for step in steps:
        if x.__class__ is not dict:
            return MISSING
        x = x.get(step, MISSING)
        if x is MISSING:
            return MISSING
    return x


def topic_scope(*sources: SqlSource) -> dict[str, Any]:
    """The topic sides' recorded extents and what reading them met (for a run's scope), by role."""
    return {src.role: src.describe() for src in sources if isinstance(src, TopicSource)}


def locate(findings: list[Finding], sources: Sequence[SqlSource], key_names: Sequence[str]) -> list[Finding]:
    """Findings whose topic side shows where its message(s) sit (see :meth:`TopicSource.annotate`)."""
    for src in sources:
        if isinstance(src, TopicSource) and findings:
            findings = src.annotate(findings, key_names)
    return findings


def _try_decode(value: Any) -> Any:
    try:
        return _decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def _structured_attribute(doc: Any, name: str) -> Any:
    """A structured-mode CloudEvent's attribute (what ``header:ce_<name>`` is in binary mode)."""
    if type(doc) is not dict or "specversion" not in doc:
        return None
    value = doc.get(name)
    return value if isinstance(value, str) or value is None else str(value)
