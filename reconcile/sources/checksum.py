"""Checksum pushdown: let the two databases say where they differ, then diff only that.

Streaming a 5M-row pair through Python costs a minute; a database scans and hashes the same
rows in seconds. So, when both sides are PostgreSQL, MariaDB or MySQL, each database first
summarises its rows per **bucket**, and only the rows of buckets whose summaries differ are
streamed, ordered by key, through the same :func:`reconcile.diff.diff_rows` merge as the
streaming path. Findings, pending entities and the tolerance/normalise rules therefore stay
exactly as they are there. Two PostgreSQL databases hash with PostgreSQL's typed hash functions
(below); a pair with MariaDB or MySQL on either side hashes a canonical text both engines print
alike (:mod:`reconcile.sources.portable`), with hash buckets only.

Two kinds of bucket:

* **Key ranges** (:mod:`reconcile.sources.keyranges`), when the key has an order both databases
  share and both can walk through an index (integer and text keys, composite ones too, read
  from tables). Only the first level reads every row, in one sequential scan; every later level
  and the final fetch read just the differing ranges through the key index.
* **Hash buckets** for every other key (numbers, timestamps, mixed types, queries, no index):
  the bucket of a row is the low :data:`FINE_BITS` bits of a 64-bit hash of its canonical key,
  and a level with ``b`` bits groups rows by the top ``b`` of those bits. That spreads any key
  evenly without boundaries, but a bucket's rows are scattered, so each level is a full scan.

Per bucket each side returns ``count(*)`` and a fold of a 64-bit hash of each row: ``bit_xor``
where both servers are PostgreSQL 14+, else the sum as two int4 halves (``sum(int4)`` keeps a
plain bigint, where ``sum(bigint)`` keeps a numeric state). The row hash chains typed hash
functions over the row's compared values (``hashint8extended``, ``hash_numeric_extended``,
``hashtextextended`` of the text form for the rest), seeded with the key (or its hash) and, for
values that may be NULL on either side, a bitmap of which are, so NULL stays apart from ``0``
and ``''``. Values are put in a canonical form where the two sides' types differ (integers as
bigint, numbers through ``trim_scale(numeric)``, timestamps in UTC), so equal facts usually
hash equal.

Correctness never rests on that canonical form: a bucket is skipped only when both sides' count
and hash fold agree, i.e. (short of a 64-bit collision) when the (key, values) are the same
multiset (with XOR, equal rows cancel only in pairs, which changes the count), and equal values
are equal by meaning. Anything else (a real difference, or only a representation such as
``9.50`` facing ``9.5`` text) just makes the bucket differ, and its rows are fetched and judged
by the merge. A key that falls in different buckets on the two sides makes both buckets differ,
and both are fetched from both sides, so the merge still pairs it.

Levels: the first level is sized from the table statistics (about :data:`ROWS_PER_BUCKET` rows
a bucket); while the differing buckets still hold more than :data:`REFINE_ROWS` rows (hash) or
:data:`RANGE_REFINE_ROWS` (key ranges, whose finer levels read only those ranges and return one
summary row per sub-range, far cheaper than merging the rows in Python), the next level splits
only those buckets: hash buckets ``2**STEP_BITS`` ways, ranges into sub-ranges of about
:data:`FINAL_ROWS` rows (at most about :data:`MAX_SUMMARY_ROWS` of them), so the fetch after
reads little more than the drifted rows. When most buckets differ (``fallback``), pushdown
cannot save anything and the caller streams instead. Both databases are queried at once, each
from its own thread (started before the merge asks either for a row); the final fetch is read
ahead the same way, through a bounded queue.

Summary counts stay those of the streaming path: a skipped bucket holds ``count`` entities
that are equal on both sides, so it adds ``count`` to ``compared``, ``truth_rows`` and
``projection_rows``.

``key_range=(lo, hi)`` restricts everything to ``lo <= first key column < hi`` (None: open),
by the same expression and order as :mod:`reconcile.fanout`'s ranges, so a fan-out worker can
push its own range down.
"""

from __future__ import annotations

import heapq
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from ..compare import ColumnRule, key_part
from ..diff import DiffOutcome, Row, diff_rows
from ..errors import SourceError, SpecError
from . import keyranges, portable
from .keyranges import FirstGrain, Grain, RangeKey, both
from .sql import ReadPlan, SqlSource, _as_time, _type_kind

__all__ = [
    "Level",
    "ChecksumStats",
    "ChecksumResult",
    "checksum_diff",
    "unsupported_reason",
    "BUCKETS",
    "FINE_BITS",
    "ROWS_PER_BUCKET",
    "REFINE_ROWS",
    "RANGE_REFINE_ROWS",
    "STEP_BITS",
]

BUCKETS = ("auto", "range", "hash")  # auto: key ranges where the key allows, else hash buckets
FINE_BITS = 30  # hash bucket ids are the low 30 bits of the key hash; levels use its top bits
ROWS_PER_BUCKET = 64  # first level: about this many rows per bucket (from table statistics)
MIN_BITS, MAX_FIRST_BITS, DEFAULT_BITS = 8, 18, 12  # first-level bits: bounds; without statistics
STEP_BITS = 8  # each refinement splits a differing bucket about 2**8 ways
REFINE_ROWS = 50_000  # hash buckets: refine while the differing buckets hold more rows than this
# Key ranges: a finer level reads only the differing ranges, through the index, and returns a
# summary row per sub-range, far cheaper than merging their rows in Python: refine down to this.
RANGE_REFINE_ROWS = 2_000
FINAL_ROWS = 4  # key ranges: a refined level aims at this many rows per sub-range ...
MAX_SUMMARY_ROWS = 50_000  # ... but returns about this many summary rows at most
MAX_LEVELS = 3
# The first (full) scan of a big table is cut into block ranges read at once, on one snapshot:
MAX_CHUNKS = 4  # at most this many per side (and no more than PostgreSQL's own parallel workers + 1)
CHUNK_PAGES = 8192  # each at least this many 8 kB pages (64 MB)
FALLBACK_RATIO = 0.5  # with fallback, stream when more than this share of buckets differ
WORK_MEM = "64MB"
# Settings local to one query's transaction (applied in one round trip, see _settle).
SUMMARY_SQL = {"work_mem": WORK_MEM}  # so the per-bucket hash aggregate stays in memory
# Every query here is read to its end through a server-side cursor; planned for its first 10% of
# rows (the default), a range lookup walks the whole key index in order instead of probing it.
CURSOR_SQL = {"cursor_tuple_fraction": "1"}
# A hash-bucket fetch keeps a few rows out of a whole scan: PostgreSQL cannot estimate the bucket
# filter and walks the key index for the ORDER BY; a sequential scan and a small sort is ~2x faster.
FETCH_SQL = {"enable_indexscan": "off"}
# Range lookups are a few index probes, but the planner, blind to how many ranges there are,
# costs them like a big join and would spend longer compiling (JIT) or forking workers than reading.
RANGE_SQL = {"jit": "off", "max_parallel_workers_per_gather": "0"}

