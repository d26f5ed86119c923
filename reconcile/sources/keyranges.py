"""Key-range buckets for the checksum pushdown: ranges of an ordered key, read through its index.

Hash buckets (:mod:`reconcile.sources.checksum`) scatter one bucket's rows over the whole table,
so every pass after the first is a full scan. When the key has an order both databases share and
an index each can walk, a bucket can be a **key range** instead: the first pass still reads every
row once (a sequential scan that groups rows by range), but refining a differing range and
fetching its rows read just that range through the key index.

A level of ranges is a :class:`Grain`. The key columns before ``grain.col`` are taken whole,
column ``grain.col`` is coarsened (an integer ``k`` to ``k >> shift``; a text to its first
``prefix`` characters, or whole when ``prefix`` is None) and later columns are ignored. A bucket
is the tuple of those values, and it is one contiguous range of the key:
``k0 = p0 AND ... AND lo <= k_col < hi``, which a btree index on the key finds without reading
anything else. A finer grain splits every bucket of a coarser one (a smaller shift, a longer
prefix, then the next column), so refinement nests, and both sides bucket with the same grain,
so they use identical boundaries.

A key takes this path when, on both sides, it is read from a table (not a query), each key
column is an integer or a text (``text``/``varchar``) of the same kind on both sides, text
columns sort by code point (collation ``C``, ``POSIX``, ``ucs_basic`` or libc ``C.UTF-8``:
Python's order, so the merge and the ranges agree), and a valid btree index leads with exactly
the key columns (default operator classes, the columns' own collations). Anything else keeps
hash buckets: without an index a range costs a full scan, which is what hashing costs anyway.

The first grain: for one integer column, from the key's min and max (two index probes) so that a
bucket spans about ``target`` buckets' worth of the key; otherwise from a Bernoulli sample of the
truth's keys (at most :data:`SAMPLE_ROWS`), the finest grain whose sampled distinct buckets say the
table has no more than ``target`` buckets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import SQLAlchemyError

from ..compare import key_part
from .sql import ReadPlan, SqlSource

T = TypeVar("T")
R = TypeVar("R")


def both(fn: Callable[[T], R], a: T, b: T) -> tuple[R, R]:
    """``fn(a)`` and ``fn(b)`` at once: each side is its own database, so round trips overlap."""
    with ThreadPoolExecutor(2, thread_name_prefix="reconcile-side") as pool:
        fa, fb = pool.submit(fn, a), pool.submit(fn, b)
        return fa.result(), fb.result()


__all__ = [
    "Grain",
    "RangeKey",
    "range_key",
    "first_grain",
    "FirstGrain",
    "finer",
    "text_successor",
    "quoted_table",
    "both",
    "SAMPLE_ROWS",
    "TEXT_STEP",
]

Expr = sa.ColumnElement[Any]
SAMPLE_ROWS = 50_000  # at most this many sampled keys choose a text or composite key's first grain
TEXT_STEP = 2  # each refinement of a text column looks at this many more characters
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_CODE_POINT_LOCALES = {"c", "posix", "c.utf-8", "c.utf8"}
_CODE_POINT_NAMES = {"C", "POSIX", "ucs_basic", "pg_c_utf8"}


@dataclass(frozen=True, slots=True)
class Grain:
    """One level of key ranges: columns before ``col`` whole, ``col`` coarsened, the rest ignored.

    Integer columns keep ``k >> shift`` (``shift`` 0: the value itself); text columns their first
    ``prefix`` characters (None: the whole value).
    """

    col: int
    shift: int = 0
    prefix: int | None = None

    def bucket(self, key: Sequence[Any], kinds: Sequence[str]) -> tuple[Any, ...]:
        """The bucket of a canonical key (what :meth:`RangeKey.bucket_exprs` computes in SQL)."""
        v = key[self.col]
        if kinds[self.col] == "int":
            coarse: Any = int(v) >> self.shift
        else:
            coarse = v if self.prefix is None else v[: self.prefix]
        return (*key[: self.col], coarse)

    def exact(self, kinds: Sequence[str]) -> bool:
        """Does this grain keep column ``col`` whole?"""
        return self.shift == 0 if kinds[self.col] == "int" else self.prefix is None

    def describe(self, names: Sequence[str], kinds: Sequence[str]) -> str:
        parts = list(names[: self.col])
        name = names[self.col]
        if kinds[self.col] == "int":
            parts.append(name if self.shift == 0 else f"{name}>>{self.shift}")
        else:
            parts.append(name if self.prefix is None else f"left({name},{self.prefix})")
        return ", ".join(parts)


def text_successor(prefix: str) -> str | None:
    """The least text above every text that starts with ``prefix`` (None: there is none).

    Code-point order; PostgreSQL text holds no NUL and no surrogates, so the successor of a code
    point skips the surrogate block.
    """
    chars = list(prefix)
    while chars:
        nxt = ord(chars.pop()) + 1
        if nxt == 0xD800:
            nxt = 0xE000
        if nxt <= 0x10FFFF:
            return "".join(chars) + chr(nxt)
    return None


def _bounds(grain: Grain, kinds: Sequence[str], bucket: Sequence[Any]) -> tuple[Any, Any]:
    """``(lo, hi)`` of the coarsened column for one bucket: ``lo <= k <= hi`` for integers,
    ``lo <= k < hi`` for text (``hi`` None: no upper bound)."""
    v = bucket[-1]
    if kinds[grain.col] == "int":
        lo = int(v) << grain.shift
        # lo + 2**shift - 1 never passes INT64_MAX: lo is a multiple of 2**shift at most a bigint.
        return lo, lo + (1 << grain.shift) - 1
    if grain.prefix is None or len(v) < grain.prefix:
        return v, v + "\x01"  # exactly v: the next text up is v followed by the least character
    return v, text_successor(v)


@dataclass(frozen=True)
class RangeKey:
    """A key that can be bucketed by ranges on both sides, and the SQL that does it."""

    kinds: tuple[str, ...]  # "int" or "text", per key column
    collations: tuple[tuple[str | None, ...], tuple[str | None, ...]]  # per side, per column

    # -- bucketing -----------------------------------------------------------------------------
    def bucket_exprs(self, cols: Sequence[Expr], grain: Grain) -> list[Expr]:
        """The bucket of each row (the columns are one side's key columns, in key order)."""
        out = list(cols[: grain.col])
        c = cols[grain.col]
        if self.kinds[grain.col] == "int":
            big = sa.cast(c, sa.BigInteger)
            # Literal int (our own constant): PostgreSQL has bigint >> int4. The shift floors, as
            # Python's does, so negative keys bucket the same on both.
            out.append(big if grain.shift == 0 else big.op(">>")(sa.literal_column(str(grain.shift))))
        elif grain.prefix is None:
            out.append(c)
        else:
            out.append(sa.func.left(c, sa.literal_column(str(int(grain.prefix))), type_=sa.Text))
        return out

    def order(self, exprs: Sequence[sa.ColumnElement[Any]]) -> list[sa.ColumnElement[Any]]:
        """Bucket expressions in the order Python compares them (code point for text)."""
        return [sa.collate(e, "C") if self.kinds[i] == "text" else e for i, e in enumerate(exprs)]

    def seed(self, cols: Sequence[sa.ColumnElement[Any]]) -> sa.ColumnElement[Any]:
        """A 64-bit value that tells keys apart, seeding each row's hash of its values."""
        if len(cols) == 1 and self.kinds[0] == "int":
            return sa.cast(cols[0], sa.BigInteger)  # the key itself: nothing to hash
        h: sa.ColumnElement[Any] = sa.literal_column("0::bigint")
        for c, kind in zip(cols, self.kinds, strict=True):
            if kind == "int":
                h = sa.func.hashint8extended(sa.cast(c, sa.BigInteger), h, type_=sa.BigInteger)
            else:
                h = sa.func.hashtextextended(c, h, type_=sa.BigInteger)
        return h

    # -- rows of some buckets, through the index ---------------------------------------------------
    def scoped(
        self,
        side: int,
        base: sa.Subquery,
        key_names: Sequence[str],
        grain: Grain,
        buckets: Sequence[Sequence[Any]],
    ) -> sa.Subquery:
        """The rows of ``base`` that fall in these buckets, found through the key index.

        Each bucket is a key range; a nested loop over the ranges (``unnest`` of the bounds,
        joined LATERAL) probes the index once per range. Ranges with no upper bound (a text prefix of U+10FFFF
        only) are joined apart. Comparisons use the column's own collation, the index's, which
        sorts like Python by the rule of :func:`range_key`.
        """
        bounded: list[tuple[Sequence[Any], Any, Any]] = []
        open_above: list[tuple[Sequence[Any], Any, Any]] = []
        for b in buckets:
            lo, hi = _bounds(grain, self.kinds, b)
            (bounded if hi is not None else open_above).append((b, lo, hi))
        parts = [
            self._join(side, base, key_names, grain, group, upper=upper)
            for group, upper in ((bounded, True), (open_above, False))
            if group
        ]
        if not parts:  # no buckets: no rows
            return sa.select(*base.c).select_from(base).where(sa.false()).subquery("s")
        if len(parts) == 1:
            return parts[0].subquery("s")
        return sa.union_all(*parts).subquery("s")

    def _join(
        self,
        side: int,
        base: sa.Subquery,
        key_names: Sequence[str],
        grain: Grain,
        group: Sequence[tuple[Sequence[Any], Any, Any]],
        *,
        upper: bool,
    ) -> sa.Select[Any]:
        colls = self.collations[side]
        arrays: list[sa.BindParameter[Any]] = []
        names: list[str] = []
        for j in range(grain.col):
            arrays.append(self._array(j, [b[j] for b, _, _ in group]))
            names.append(f"p{j}")
        arrays.append(self._array(grain.col, [lo for _, lo, _ in group]))
        names.append("lo")
        if upper:
            arrays.append(self._array(grain.col, [hi for _, _, hi in group]))
            names.append("hi")
        g = sa.func.unnest(*arrays).table_valued(*names).render_derived(name="g")

        def param(j: int, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
            coll = colls[j]
            return sa.collate(col, coll) if coll is not None else col

        conds = [base.c[key_names[j]] == param(j, g.c[f"p{j}"]) for j in range(grain.col)]
        k = base.c[key_names[grain.col]]
        conds.append(k >= param(grain.col, g.c.lo))
        if upper:
            conds.append(k <= g.c.hi if self.kinds[grain.col] == "int" else k < param(grain.col, g.c.hi))
        # LATERAL, fenced by OFFSET 0 so it is not flattened into a plain join: the planner must
        # loop over the ranges and probe the index once per range. As a plain join it may walk
        # the whole key index in order instead, testing every row against every range (on 20M
        # rows and 300 ranges, minutes instead of 0.1 s).
        rows = sa.select(*base.c).where(*conds).offset(0).lateral("r")
        return sa.select(*rows.c).select_from(g.join(rows, sa.true()))

    def _array(self, j: int, values: list[Any]) -> sa.BindParameter[Any]:
        t: Any = sa.BigInteger if self.kinds[j] == "int" else sa.Text
        return sa.bindparam(None, values, type_=pg.ARRAY(t))


# -- eligibility -----------------------------------------------------------------------------------
def _own_kind(t: Any) -> str | None:
    """The kind ("int" or "text") a column's own type can be range-bucketed as, if any."""
    if isinstance(t, sa.Integer) and not isinstance(t, sa.Boolean):
        return "int"
    if isinstance(t, sa.String) and not isinstance(t, sa.CHAR | sa.Enum):
        return "text"  # text and varchar; char(n) pads and enums sort by declaration
    return None


def quoted_table(src: SqlSource) -> str:
    """The side's table as SQL text for ``to_regclass`` (quoted: case and dots kept)."""

    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    table = q(str(src.side.table))
    return f"{q(src.side.schema_)}.{table}" if src.side.schema_ else table


_COLUMNS_SQL = sa.text(
    """
    SELECT a.attname, a.attnum, a.attcollation::bigint AS coll_oid, to_jsonb(co) AS coll,
           (SELECT to_jsonb(d) FROM pg_database d WHERE d.datname = current_database()) AS db
    FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation
    WHERE a.attrelid = to_regclass(:t) AND a.attname = ANY(:names) AND NOT a.attisdropped
    """
)
_INDEXES_SQL = sa.text(
    """
    SELECT i.indkey::int2[] AS cols, i.indcollation::oid[]::bigint[] AS colls,
           ARRAY(SELECT o.opcdefault FROM unnest(i.indclass::oid[]) WITH ORDINALITY AS u(oid, n)
                 JOIN pg_opclass o ON o.oid = u.oid ORDER BY u.n) AS default_ops
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
    WHERE i.indrelid = to_regclass(:t) AND i.indisvalid AND am.amname = 'btree' AND i.indpred IS NULL
    """
)


def _code_point(coll: dict[str, Any] | None, db: dict[str, Any]) -> bool:
    """Does this collation sort text by code point (as Python does)?"""
    if coll is None:
        return False
    if coll.get("collisdeterministic") is False:
        return False
    name = coll.get("collname")
    if name == "default":
        provider, locale = db.get("datlocprovider", "c"), db.get("datcollate")
        if provider == "b":
            locale = db.get("datlocale")
    elif name in _CODE_POINT_NAMES:
        return True
    else:
        provider, locale = coll.get("collprovider"), coll.get("collcollate")
        if provider == "b":
            locale = coll.get("colllocale")
    return provider in ("c", "b") and str(locale or "").lower() in _CODE_POINT_LOCALES


def _side_collations(src: SqlSource, plan: ReadPlan, kinds: Sequence[str]) -> tuple[str | None, ...] | str:
    """The collation each key column compares in (None for integers), or why ranges cannot run."""
    table = quoted_table(src)
    with src.errors(), src.engine.connect() as conn:
        attrs = {r.attname: r for r in conn.execute(_COLUMNS_SQL, {"t": table, "names": list(plan.key)})}
        indexes = conn.execute(_INDEXES_SQL, {"t": table}).all()
    if any(k not in attrs for k in plan.key):
        return f"{src.role} key columns not found in the catalog of {src.side.table}"
    colls: list[str | None] = []
    for name, kind in zip(plan.key, kinds, strict=True):
        a = attrs[name]
        if kind == "int":
            colls.append(None)
            continue
        if not _code_point(a.coll, a.db or {}):
            coll = (a.coll or {}).get("collname")
            return f"{src.role} key column {name!r} has collation {coll!r}, which does not sort by code point"
        colls.append(str(a.coll["collname"]))
    want = [attrs[k].attnum for k in plan.key]
    want_coll = [attrs[k].coll_oid for k in plan.key]
    n = len(want)
    for ix in indexes:
        cols, ix_colls, default_ops = list(ix.cols), list(ix.colls), list(ix.default_ops)
        if len(default_ops) >= n and cols[:n] == want and ix_colls[:n] == want_coll and all(default_ops[:n]):
            return tuple(colls)
    return f"{src.role} table {src.side.table} has no btree index on ({', '.join(plan.key)})"


def range_key(
    truth: SqlSource, projection: SqlSource, tplan: ReadPlan, pplan: ReadPlan
) -> tuple[RangeKey | None, str | None]:
    """A :class:`RangeKey` when both sides can bucket the key by ranges, else why not."""
    kinds = tuple(tplan.kinds)
    for src, plan in ((truth, tplan), (projection, pplan)):
        if not src.side.table:
            return None, f"{src.role} is a query"
        types = src.columns()
        for name, kind in zip(plan.key, plan.kinds, strict=True):
            own = _own_kind(types.get(name))
            if kind not in ("int", "text") or own != kind:
                return None, f"{src.role} key column {name!r} is neither an integer nor a text on both sides"

    def facts(side: tuple[SqlSource, ReadPlan]) -> tuple[str | None, ...] | str:
        src, plan = side
        try:
            return _side_collations(src, plan, kinds)
        except SQLAlchemyError as e:  # a catalog we cannot read: keep hash buckets
            return f"{src.role} catalog: {e.__class__.__name__}"

    t_colls, p_colls = both(facts, (truth, tplan), (projection, pplan))
    if isinstance(t_colls, str):
        return None, t_colls
    if isinstance(p_colls, str):
        return None, p_colls
    return RangeKey(kinds, (t_colls, p_colls)), None


# -- the first grain -------------------------------------------------------------------------------
def _shift_for(span: int, target: int) -> int:
    """The least shift that cuts ``span`` consecutive integers into at most ``target`` buckets."""
    per = -(-span // max(1, target))  # ceil
    # At most 63: PostgreSQL's bigint >> 64 gives the value back (the CPU masks the count).
    return min(63, max(0, (per - 1).bit_length()))


def _expected_distinct(buckets: float, draws: int) -> float:
    """Distinct buckets seen in ``draws`` sampled rows when there are ``buckets`` equal ones."""
    return buckets * (1.0 - math.exp(-draws / buckets)) if buckets > 0 else 0.0


def _ladder(sample: Sequence[tuple[Any, ...]], kinds: Sequence[str]) -> list[Grain]:
    """Every grain from coarsest to finest that the sample can tell apart, in refinement order."""
    out: list[Grain] = []
    for j, kind in enumerate(kinds):
        if kind == "int":
            top = max((abs(int(k[j])).bit_length() for k in sample), default=0)
            out += [Grain(j, shift=s) for s in range(min(63, top + 1), -1, -1)]
        else:
            longest = max((len(k[j]) for k in sample), default=0)
            out += [Grain(j, prefix=m) for m in range(1, longest + 1)]
            out.append(Grain(j, prefix=None))
    return out


def finer(grain: Grain, kinds: Sequence[str], step_bits: int, tops: Sequence[int]) -> Grain | None:
    """The next level down: each bucket split by about ``2**step_bits`` (None: single keys).

    ``tops`` holds, per integer column, the bit length of its largest magnitude (from the
    sample), where a column taken up next starts.
    """
    if kinds[grain.col] == "int" and grain.shift > 0:
        return Grain(grain.col, shift=max(0, grain.shift - step_bits))
    if kinds[grain.col] == "text" and grain.prefix is not None:
        return Grain(grain.col, prefix=grain.prefix + TEXT_STEP)
    if grain.col + 1 < len(kinds):
        nxt = grain.col + 1
        if kinds[nxt] == "int":
            return Grain(nxt, shift=max(0, min(63, tops[nxt] + 1) - step_bits))
        return Grain(nxt, prefix=1)
    return None


@dataclass(frozen=True, slots=True)
class FirstGrain:
    """The first level's grain, and per integer column the bit length of its largest value."""

    grain: Grain
    tops: tuple[int, ...]


def first_grain(
    truth: SqlSource,
    projection: SqlSource,
    plans: tuple[ReadPlan, ReadPlan],
    key: RangeKey,
    target: int,
    bases: tuple[sa.Subquery, sa.Subquery],
) -> FirstGrain:
    """The grain of the first level: about ``target`` buckets over the whole key.

    One integer column: the span between the least and greatest key of either side (through the
    index). Otherwise the distinct buckets of a sample of truth's keys (projection's when truth
    is empty) pick the finest grain that stays within ``target``.
    """
    n = len(key.kinds)
    if n == 1 and key.kinds[0] == "int":

        def extremes(side: tuple[SqlSource, ReadPlan, sa.Subquery]) -> tuple[Any, Any]:
            src, plan, base = side
            k = base.c[plan.key[0]]
            with src.errors(), src.engine.connect() as conn:
                return tuple(conn.execute(sa.select(sa.func.min(k), sa.func.max(k))).one())

        got = both(extremes, (truth, plans[0], bases[0]), (projection, plans[1], bases[1]))
        lows = [a for a, _ in got if a is not None]
        highs = [b for _, b in got if b is not None]
        lo, hi = (min(lows), max(highs)) if lows else (None, None)
        if lo is None or hi is None:
            return FirstGrain(Grain(0, shift=0), (0,))
        top = max(abs(int(lo)), abs(int(hi))).bit_length()
        return FirstGrain(Grain(0, shift=_shift_for(int(hi) - int(lo) + 1, target)), (top,))
    sample: list[tuple[Any, ...]] = []
    rows = 0
    for src, plan in ((truth, plans[0]), (projection, plans[1])):
        sample, rows = _sample_keys(src, plan)
        if sample:
            break
    tops = tuple(
        max((abs(int(k[j])).bit_length() for k in sample), default=0) if kind == "int" else 0
        for j, kind in enumerate(key.kinds)
    )
    if not sample:
        coarsest = Grain(0, shift=min(63, tops[0] + 1)) if key.kinds[0] == "int" else Grain(0, prefix=1)
        return FirstGrain(coarsest, tops)
    ladder = _ladder(sample, key.kinds)
    # A sample shows fewer distinct buckets than the table has: never more than it would show
    # if the table had `target` equal buckets. A whole-table read counts them exactly.
    limit = target if len(sample) >= rows else _expected_distinct(target, len(sample))
    lo_i, hi_i = 0, len(ladder) - 1
    while lo_i < hi_i:  # the finest grain within the limit; distinct buckets grow down the ladder
        mid = (lo_i + hi_i + 1) // 2
        seen = len({ladder[mid].bucket(k, key.kinds) for k in sample})
        if seen <= limit:
            lo_i = mid
        else:
            hi_i = mid - 1
    return FirstGrain(ladder[lo_i], tops)


def _sample_keys(src: SqlSource, plan: ReadPlan) -> tuple[list[tuple[Any, ...]], int]:
    """Up to about :data:`SAMPLE_ROWS` canonical keys of this side drawn at random (Bernoulli),
    and the number of rows they were drawn from."""
    table = sa.table(str(src.side.table), *[sa.column(k) for k in plan.key], schema=src.side.schema_)
    with src.errors(), src.engine.connect() as conn:
        rows = src.estimate_rows()
        if rows is None:  # never analysed: count once (only small or new tables lack statistics)
            rows = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
        source: Any = table
        if rows > SAMPLE_ROWS:
            source = sa.tablesample(table, sa.func.bernoulli(100.0 * SAMPLE_ROWS / rows), name="s")
        cols = [source.c[k] for k in plan.key]
        got = conn.execute(sa.select(*cols).where(*[c.is_not(None) for c in cols])).all()
    keys = [tuple(key_part(v, kind) for v, kind in zip(r, plan.kinds, strict=True)) for r in got]
    return keys, rows
