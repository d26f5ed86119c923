"""Checksum pushdown: let two PostgreSQL databases say where they differ, then diff only that.

Streaming a 5M-row pair through Python costs a minute; PostgreSQL scans and hashes the same
rows in seconds. So, when both sides are PostgreSQL, each database first summarises its rows
per **bucket**, and only the rows of buckets whose summaries differ are streamed, ordered by
key, through the same :func:`reconcile.diff.diff_rows` merge as the streaming path. Findings,
pending entities and the tolerance/normalise rules therefore stay exactly as they are there.

Buckets are **hash buckets of the key**, not key ranges: the bucket of a row is the low
:data:`FINE_BITS` bits of ``hashtextextended(ROW(key...)::text, 0)`` (a lone key column: its
own text), and a level with ``b`` bits groups rows by the top ``b`` of those bits. That works
for any key (composite, text, timestamps) without sampling boundaries, and spreads scattered
drift evenly. Per bucket each side returns ``count(*)`` and the sum of a 64-bit row hash,
``hashtextextended(ROW(values...)::text, key hash)`` (summed as two 32-bit halves; record text
keeps NULL apart from ``''``). Key and value expressions are put in a canonical form where the
two sides' types differ (integers as bigint, numbers through ``trim_scale(numeric)``,
timestamps in UTC), so equal facts usually hash equal.

Correctness never rests on that canonical form: a bucket is skipped only when both sides'
count and hash sum agree, i.e. (short of a 64-bit collision) when the (key, values) texts are
the same multiset, and equal texts are equal by meaning. Anything else (a real difference, or
only a representation such as ``9.50`` facing ``9.5``) just makes the bucket differ, and its
rows are fetched and judged by the merge. A key whose canonical text differs between the sides lands in
two differing buckets, and both are fetched from both sides, so the merge still pairs it.

Levels: the first level is sized from the table statistics (about :data:`ROWS_PER_BUCKET` rows
a bucket); while the differing buckets still hold more than :data:`REFINE_ROWS` rows, the next
level splits only those buckets :data:`STEP_BITS` bits finer (one more scan that hashes only
their rows). When most buckets differ (``fallback``), pushdown cannot save anything and the
caller streams instead. Both databases are queried concurrently, each in its own thread; the
final fetch is also read ahead in one thread per side, through a bounded queue.

Summary counts stay those of the streaming path: a skipped bucket holds ``count`` entities
that are equal on both sides, so it adds ``count`` to ``compared``, ``truth_rows`` and
``projection_rows``.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from ..compare import ColumnRule
from ..diff import DiffOutcome, diff_rows
from .sql import ReadPlan, SqlSource, _type_kind

__all__ = [
    "Level",
    "ChecksumStats",
    "ChecksumResult",
    "checksum_diff",
    "unsupported_reason",
    "FINE_BITS",
    "ROWS_PER_BUCKET",
    "REFINE_ROWS",
    "STEP_BITS",
]

FINE_BITS = 30  # bucket ids are the low 30 bits of the key hash; levels use its top bits
ROWS_PER_BUCKET = 64  # first level: about this many rows per bucket (from table statistics)
MIN_BITS, MAX_FIRST_BITS, DEFAULT_BITS = 8, 18, 12  # first-level bits: bounds; without statistics
STEP_BITS = 8  # each refinement splits a differing bucket into 2**8
REFINE_ROWS = 50_000  # refine while the differing buckets hold more rows than this
MAX_LEVELS = 3
FALLBACK_RATIO = 0.5  # with fallback, stream when more than this share of buckets differ
WORK_MEM = "64MB"  # so the per-bucket hash aggregate stays in memory
# The fetch keeps a few rows out of a whole scan: PostgreSQL cannot estimate the bucket filter
# and walks the key index for the ORDER BY; a sequential scan and a small sort is ~2x faster.
FETCH_SQL = ("SET LOCAL enable_indexscan = off",)

Key = tuple[Any, ...]
T = TypeVar("T")


def unsupported_reason(truth: SqlSource, projection: SqlSource) -> str | None:
    """Why checksum pushdown cannot run on this pair, or None when it can."""
    for src in (truth, projection):
        if src.dialect != "postgresql":
            return f"{src.role} is {src.dialect}; checksum pushdown needs PostgreSQL on both sides"
        version = src.engine.dialect.server_version_info
        if version is not None and version < (13,):
            return f"{src.role} runs PostgreSQL {version[0]}; checksum pushdown needs 13 or later"
    return None


@dataclass(frozen=True, slots=True)
class Level:
    """One round of bucket summaries."""

    bits: int
    buckets: int  # non-empty buckets on either side
    differing: int
    differing_rows: int  # rows (larger side) in the differing buckets
    seconds: float


@dataclass(slots=True)
class ChecksumStats:
    """What the pushdown did: its levels and how many rows it fetched to diff."""

    levels: list[Level] = field(default_factory=list)
    skipped_rows: int = 0  # entities in buckets that matched (never fetched)
    fetched_truth: int = 0
    fetched_projection: int = 0
    fell_back: bool = False


@dataclass(slots=True)
class ChecksumResult:
    """The merged outcome (equal to the streaming path's) and the pushdown's stats."""

    outcome: DiffOutcome
    stats: ChecksumStats


# -- SQL expressions ---------------------------------------------------------------------------
def _is_bool(t: Any) -> bool:
    return isinstance(t, sa.Boolean) or (isinstance(t, type) and issubclass(t, bool))


def _same_type(a: Any, b: Any) -> bool:
    if isinstance(a, sa.types.TypeEngine) and isinstance(b, sa.types.TypeEngine):
        return type(a) is type(b) and repr(a) == repr(b)
    return a is not None and a is b


def _canon_key(col: sa.ColumnElement[Any], mine: Any, kind: str) -> sa.ColumnElement[Any]:
    """One key column in the text form both sides share (mirrors compare.key_part)."""
    own = _type_kind(mine)
    if kind == "int":
        return col if own == "int" and not _is_bool(mine) else sa.cast(col, sa.BigInteger)
    if kind == "number":
        return sa.func.trim_scale(sa.cast(col, sa.Numeric))
    if kind == "datetime":
        return sa.func.timezone("UTC", sa.cast(col, sa.DateTime(timezone=True)))
    return col if own == "text" else sa.cast(col, sa.Text)


def _canon_value(col: sa.ColumnElement[Any], mine: Any, other: Any) -> sa.ColumnElement[Any]:
    """One compared value, canonical where the two sides' types differ (else left as is)."""
    if _same_type(mine, other):
        return col
    if _is_bool(mine):
        return sa.cast(col, sa.Integer)
    own = _type_kind(mine)
    if own in ("int", "number"):
        return sa.func.trim_scale(sa.cast(col, sa.Numeric))
    if own == "datetime":
        return sa.func.timezone("UTC", sa.cast(col, sa.DateTime(timezone=True)))
    return col  # text and the rest: record text; a representation gap only costs a fetch


def _hash(text: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.func.hashtextextended(text, sa.literal_column("0"), type_=sa.BigInteger)


def _row_text(exprs: Sequence[sa.ColumnElement[Any]]) -> sa.ColumnElement[Any]:
    return sa.cast(sa.func.ROW(*exprs), sa.Text)


class _Side:
    """The SQL of one side: its bucket and row-hash expressions over a FromClause's columns."""

    def __init__(self, src: SqlSource, plan: ReadPlan, other: SqlSource, other_plan: ReadPlan):
        self.src, self.plan = src, plan
        mine, theirs = src.columns(), other.columns()
        self._key_types = [mine.get(k) for k in plan.key]
        pairs = zip(plan.values, other_plan.values, strict=True)
        self._val_types = [(mine.get(v), theirs.get(o)) for v, o in pairs]

    def keys(self, c: Any) -> list[sa.ColumnElement[Any]]:
        return [
            _canon_key(c[k], t, kind)
            for k, t, kind in zip(self.plan.key, self._key_types, self.plan.kinds, strict=True)
        ]

    def key_hash(self, c: Any) -> sa.ColumnElement[Any]:
        keys = self.keys(c)
        # One key column (never NULL here) is unambiguous as plain text, and cheaper than a record.
        return _hash(sa.cast(keys[0], sa.Text) if len(keys) == 1 else _row_text(keys))

    @staticmethod
    def bucket_of(key_hash: sa.ColumnElement[Any], bits: int) -> sa.ColumnElement[Any]:
        """The top ``bits`` of the finest bucket id (the low FINE_BITS bits of the key hash)."""
        # Literal ints (our own constants): PostgreSQL has bigint >> int4, not >> bigint.
        fine = key_hash.op("&")(sa.literal_column(str((1 << FINE_BITS) - 1)))
        return fine.op(">>")(sa.literal_column(str(int(FINE_BITS - bits))))

    def values_text(self, c: Any) -> sa.ColumnElement[Any] | None:
        pairs = zip(self.plan.values, self._val_types, strict=True)
        vals = [_canon_value(c[v], a, b) for v, (a, b) in pairs]
        return _row_text(vals) if vals else None

    def in_buckets(self, bits: int, buckets: Sequence[int]) -> Callable[[sa.FromClause], Any]:
        arr = sa.bindparam(None, list(buckets), type_=pg.ARRAY(sa.BigInteger))
        return lambda src: self.bucket_of(self.key_hash(src.c), bits) == sa.any_(arr)

    def summaries(
        self, bits: int, where: str | None, within: tuple[int, Sequence[int]] | None
    ) -> Iterator[tuple[int, int, int, int]]:
        """(bucket, rows, sums of the row hashes' high and low halves) at this level, by bucket.

        The row hash is the hash of the values' record text seeded with the key hash, so the
        key is hashed once per row. The 64-bit hash is summed as two int4 halves: sum(int4)
        keeps a plain bigint per bucket, where sum(bigint) keeps a numeric state (about 1 kB a
        bucket, spilling to disk at 100k buckets). OFFSET 0 keeps each hash from being inlined
        (and so computed) twice. Streamed in bucket order, so memory stays flat however many
        buckets there are.
        """
        parents = self.in_buckets(*within) if within is not None else None
        rows = self.src.select(self.plan, where=where, extra_filter=parents).order_by(None).subquery("r")
        vt = self.values_text(rows.c)
        keyed = sa.select(
            self.key_hash(rows.c).label("kh"), *([vt.label("vt")] if vt is not None else [])
        ).offset(0)
        k = keyed.subquery("k")
        row_hash = sa.func.hashtextextended(k.c.vt, k.c.kh, type_=sa.BigInteger) if vt is not None else k.c.kh
        hashed = sa.select(self.bucket_of(k.c.kh, bits).label("b"), row_hash.label("h")).offset(0)
        hs = hashed.subquery("h")
        stmt = (
            sa.select(
                hs.c.b,
                sa.func.count(),
                sa.func.sum(sa.cast(hs.c.h.op(">>")(sa.literal_column("32")), sa.Integer)),
                sa.func.sum(sa.cast(hs.c.h.op("&")(sa.literal_column(str(2**31 - 1))), sa.Integer)),
            )
            .group_by(hs.c.b)
            .order_by(hs.c.b)
        )
        with self.src.errors(), self.src.engine.connect() as conn:
            conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
            result = conn.execution_options(stream_results=True, yield_per=10_000).execute(stmt)
            for r in result:
                yield int(r[0]), int(r[1]), int(r[2]), int(r[3])


def _first_bits(truth: SqlSource, projection: SqlSource) -> int:
    est = max((s.estimate_rows() or 0) for s in (truth, projection))
    if est <= 0:
        return DEFAULT_BITS
    return max(MIN_BITS, min(MAX_FIRST_BITS, math.ceil(math.log2(max(est / ROWS_PER_BUCKET, 1)))))


def _compare_level(
    ts: _Side, ps: _Side, bits: int, where: str | None, within: tuple[int, Sequence[int]] | None
) -> tuple[list[int], int, int, int]:
    """Merge both sides' bucket summaries (queried at once): differing buckets, their rows
    (larger side), non-empty buckets, and rows in matching buckets."""
    differing: list[int] = []
    drows = nonempty = same = 0
    with closing(_read_ahead(ts.summaries(bits, where, within))) as t_it:
        with closing(_read_ahead(ps.summaries(bits, where, within))) as p_it:
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
) -> ChecksumResult | None:
    """Diff a PostgreSQL pair by checksum pushdown; None when ``fallback`` and most buckets differ.

    The outcome equals what :func:`~reconcile.diff.diff_rows` over the whole (``where``-filtered)
    streams would give, except that ``clean`` holds only watched keys in fetched buckets (a
    watched key in a matching bucket is consistent; with ``where`` it is checked by key here).
    """
    tplan, pplan = plans
    ts, ps = _Side(truth, tplan, projection, pplan), _Side(projection, pplan, truth, tplan)
    stats = ChecksumStats()
    bits = first_bits or _first_bits(truth, projection)
    within: tuple[int, list[int]] | None = None
    while True:
        t0 = time.monotonic()
        differing, drows, nonempty, same = _compare_level(ts, ps, bits, where, within)
        stats.skipped_rows += same
        stats.levels.append(Level(bits, nonempty, len(differing), drows, time.monotonic() - t0))
        mostly = nonempty > 0 and len(differing) > FALLBACK_RATIO * nonempty
        if mostly and fallback and len(stats.levels) == 1:
            stats.fell_back = True
            return None
        if mostly or drows <= REFINE_ROWS or len(stats.levels) >= MAX_LEVELS or bits + STEP_BITS > FINE_BITS:
            break
        within, bits = (bits, differing), bits + STEP_BITS
    outcome = DiffOutcome()
    if differing:  # in bucket order already
        only_t, only_p = ts.in_buckets(bits, differing), ps.in_buckets(bits, differing)
        rows_t = _read_ahead(truth.stream(tplan, where=where, extra_filter=only_t, session=FETCH_SQL))
        rows_p = _read_ahead(projection.stream(pplan, where=where, extra_filter=only_p, session=FETCH_SQL))
        with closing(rows_t), closing(rows_p):
            outcome = diff_rows(
                rows_t, rows_p, rules, key_names, now=now, grace=grace, watch=watch, on_row=on_row
            )
        stats.fetched_truth, stats.fetched_projection = outcome.truth_rows, outcome.projection_rows
    if where is not None and watch:
        # With a filter, the store resolves only the watched keys the run saw clean: look up
        # the ones in matching buckets by key (they cannot differ, only be clean or absent).
        decided = outcome.clean | outcome.pending_keys
        rest = sorted(k for k in watch if k not in decided)
        if rest:
            extra = diff_rows(
                truth.stream(tplan, where=where, keys=rest),
                projection.stream(pplan, where=where, keys=rest),
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


def _read_ahead(rows: Iterator[T], chunk: int = 2_000, depth: int = 4) -> Generator[T, None, None]:
    """Iterate ``rows`` in a thread, ``depth`` chunks ahead, so both sides' queries run at once.

    Memory stays bounded (``chunk * depth`` items); an error in the thread is re-raised here,
    and closing this iterator early stops the thread and closes ``rows``.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            buf: list[T] = []
            for r in rows:
                buf.append(r)
                if len(buf) >= chunk:
                    if not put(buf):
                        return
                    buf = []
            if put(buf):
                put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(e)
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="reconcile-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()
        thread.join()