Key = tuple[Any, ...]
Expr = sa.ColumnElement[Any]
T = TypeVar("T")


def _settle(conn: sa.Connection, *settings: Mapping[str, str]) -> None:
    """Apply transaction-local settings (reconcile's own constants) in one round trip."""
    merged = {k: v for s in settings for k, v in s.items()}
    if merged and conn.dialect.name == "postgresql":  # planner settings: PostgreSQL's own
        conn.execute(sa.select(*[sa.func.set_config(k, v, True) for k, v in merged.items()]))


def unsupported_reason(truth: SqlSource, projection: SqlSource) -> str | None:
    """Why checksum pushdown cannot run on this pair, or None when it can.

    Two PostgreSQL 13+ databases use PostgreSQL's typed hashes; a pair with MariaDB or MySQL
    (8+) on either side hashes the portable text form (:mod:`reconcile.sources.portable`),
    folded with ``bit_xor``, which PostgreSQL has from 14."""
    cross = portable.portable(truth.dialect, projection.dialect)
    for src in (truth, projection):
        if src.dialect not in portable.DIALECTS:
            need = "PostgreSQL, MariaDB or MySQL on both sides"
            return f"{src.role} is {src.dialect}; checksum pushdown needs {need}"
        version = src.engine.dialect.server_version_info
        if src.dialect == "postgresql":
            least = 14 if cross else 13
            if version is not None and version < (least,):
                return f"{src.role} runs PostgreSQL {version[0]}; pushdown needs {least} or later here"
        elif not getattr(src.engine.dialect, "is_mariadb", False) and version is not None and version < (8,):
            return f"{src.role} runs MySQL {version[0]}; checksum pushdown needs MySQL 8 or MariaDB"
    return None


@dataclass(frozen=True, slots=True)
class Level:
    """One round of bucket summaries."""

    bits: int  # about 2**bits buckets over the whole key at this level
    buckets: int  # non-empty buckets on either side
    differing: int
    differing_rows: int  # rows (larger side) in the differing buckets
    seconds: float
    grain: str = "hash"  # what a bucket is: "hash", or the key range, e.g. "id>>6"


@dataclass(slots=True)
class ChecksumStats:
    """What the pushdown did: its buckets, its levels and how many rows it fetched to diff."""

    levels: list[Level] = field(default_factory=list)
    skipped_rows: int = 0  # entities in buckets that matched (never fetched)
    fetched_truth: int = 0
    fetched_projection: int = 0
    fell_back: bool = False
    buckets: str = "hash"  # "range" or "hash"
    why_hash: str | None = None  # why key ranges could not be used, when they were not
    scan_chunks: tuple[int, int] = (1, 1)  # block ranges of each side's first scan


@dataclass(slots=True)
class ChecksumResult:
    """The merged outcome (equal to the streaming path's) and the pushdown's stats."""

    outcome: DiffOutcome
    stats: ChecksumStats


# -- SQL expressions ---------------------------------------------------------------------------
def _same_type(a: Any, b: Any) -> bool:
    if isinstance(a, sa.types.TypeEngine) and isinstance(b, sa.types.TypeEngine):
        return type(a) is type(b) and repr(a) == repr(b)
    return a is not None and a is b


def _family(t: Any) -> str:
    """Which hash function a value of this (SQLAlchemy) type goes through: int, numeric or text."""
    if isinstance(t, sa.Integer):
        return "int"
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float):
        return "numeric"
    return "text"  # its text form; also every type sampled from a query (its SQL type is unknown)


def _key_family(kind: str, a: Any, b: Any) -> str:
    """The hash family of one key column, decided from both sides' types (so both agree)."""
    if kind == "int":
        ints = all(isinstance(t, sa.Integer) for t in (a, b))
        return "int" if ints else "numeric"
    return "numeric" if kind == "number" else "text"


def _canon_key(col: sa.ColumnElement[Any], mine: Any, kind: str) -> sa.ColumnElement[Any]:
    """One key column in the form both sides share (mirrors compare.key_part)."""
    own = _type_kind(mine)
    if kind == "int":
        return col if own == "int" and not portable.is_bool(mine) else sa.cast(col, sa.BigInteger)
    if kind == "number":
        return sa.func.trim_scale(sa.cast(col, sa.Numeric))
    if kind == "datetime":
        return sa.func.timezone("UTC", sa.cast(col, sa.DateTime(timezone=True)))
    return col if own == "text" else sa.cast(col, sa.Text)


def _canon_value(col: sa.ColumnElement[Any], mine: Any, other: Any) -> tuple[sa.ColumnElement[Any], str]:
    """One compared value, canonical where the two sides' types differ, and its hash family."""
    if _same_type(mine, other):
        return col, _family(mine)
    if portable.is_bool(mine):
        return sa.cast(col, sa.Integer), "int"
    own = _type_kind(mine)
    if own in ("int", "number"):
        return sa.func.trim_scale(sa.cast(col, sa.Numeric)), "numeric"
    if own == "datetime":
        return sa.func.timezone("UTC", sa.cast(col, sa.DateTime(timezone=True))), "text"
    return col, "text"  # text and the rest: text form; a representation gap only costs a fetch


def _lit(n: int) -> sa.ColumnElement[Any]:
    """Our own integer constants, inline: PostgreSQL has bigint >> int4 and no bigint >> bigint."""
    return sa.literal_column(str(int(n)))


def _hash(family: str, value: Expr, seed: Expr, nullable: bool = True) -> Expr:
    """A 64-bit hash of a value, seeded; NULL hashes as its family's zero (``0`` or ``''``)."""

    def zero(v: Expr, z: str) -> Expr:
        return sa.func.coalesce(v, sa.literal_column(z)) if nullable else v

    if family == "int":
        return sa.func.hashint8extended(zero(sa.cast(value, sa.BigInteger), "0"), seed, type_=sa.BigInteger)
    if family == "numeric":  # equal numerics hash equal whatever their scale (9.50 and 9.5)
        return sa.func.hash_numeric_extended(zero(value, "0"), seed, type_=sa.BigInteger)
    return sa.func.hashtextextended(zero(sa.cast(value, sa.Text), "''"), seed, type_=sa.BigInteger)


class _Side:
    """One side's SQL: its rows (filtered), canonical key and value hashes over their columns."""

    def __init__(
        self,
        src: SqlSource,
        plan: ReadPlan,
        other: SqlSource,
        other_plan: ReadPlan,
        index: int,
        where: str | None,
    ):
        self.src, self.plan, self.index, self.where = src, plan, index, where
        self.extra: Callable[[sa.FromClause], Any] | None = None  # the key_range filter, if any
        # Per compared value: can it be NULL on either side? (Both sides must agree on it.)
        self.nullable: list[bool] = [True] * len(plan.values)
        self.xor = False  # fold row hashes with bit_xor (PostgreSQL 14+ on both sides) or sum halves
        # Hash the portable text form (a MariaDB/MySQL side) instead of PostgreSQL's typed hashes.
        self.portable = portable.portable(src.dialect, other.dialect)
        self.chunks, self.pages = 1, 0  # block ranges of the first scan, and the table's pages
        mine, theirs = src.columns(), other.columns()
        self._key_types = [mine.get(k) for k in plan.key]
        # How each key column is hashed; the same on both sides: integers through
        # hashint8extended only when both sides hold integer types (a numeric(20,0) key could
        # overflow a bigint), else as numerics; the rest by their text.
        self.key_families = [
            _key_family(kind, mine.get(a), theirs.get(b))
            for a, b, kind in zip(plan.key, other_plan.key, plan.kinds, strict=True)
        ]
        pairs = zip(plan.values, other_plan.values, strict=True)
        self._val_types = [(mine.get(v), theirs.get(o)) for v, o in pairs]

    def base(self, extra: Callable[[sa.FromClause], Any] | None = None) -> sa.Subquery:
        """This side's rows (the spec's and the run's filters, the key range, ``extra``)."""
        filters = [f for f in (self.extra, extra) if f is not None]
        combined = (lambda t: sa.and_(*[f(t) for f in filters])) if filters else None
        return (
            self.src.select(self.plan, where=self.where, extra_filter=combined).order_by(None).subquery("r")
        )

    def key_cols(self, c: Any) -> list[sa.ColumnElement[Any]]:
        return [c[k] for k in self.plan.key]

    def key_hash(self, c: Any) -> sa.ColumnElement[Any]:
        """A 64-bit hash of the canonical key (typed, so integer keys skip their text form)."""
        if self.portable:
            return portable.row_hash(self._key_texts(c), self.src.dialect)
        h: sa.ColumnElement[Any] = sa.literal_column("0::bigint")
        cols = zip(self.plan.key, self._key_types, self.plan.kinds, self.key_families, strict=True)
        for k, t, kind, family in cols:
            expr = _canon_key(c[k], t, kind)
            h = _hash(family, sa.cast(expr, sa.Numeric) if family == "numeric" else expr, h, nullable=False)
        return h

    def _key_texts(self, c: Any) -> list[Expr]:
        """The key columns' portable texts (by the kind both sides share)."""
        texts = []
        for k, t, kind in zip(self.plan.key, self._key_types, self.plan.kinds, strict=True):
            as_type = {"int": sa.BigInteger(), "number": sa.Numeric(), "datetime": t}.get(kind, sa.Text())
            mine = t if kind == "datetime" else as_type
            texts.append(portable.value_text(c[k], mine, as_type, self.src.dialect))
        return texts

    def _portable_hash(self, c: Any) -> sa.ColumnElement[Any]:
        """The row hash of a pair with MariaDB/MySQL: md5 of the key's and values' texts."""
        vals = [
            portable.value_text(c[v], a, b, self.src.dialect)
            for v, (a, b) in zip(self.plan.values, self._val_types, strict=True)
        ]
        return portable.row_hash([*self._key_texts(c), *vals], self.src.dialect)

    def values_hash(self, c: Any, seed: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """The row hash: the values chained through their hash functions, seeded with ``seed``.

        NULL is hashed as its family's zero value, and a bitmap of the NULL positions (of the
        values that may be NULL on either side) goes into the seed first, so NULL and ``0``/``''``
        still differ; each value is referenced once, so the expression grows linearly with the
        columns. A portable pair hashes the key's and values' texts instead (``seed`` unused).
        """
        if self.portable:
            return self._portable_hash(c)
        vals = [_canon_value(c[v], a, b) for v, (a, b) in zip(self.plan.values, self._val_types, strict=True)]
        h = seed
        maybe_null = [v for v, n in zip(vals, self.nullable, strict=True) if n]  # NOT NULL on both: skip
        for start in range(0, len(maybe_null), 62):
            chunk = maybe_null[start : start + 62]
            terms = [sa.case((e.is_(None), _lit(1 << i)), else_=_lit(0)) for i, (e, _) in enumerate(chunk)]
            mask: Expr = terms[0]
            for t in terms[1:]:
                mask = mask + t
            h = sa.func.hashint8extended(sa.cast(mask, sa.BigInteger), h, type_=sa.BigInteger)
        for (expr, family), nullable in zip(vals, self.nullable, strict=True):
            h = _hash(family, expr, h, nullable)
        return h

    def stream(self, stmt: sa.Select[Any], session: Mapping[str, str]) -> Iterator[Row]:
        """Rows of ``stmt`` (laid out as :meth:`SqlSource.select` lays them) as diff Rows."""
        plan, src = self.plan, self.src
        nk, nv = len(plan.key), len(plan.values)
        kinds = list(plan.kinds)
        has_changed = plan.changed_at is not None
        with src.errors(), src.engine.connect() as conn:
            _settle(conn, CURSOR_SQL, session)
            result = conn.execution_options(stream_results=True, yield_per=src.chunk_rows).execute(stmt)
            try:
                for r in result:
                    try:
                        key = tuple(key_part(r[i], kinds[i]) for i in range(nk))
                    except ValueError as e:
                        raise SourceError(f"{src.role}: {e} (key columns {list(plan.key)})") from None
                    yield Row(key, tuple(r[nk : nk + nv]), _as_time(r[nk + nv]) if has_changed else None)
            except BaseException:  # an error, or the merge stopped early: end a MySQL stream now
                src._abandon(conn, result)
                raise


# -- the two kinds of bucket -------------------------------------------------------------------
Bucket = tuple[Any, ...]


class _Buckets:
    """How one kind of bucket is computed, refined and read back (hash buckets or key ranges)."""

    name = ""
    first: Any  # the first level (hash: its bits; ranges: a Grain)
    first_bits: int
    refine_rows: int  # refine while the differing buckets hold more rows than this
    scoped_session: Mapping[str, str] = {}  # settings for reading some buckets' rows
    fetch_session: Mapping[str, str] = {}

    def keyed(self, side: _Side, rows: sa.FromClause, level: Any) -> tuple[Any, list[Expr], Expr]:
        """(the columns to hash values from, the bucket expressions, the row-hash seed)."""
        raise NotImplementedError

    def order(self, exprs: Sequence[Expr]) -> list[Expr]:
        """The bucket expressions as Python orders them (the merge compares buckets)."""
        raise NotImplementedError

    def scoped(self, side: _Side, level: Any, buckets: Sequence[Bucket]) -> sa.Subquery:
        """This side's rows in these buckets of this level."""
        raise NotImplementedError

    def finer(self, level: Any, rows: int, buckets: int) -> tuple[Any, int] | None:
        """The next level for differing ``buckets`` holding ``rows``, and the bits it adds; None
        when there is none."""
        raise NotImplementedError

    def describe(self, level: Any) -> str:
        raise NotImplementedError


class _HashBuckets(_Buckets):
    name = "hash"
    fetch_session = FETCH_SQL

    def __init__(self, bits: int):
        self.first = self.first_bits = bits
        self.refine_rows = REFINE_ROWS  # read when used: tests lower it

    @staticmethod
    def bucket_of(key_hash: sa.ColumnElement[Any], bits: int) -> sa.ColumnElement[Any]:
        """The top ``bits`` of the finest bucket id (the low FINE_BITS bits of the key hash)."""
        fine = key_hash.op("&")(_lit((1 << FINE_BITS) - 1))
        return fine.op(">>")(_lit(FINE_BITS - bits))

    def keyed(self, side: _Side, rows: sa.FromClause, level: int) -> tuple[Any, list[Expr], Expr]:
        if side.portable:  # the row hash does not use the key hash
            return rows.c, [self.bucket_of(side.key_hash(rows.c), level)], sa.null()
        # OFFSET 0 keeps the key hash from being inlined (and so computed) twice.
        k = sa.select(rows, side.key_hash(rows.c).label("_kh")).offset(0).subquery("kh")
        return k.c, [self.bucket_of(k.c._kh, level)], k.c._kh

    def order(self, exprs: Sequence[Expr]) -> list[Expr]:
        return list(exprs)

    def scoped(self, side: _Side, level: int, buckets: Sequence[Bucket]) -> sa.Subquery:
        ids = [b[0] for b in buckets]
        if side.src.dialect != "postgresql":  # no arrays: the ids inline, as numbers
            lst: sa.BindParameter[Any] = sa.bindparam(None, ids, expanding=True, literal_execute=True)
            return side.base(lambda t: self.bucket_of(side.key_hash(t.c), level).in_(lst))
        arr = sa.bindparam(None, ids, type_=pg.ARRAY(sa.BigInteger))
        return side.base(lambda t: self.bucket_of(side.key_hash(t.c), level) == sa.any_(arr))

    def finer(self, level: int, rows: int, buckets: int) -> tuple[int, int] | None:
        return (level + STEP_BITS, STEP_BITS) if level + STEP_BITS <= FINE_BITS else None

    def describe(self, level: int) -> str:
        return "hash"


class _RangeBuckets(_Buckets):
    name = "range"
    scoped_session = RANGE_SQL
    fetch_session = RANGE_SQL

    def __init__(self, key: RangeKey, first: FirstGrain, bits: int, names: Sequence[str]):
        self.key, self.first, self.first_bits = key, first.grain, bits
        self.refine_rows = RANGE_REFINE_ROWS
        self.tops, self.names = first.tops, names

    def keyed(self, side: _Side, rows: sa.FromClause, level: Grain) -> tuple[Any, list[Expr], Expr]:
        cols = side.key_cols(rows.c)
        return rows.c, self.key.bucket_exprs(cols, level), self.key.seed(cols)

    def order(self, exprs: Sequence[Expr]) -> list[Expr]:
        return self.key.order(exprs)

    def scoped(self, side: _Side, level: Grain, buckets: Sequence[Bucket]) -> sa.Subquery:
        return self.key.scoped(side.index, side.base(), side.plan.key, level, buckets)

    def finer(self, level: Grain, rows: int, buckets: int) -> tuple[Grain, int] | None:
        # A sub-range costs a summary row; aim at FINAL_ROWS rows in each, so the level after
        # fetches little, but return at most about MAX_SUMMARY_ROWS summary rows.
        per_bucket = rows / max(1, buckets)
        target = max(FINAL_ROWS, rows / MAX_SUMMARY_ROWS)
        step = max(1, math.ceil(math.log2(max(per_bucket / target, 1.0))))
        nxt = keyranges.finer(level, self.key.kinds, step, self.tops)
        return None if nxt is None else (nxt, step)

    def describe(self, level: Grain) -> str:
        return level.describe(self.names, self.key.kinds)


class _IntRanges(_Buckets):
    """Buckets of equal spans of an integer first key column, for a pair with MariaDB/MySQL.

    A level is a span width: the bucket of a row is ``(key - lo) DIV width``, plain integer
    arithmetic both engines do alike (no key hash), and a bucket's rows sit together in the key
    index, so a finer level and the fetch read only the differing spans through it. PostgreSQL
    pairs have the richer :class:`_RangeBuckets`; keys of other types use hash buckets.
    """

    name = "range"
    MAX_SPANS = 2_000  # a finer level or fetch names at most this many spans, else filters by bucket

    def __init__(self, name: str, lo: int, hi: int, bits: int):
        self.key, self.lo = name, lo
        self.first = max(1, -(-(hi - lo) // (1 << bits)))
        self.first_bits = bits
        self.refine_rows = REFINE_ROWS  # fetching a differing span's rows is as cheap as summing them

    def _bucket(self, side: _Side, c: Any, width: int) -> Expr:
        offset = sa.cast(c[self.key], sa.BigInteger) - _lit(self.lo)
        op = "DIV" if side.src.dialect != "postgresql" else "/"  # bigint / bigint truncates
        return offset.self_group().op(op)(_lit(width))

    def keyed(self, side: _Side, rows: sa.FromClause, level: int) -> tuple[Any, list[Expr], Expr]:
        return rows.c, [self._bucket(side, rows.c, level)], sa.null()

    def order(self, exprs: Sequence[Expr]) -> list[Expr]:
        return list(exprs)

    def scoped(self, side: _Side, level: int, buckets: Sequence[Bucket]) -> sa.Subquery:
        ids = sorted(int(b[0]) for b in buckets)
        spans: list[list[int]] = []
        for b in ids:  # adjacent buckets make one span
            if spans and spans[-1][1] == b:
                spans[-1][1] = b + 1
            else:
                spans.append([b, b + 1])
        if len(spans) > self.MAX_SPANS:
            lst: sa.BindParameter[Any] = sa.bindparam(None, ids, expanding=True, literal_execute=True)
            return side.base(lambda t: self._bucket(side, t.c, level).in_(lst))

        def within(t: sa.FromClause) -> Any:
            col, lo, w = t.c[self.key], self.lo, level  # the bare column, so its index serves
            return sa.or_(*[sa.and_(col >= _lit(lo + a * w), col < _lit(lo + b * w)) for a, b in spans])

        return side.base(within)

    def finer(self, level: int, rows: int, buckets: int) -> tuple[int, int] | None:
        return None if level <= 1 else (max(1, -(-level // (1 << STEP_BITS))), STEP_BITS)

    def describe(self, level: int) -> str:
        return f"{self.key} spans of {level:,}"


def _int_ranges(ts: _Side, ps: _Side, bits: int) -> _IntRanges | None:
    """Integer spans for a portable pair whose first key column is an integer on both sides."""
    if ts.plan.kinds[0] != "int":
        return None
    types = (ts._key_types[0], ps._key_types[0])
    if not all(isinstance(t, sa.Integer) and not portable.is_bool(t) for t in types):
        return None

    def bounds(side: _Side) -> tuple[Any, Any]:
        rows = side.base()
        col = rows.c[side.plan.key[0]]
        with side.src.errors(), side.src.engine.connect() as conn:
            got = conn.execute(sa.select(sa.func.min(col), sa.func.max(col))).first()
        return (got[0], got[1]) if got is not None else (None, None)

    found = [v for pair in both(bounds, ts, ps) for v in pair if v is not None]
    if not found:
        return None
    return _IntRanges(ts.plan.key[0], int(min(found)), int(max(found)) + 1, bits)


def _summary_stmt(side: _Side, kind: _Buckets, level: Any, rows: sa.FromClause) -> sa.Select[Any]:
    cols, bucket_exprs, seed = kind.keyed(side, rows, level)
    labelled = [e.label(f"b{i}") for i, e in enumerate(bucket_exprs)]
    if side.src.dialect != "postgresql":
        # MariaDB: one flat aggregate (a LIMIT subquery would be materialised, ~20% more CPU),
        # and ORDER BY NULL, else it sorts the GROUP BY's result, at a third of the scan's
        # cost: the summary rows (a few per thousand rows) are sorted in Python instead.
        flat = sa.select(*labelled, sa.func.count(), sa.func.bit_xor(side.values_hash(cols, seed)), _lit(0))
        return flat.group_by(*[sa.literal_column(f"b{i}") for i in range(len(labelled))]).order_by(sa.null())
    # OFFSET 0 keeps the hash from being inlined (and so computed) once per aggregate.
    inner = sa.select(*labelled, side.values_hash(cols, seed).label("h")).offset(0).subquery("k")
    bs = [inner.c[f"b{i}"] for i in range(len(bucket_exprs))]
    h = inner.c.h
    if side.xor:
        # One 8-byte aggregate; with the count it tells multisets apart as well as a sum does
        # (equal rows can only cancel in pairs, which changes the count).
        folds = [sa.func.bit_xor(h), _lit(0)]
    else:
        folds = [
            sa.func.sum(sa.cast(h.op(">>")(_lit(32)), sa.Integer)),
            # The low half as a signed int4: all 32 bits count.
            sa.func.sum(sa.cast(h.op("&")(_lit(2**32 - 1)) - _lit(2**31), sa.Integer)),
        ]
    return sa.select(*bs, sa.func.count(), *folds).group_by(*bs).order_by(*kind.order(bs))


Summary = tuple[Bucket, int, int, int]


def _run_summary(
    side: _Side, stmt: sa.Select[Any], session: Mapping[str, str], conn: sa.Connection | None = None
) -> Iterator[Summary]:
    """Execute one summary statement (on ``conn`` when given, closed at the end)."""
    n = len(stmt.selected_columns) - 3
    # A portable pair's XOR fold: signed on PostgreSQL, unsigned on MariaDB; the same bits.
    fold: Callable[[Any], int] = portable.unsigned if side.portable else int
    with side.src.errors(), conn if conn is not None else side.src.engine.connect() as c:
        _settle(c, SUMMARY_SQL, CURSOR_SQL, session)
        result = c.execution_options(stream_results=True, yield_per=10_000).execute(stmt)
        rows: Iterator[Summary] = (
            (
                tuple(int(b) for b in r[:n]) if side.portable else tuple(r[:n]),
                int(r[n]),
                fold(r[n + 1]),
                int(r[n + 2]),
            )
            for r in result
        )
        try:
            if side.src.dialect != "postgresql":  # unordered (see _summary_stmt): order them here
                rows = iter(sorted(rows, key=lambda x: x[0]))
            yield from rows
        except BaseException:
            side.src._abandon(c, result)
            raise


def _summaries(
    side: _Side, kind: _Buckets, level: Any, within: tuple[Any, Sequence[Bucket]] | None
) -> Iterator[Summary]:
    """(bucket, rows, two folds of the row hashes) at this level, by bucket.

    ``within`` = (the previous level, its differing buckets) restricts the rows to those. The
    64-bit row hashes are folded with ``bit_xor`` (PostgreSQL 14+) or summed as two int4 halves
    (``sum(int4)`` keeps a plain bigint, where ``sum(bigint)`` keeps a numeric state); OFFSET 0
    keeps the hash from being inlined (and so computed) once per aggregate. Streamed in bucket
    order, so memory stays flat however many buckets there are.
    """
    if within is not None:
        rows = kind.scoped(side, *within)
        return _run_summary(side, _summary_stmt(side, kind, level, rows), kind.scoped_session)
    if side.chunks > 1:
        chunked = _chunked_summaries(side, kind, level)
        if chunked is not None:
            return chunked
    return _run_summary(side, _summary_stmt(side, kind, level, side.base()), {})


_SNAPSHOT = re.compile(r"^[0-9A-Fa-f-]+$")


def _chunked_summaries(side: _Side, kind: _Buckets, level: Any) -> Iterator[Summary] | None:
    """The first level's summaries from ``side.chunks`` block ranges scanned at once.

    The way PostgreSQL runs one query with parallel workers, but each range is its own query
    (so each keeps its in-memory hash aggregate): one connection exports its snapshot and the
    others import it before anything runs, so together they read the table exactly once, as
    one consistent scan. The chunks' sorted summaries are merged by bucket and a bucket met in
    several chunks is folded into one (counts and sums add, XORs XOR). None when the snapshot
    cannot be shared (then one plain scan).
    """
    k, step = side.chunks, -(-max(side.pages, 1) // side.chunks)
    conns: list[sa.Connection] = []
    try:
        with side.src.errors():
            for i in range(k):
                conn = side.src.engine.connect().execution_options(isolation_level="REPEATABLE READ")
                conns.append(conn)
                if i == 0:
                    snapshot = str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar())
                    if not _SNAPSHOT.match(snapshot):
                        raise SourceError(f"{side.src.role}: unexpected snapshot id {snapshot!r}")
                else:
                    conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    except (SourceError, sa.exc.SQLAlchemyError):
        for c in conns:
            c.close()
        return None

    def blocks(i: int) -> Callable[[sa.FromClause], Any]:
        ctid: Expr = sa.literal_column("ctid")
        conds: list[Expr] = []
        if i > 0:
            conds.append(ctid >= sa.literal_column(f"'({i * step},0)'::tid"))
        if i < k - 1:
            conds.append(ctid < sa.literal_column(f"'({(i + 1) * step},0)'::tid"))
        return lambda t: sa.and_(sa.true(), *conds)

    streams = [
        _read_ahead(_run_summary(side, _summary_stmt(side, kind, level, side.base(blocks(i))), {}, conns[i]))
        for i in range(k)
    ]
    return _fold_chunks(streams, side.xor)


def _fold_chunks(streams: list[_ReadAhead[Summary]], xor: bool) -> Iterator[Summary]:
    """Merge bucket-ordered chunk summaries into one, folding a bucket met in several chunks."""
    try:
        cur: Summary | None = None
        for b, n, f1, f2 in heapq.merge(*streams, key=lambda x: x[0]):
            if cur is not None and cur[0] == b:
                cur = (b, cur[1] + n, (cur[2] ^ f1) if xor else (cur[2] + f1), cur[3] + f2)
                continue
            if cur is not None:
                yield cur
            cur = (b, n, f1, f2)
        if cur is not None:
            yield cur
    finally:
        for st in streams:
            st.close()


def _compare_level(
    ts: _Side, ps: _Side, kind: _Buckets, level: Any, within: tuple[Any, Sequence[Bucket]] | None
) -> tuple[list[Bucket], int, int, int]:
    """Merge both sides' bucket summaries (queried at once): differing buckets, their rows
    (larger side), non-empty buckets, and rows in matching buckets."""
    differing: list[Bucket] = []
    drows = nonempty = same = 0
    with (
        closing(_read_ahead(_summaries(ts, kind, level, within))) as t_it,
        closing(_read_ahead(_summaries(ps, kind, level, within))) as p_it,
    ):
        t, p = next(t_it, None), next(p_it, None)
        while t is not None or p is not None:
            nonempty += 1
            if p is None or (t is not None and t[0] < p[0]):
                assert t is not None
                differing.append(t[0])
                drows += t[1]
                t = next(t_it, None)
            elif t is None or p[0] < t[0]:
                differing.append(p[0])
                drows += p[1]
                p = next(p_it, None)
            else:
                if t == p:
                    same += t[1]
                else:
                    differing.append(t[0])
                    drows += max(t[1], p[1])
                t, p = next(t_it, None), next(p_it, None)
    return differing, drows, nonempty, same


def _fetch(side: _Side, kind: _Buckets, level: Any, buckets: Sequence[Bucket]) -> Iterator[Row]:
    """This side's rows in these buckets, ordered by canonical key as the merge needs them."""
    rows = kind.scoped(side, level, buckets)
    order = [
        side.src._order_expr(rows.c[k], k, kind_)
        for k, kind_ in zip(side.plan.key, side.plan.kinds, strict=True)
    ]
    return side.stream(sa.select(*rows.c).order_by(*order), kind.fetch_session)


def _first_bits(estimates: Sequence[int | None]) -> int:
    est = max((e or 0) for e in estimates)
    if est <= 0:
        return DEFAULT_BITS
    return max(MIN_BITS, min(MAX_FIRST_BITS, math.ceil(math.log2(max(est / ROWS_PER_BUCKET, 1)))))


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one side's catalog says: rows, pages, NOT NULL columns, parallel workers allowed."""

    rows: int | None = None
    pages: int = 0
    not_null: frozenset[str] = frozenset()
    workers: int = 0  # the server's max_parallel_workers_per_gather for this session


_FACTS_SQL = sa.text(
    """
    SELECT c.reltuples::bigint, c.relpages::bigint,
           current_setting('max_parallel_workers_per_gather')::int,
           ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                 AND a.attnotnull AND NOT a.attisdropped)
    FROM pg_class c WHERE c.oid = to_regclass(:t)
    """
)


def _facts(src: SqlSource) -> _Facts:
    """One catalog round trip for a table side (nothing known for a query, or on error)."""
    if not src.side.table:
        return _Facts()
    if src.dialect != "postgresql":
        return _mysql_facts(src)
    try:
        with src.engine.connect() as conn:
            r = conn.execute(_FACTS_SQL, {"t": keyranges.quoted_table(src)}).first()
    except sa.exc.SQLAlchemyError:
        return _Facts()
    if r is None:
        return _Facts()
    rows = int(r[0]) if r[0] is not None and r[0] > 0 else None
    return _Facts(rows, int(r[1] or 0), frozenset(r[3] or ()), int(r[2] or 0))


def _mysql_facts(src: SqlSource) -> _Facts:
    """MariaDB/MySQL: the row estimate from information_schema and the NOT NULL columns."""
    try:
        src.columns()
        with src.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT table_rows FROM information_schema.tables"
                    " WHERE table_schema = COALESCE(:s, DATABASE()) AND table_name = :t"
                ),
                {"s": src.side.schema_, "t": src.side.table},
            ).scalar()
    except (SourceError, sa.exc.SQLAlchemyError):
        return _Facts()
    return _Facts(int(rows) if rows else None, 0, frozenset(src._not_null), 0)


def _chunks(src: SqlSource, facts: _Facts) -> int:
    """How many block ranges this side's first scan is cut into (1: one plain scan).

    As many as PostgreSQL would give one query (its leader and max_parallel_workers_per_gather
    workers, at most :data:`MAX_CHUNKS`), each of at least :data:`CHUNK_PAGES` pages; only
    on tables, and from PostgreSQL 14, whose TID range scans read just a chunk's blocks.
    """
    version = src.engine.dialect.server_version_info or (0,)
    if not src.side.table or src.dialect != "postgresql" or version < (14,):
        return 1
    return max(1, min(MAX_CHUNKS, 1 + facts.workers, facts.pages // CHUNK_PAGES))


def _key_range_filter(side: _Side, key_range: tuple[Any, Any]) -> Callable[[sa.FromClause], Any]:
    """``lo <= first key column < hi`` by the expression the streaming read orders by."""
    lo, hi = key_range
    name, kind = side.plan.key[0], side.plan.kinds[0]

    def where(table: sa.FromClause) -> Any:
        expr = side.src._order_expr(table.c[name], name, kind)
        conds = [expr >= side.src.order_bound(lo, kind)] if lo is not None else []
        if hi is not None:
            conds.append(expr < side.src.order_bound(hi, kind))
        return sa.and_(sa.true(), *conds)

    return where


# -- the strategy ----------------------------------------------------------------------------
def checksum_diff(
    truth: SqlSource,
    projection: SqlSource,
    plans: tuple[ReadPlan, ReadPlan],
    rules: Sequence[ColumnRule],
    key_names: Sequence[str],
    *,
    now: datetime,
    grace: timedelta,
    where: str | None = None,
    watch: set[Key] | frozenset[Key] = frozenset(),
    on_row: Callable[[], None] | None = None,
    fallback: bool = True,
    first_bits: int | None = None,
    key_range: tuple[Any, Any] | None = None,
    buckets: str = "auto",
) -> ChecksumResult | None:
    """Diff a PostgreSQL pair by checksum pushdown; None when ``fallback`` and most buckets differ.

    The outcome equals what :func:`~reconcile.diff.diff_rows` over the whole (``where``- and
    ``key_range``-filtered) streams would give, except that ``clean`` holds only watched keys in
    fetched buckets (a watched key in a matching bucket is consistent; with ``where`` or
    ``key_range`` it is checked by key here).

    ``key_range``: ``(lo, hi)`` canonical values of the first key column (truth's name order),
    either None for open; a fan-out range (:class:`reconcile.fanout.KeyRange` ``lo``/``hi``).
    ``buckets``: ``auto`` (key ranges where the key allows, else hash), ``range`` (raise
    SpecError when it cannot) or ``hash``. ``first_bits``: about ``2**first_bits`` first-level
    buckets instead of the size from statistics.
    """
    if buckets not in BUCKETS:
        raise SpecError(f"checksum buckets: {buckets!r} is not one of {', '.join(BUCKETS)}")
    tplan, pplan = plans
    ts = _Side(truth, tplan, projection, pplan, 0, where)
    ps = _Side(projection, pplan, truth, tplan, 1, where)
    if key_range is not None:
        ts.extra, ps.extra = _key_range_filter(ts, key_range), _key_range_filter(ps, key_range)
    ts.xor = ps.xor = ts.portable or all(
        (s.engine.dialect.server_version_info or (0,)) >= (14,) for s in (truth, projection)
    )
    ft, fp = both(_facts, truth, projection)
    ts.nullable = ps.nullable = [
        not (v in ft.not_null and o in fp.not_null) for v, o in zip(tplan.values, pplan.values, strict=True)
    ]
    ts.chunks, ts.pages = _chunks(truth, ft), ft.pages
    ps.chunks, ps.pages = _chunks(projection, fp), fp.pages
    stats = ChecksumStats(scan_chunks=(ts.chunks, ps.chunks))
    bits = first_bits or _first_bits((ft.rows, fp.rows))
    kind: _Buckets | None = None
    if ts.portable:  # spans of an integer key where both engines have one, else hash buckets
        kind = None if buckets == "hash" else _int_ranges(ts, ps, bits)
        if kind is None and buckets == "range":
            need = "with MariaDB or MySQL, key ranges need an integer first key column on both sides"
            raise SpecError(f"checksum buckets: key ranges cannot run: {need}")
        if kind is None:
            stats.why_hash = "MariaDB/MySQL pairs: key ranges need an integer first key column"
    elif buckets != "hash":
        rk, why = keyranges.range_key(truth, projection, tplan, pplan)
        if rk is not None:
            first = keyranges.first_grain(truth, projection, plans, rk, 1 << bits, (ts.base(), ps.base()))
            kind = _RangeBuckets(rk, first, bits, tplan.key)
        elif buckets == "range":
            raise SpecError(f"checksum buckets: key ranges cannot run: {why}")
        stats.why_hash = why
    if kind is None:
        kind = _HashBuckets(bits)
    stats.buckets = kind.name
    level: Any = kind.first
    within: tuple[Any, list[Bucket]] | None = None
    while True:
        t0 = time.monotonic()
        differing, drows, nonempty, same = _compare_level(ts, ps, kind, level, within)
        stats.skipped_rows += same
        seconds = time.monotonic() - t0
        stats.levels.append(Level(bits, nonempty, len(differing), drows, seconds, kind.describe(level)))
        mostly = nonempty > 0 and len(differing) > FALLBACK_RATIO * nonempty
        if mostly and fallback and len(stats.levels) == 1:
            stats.fell_back = True
            return None
        nxt = kind.finer(level, drows, len(differing))
        if mostly or drows <= kind.refine_rows or len(stats.levels) >= MAX_LEVELS or nxt is None:
            break
        within, level, bits = (level, differing), nxt[0], bits + nxt[1]
    outcome = DiffOutcome()
    if differing:  # in bucket order already
        with (
            closing(_read_ahead(_fetch(ts, kind, level, differing))) as rows_t,
            closing(_read_ahead(_fetch(ps, kind, level, differing))) as rows_p,
        ):
            outcome = diff_rows(
                rows_t, rows_p, rules, key_names, now=now, grace=grace, watch=watch, on_row=on_row
            )
        stats.fetched_truth, stats.fetched_projection = outcome.truth_rows, outcome.projection_rows
    if (where is not None or key_range is not None) and watch:
        # With a filter, the store resolves only the watched keys the run saw clean: look up
        # the ones in matching buckets by key (they cannot differ, only be clean or absent).
        decided = outcome.clean | outcome.pending_keys
        rest = sorted(k for k in watch if k not in decided)
        if rest:
            extra = diff_rows(
                truth.stream(tplan, where=where, keys=rest, extra_filter=ts.extra),
                projection.stream(pplan, where=where, keys=rest, extra_filter=ps.extra),
                rules,
                key_names,
                now=now,
                grace=grace,
                watch=set(rest),
            )
            outcome.clean |= extra.clean
    outcome.compared += stats.skipped_rows
    outcome.truth_rows += stats.skipped_rows
    outcome.projection_rows += stats.skipped_rows
    return ChecksumResult(outcome, stats)


_END = object()


class _ReadAhead(Iterator[T]):
    """Iterate ``rows`` in a thread, ``depth`` chunks ahead, so both sides' queries run at once.

    The thread starts when this is made, not on the first ``next()``: the merge asks truth for
    its first row before projection, and a per-bucket aggregate sends its first row only when
    its scan is done, so a lazy start would run the two scans one after the other.
    Memory stays bounded (``chunk * depth`` items); an error in the thread is re-raised here,
    and :meth:`close` (also at the end) stops the thread and closes ``rows``.
    """

    def __init__(self, rows: Iterator[T], chunk: int = 2_000, depth: int = 4):
        self._rows = rows
        self._chunk = chunk
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._buf: Iterator[T] = iter(())
        self._done = False
        self._thread = threading.Thread(target=self._work, name="reconcile-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            buf: list[T] = []
            for r in self._rows:
                buf.append(r)
                if len(buf) >= self._chunk:
                    if not self._put(buf):
                        return
                    buf = []
            if self._put(buf):
                self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)
        finally:
            close = getattr(self._rows, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> _ReadAhead[T]:
        return self

    def __next__(self) -> T:
        while True:
            item: Any = next(self._buf, _END)
            if item is not _END:
                return cast(T, item)
            if self._done:
                raise StopIteration
            got = self._q.get()
            if got is _END:
                self.close()
                raise StopIteration
            if isinstance(got, BaseException):
                self.close()
                raise got
            self._buf = iter(got)

    def close(self) -> None:
        """Stop the thread (it closes ``rows``) and wait for it."""
        self._done = True
        self._buf = iter(())
        self._stop.set()
        self._thread.join()


def _read_ahead(rows: Iterator[T], chunk: int = 2_000, depth: int = 4) -> _ReadAhead[T]:
    """Read ``rows`` ahead in a thread started now (see :class:`_ReadAhead`)."""
    return _ReadAhead(rows, chunk, depth)
