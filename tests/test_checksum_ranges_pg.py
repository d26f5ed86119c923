"""Key-range buckets of the checksum pushdown on real PostgreSQL: the stream's outcome, every time.

Each test builds a pair, then compares the pushdown (key ranges, and hash buckets on the same
data) with :func:`reconcile.diff.diff_rows` over the whole streams: same findings, same counts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app import Context, audit
from reconcile.app.audit import Pair, open_pair
from reconcile.diff import DiffOutcome, diff_rows
from reconcile.errors import SpecError
from reconcile.sources import checksum
from reconcile.sources.checksum import ChecksumResult, checksum_diff
from reconcile.spec import Spec, spec_from_dict
from reconcile.store import AuditStore

from .builders import engine

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def run_sql(url: str, *statements: str, rows: list[dict[str, Any]] | None = None, insert: str = "") -> None:
    e = engine(url)
    with e.begin() as conn:
        for sql in statements:
            conn.exec_driver_sql(sql)
        if rows:
            conn.execute(sa.text(insert), rows)
    e.dispose()


def view(o: DiffOutcome) -> dict[str, Any]:
    findings = sorted(
        json.dumps([f.kind.value, f.key, list(f.columns), f.truth, f.projection, f.copies], default=str)
        for f in o.findings
    )
    return {
        "findings": findings,
        "counts": (o.compared, o.pending, o.truth_rows, o.projection_rows),
    }


def key_filter(pair: Pair, side: int, key_range: tuple[Any, Any] | None) -> Any:
    if key_range is None:
        return None
    src = (pair.truth, pair.projection)[side]
    plan = pair.plans()[side]
    name, kind = plan.key[0], plan.kinds[0]
    lo, hi = key_range

    def where(t: sa.FromClause) -> Any:
        expr = src._order_expr(t.c[name], name, kind)
        return sa.and_(
            sa.true(), *([expr >= lo] if lo is not None else []), *([expr < hi] if hi is not None else [])
        )

    return where


def stream(
    pair: Pair, *, where: str | None = None, key_range: Any = None, watch: Any = frozenset()
) -> DiffOutcome:
    tplan, pplan = pair.plans()
    return diff_rows(
        pair.truth.stream(tplan, where=where, extra_filter=key_filter(pair, 0, key_range)),
        pair.projection.stream(pplan, where=where, extra_filter=key_filter(pair, 1, key_range)),
        pair.rules,
        pair.spec.key_truth,
        now=NOW,
        grace=pair.spec.freshness.grace,
        watch=watch,
    )


def push(pair: Pair, buckets: str, **kw: Any) -> ChecksumResult:
    kw.setdefault("fallback", False)
    got = checksum_diff(
        pair.truth,
        pair.projection,
        pair.plans(),
        pair.rules,
        pair.spec.key_truth,
        now=NOW,
        grace=pair.spec.freshness.grace,
        buckets=buckets,
        **kw,
    )
    assert got is not None
    assert got.stats.buckets == buckets
    return got


@pytest.fixture
def opened() -> Iterator[Any]:
    pairs: list[Pair] = []

    def make(spec: Spec) -> Pair:
        pairs.append(open_pair(Context(store_url="sqlite://"), spec))
        return pairs[-1]

    yield make
    for p in pairs:
        p.close()


def auto(pair: Pair, **kw: Any) -> ChecksumResult:
    """The pushdown as the audit calls it (buckets chosen for the key), never falling back."""
    got = checksum_diff(
        pair.truth,
        pair.projection,
        pair.plans(),
        pair.rules,
        pair.spec.key_truth,
        now=NOW,
        grace=pair.spec.freshness.grace,
        fallback=False,
        **kw,
    )
    assert got is not None
    return got


def agree(pair: Pair, buckets: str = "range", **kw: Any) -> ChecksumResult:
    """The pushdown's outcome equals the stream's (restricted the same way)."""
    expected = stream(
        pair, where=kw.get("where"), key_range=kw.get("key_range"), watch=kw.get("watch", frozenset())
    )
    got = push(pair, buckets, **kw)
    assert view(got.outcome) == view(expected)
    return got


# -- text keys -------------------------------------------------------------------------------------
SPECIAL = [
    "",
    "a",
    "ab",
    "ab\x01",
    "abc",
    "b",
    "é",
    "日本",
    "😀",
    "\U0010ffff",
    "\U0010ffff\U0010ffff",
    "\ue000",
]


def text_pair(make_pg_db: Any, n: int = 3000) -> Spec:
    t, p = make_pg_db("truth"), make_pg_db("proj")
    rng = random.Random(11)
    keys = SPECIAL + [f"k-{i:05d}" for i in range(n)] + [f"{rng.random():.12f}" for _ in range(500)]
    truth: list[dict[str, Any]] = [
        {"sku": k, "qty": i, "note": f"n{i}" if i % 7 else None} for i, k in enumerate(keys)
    ]
    proj = []
    for r in truth:
        q = dict(r)
        k = r["sku"]
        if k in ("abc", "\U0010ffff", "k-00042") or k.endswith("7"):  # missing, some of them
            if k != "k-00017":
                continue
        if k in ("ab", "\U0010ffff\U0010ffff", "k-02000"):
            q["qty"] = -1  # mismatch
        if k == "k-00100":
            q["note"] = ""  # NULL facing '' is drift
        if k == "k-00099":
            q["note"] = None
        proj.append(q)
    proj += [
        {"sku": k, "qty": 1, "note": "x"} for k in ("aa", "k-99999", "\U0010ffff\U0010ffffz", "zz")
    ]  # orphans
    run_sql(
        t,
        "CREATE TABLE items (sku text PRIMARY KEY, qty integer, note text)",
        rows=truth,
        insert="INSERT INTO items VALUES (:sku, :qty, :note)",
    )
    run_sql(
        p,
        "CREATE TABLE items_view (sku varchar(40) PRIMARY KEY, qty bigint, note varchar(20))",
        rows=proj,
        insert="INSERT INTO items_view VALUES (:sku, :qty, :note)",
    )
    return spec_from_dict(
        {
            "name": "items",
            "truth": {"url": t, "table": "items"},
            "projection": {"url": p, "table": "items_view"},
            "key": ["sku"],
            "columns": ["qty", "note"],
        }
    )


def test_text_key_by_ranges_at_every_grain(
    make_pg_db: Any, opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = opened(text_pair(make_pg_db))
    agree(pair)  # sized from statistics (the table may or may not have been analysed yet)
    got = agree(pair, first_bits=12)
    assert got.stats.levels[0].grain == "sku"  # fewer rows than buckets: whole keys
    assert len(got.outcome.findings) > 300 and got.stats.skipped_rows > 2000
    assert view(push(pair, "hash").outcome) == view(got.outcome)
    assert agree(pair, first_bits=8).stats.levels[0].grain.startswith("left(sku,")
    for bits in (1, 4, 10, 14):  # coarse to finer than the table: every grain agrees
        agree(pair, first_bits=bits)
    # Refined level by level, through the U+10FFFF prefix (a range with no upper bound).
    monkeypatch.setattr(checksum, "RANGE_REFINE_ROWS", 0)
    got = agree(pair, first_bits=2)
    assert [lv.grain for lv in got.stats.levels][:2] == ["left(sku,1)", "left(sku,3)"]


def test_text_key_range_restriction(make_pg_db: Any, opened: Any) -> None:
    pair = opened(text_pair(make_pg_db, 1000))
    for key_range in (("k-00100", "k-00500"), (None, "b"), ("k-00900", None), ("ab", "ab\x01z")):
        r = agree(pair, key_range=key_range)
        assert r.outcome.truth_rows < 1600
        agree(pair, "hash", key_range=key_range)


# -- composite keys, duplicates, NULLs, pending, one-sided ranges ---------------------------------
def composite_pair(make_pg_db: Any, n: int = 6000, index: bool = True) -> Spec:
    t, p = make_pg_db("truth"), make_pg_db("proj")
    old = datetime(2026, 1, 1)
    truth: list[dict[str, Any]] = [
        {
            "region": ("eu", "us", "ap")[i % 3],
            "id": i,
            "balance": f"{i / 4:.2f}",
            "name": f"Name {i}",
            "at": old,
        }
        for i in range(n)
    ]
    proj = []
    for r in truth:
        i = r["id"]
        q: dict[str, Any] = {**r, "account_id": i}
        del q["id"]
        if 3000 <= i < 3400 or i in (11, 5999):  # missing; a whole block: ranges empty on this side
            continue
        if i in (20, 2000, 4001):
            q["name"] = "changed"
        if i == 21:
            q["name"] = None  # NULL facing a value
        if i in (50, 51, 3401):  # pending: truth changed a moment ago (one in a block that differs)
            q["balance"] = "0.00"
        if i in (60, 61):
            q["balance"] = f"{i / 4:.3f}"  # 15.000 facing 15.00: the same number
        proj.append(q)
        if i in (70, 4500):  # duplicate
            proj.append(dict(q))
    proj += [{**proj[0], "region": "zz", "account_id": j} for j in range(40)]  # orphans: a region truth lacks
    proj.append({**proj[0], "region": "eu", "account_id": -5})
    run_sql(
        t,
        "CREATE TABLE accounts (region text, id integer, balance numeric(12,2), name text, at timestamp,"
        " PRIMARY KEY (region, id))",
        rows=truth,
        insert="INSERT INTO accounts VALUES (:region, :id, CAST(:balance AS numeric), :name, :at)",
    )
    run_sql(
        p,
        "CREATE TABLE account_view (region text, account_id bigint, balance numeric(12,3), name text,"
        " at timestamp)",
        *(["CREATE INDEX ON account_view (region, account_id)"] if index else []),
        rows=proj,
        insert="INSERT INTO account_view VALUES (:region, :account_id, CAST(:balance AS numeric), :name,"
        " :at)",
    )
    run_sql(t, "UPDATE accounts SET at = now() AT TIME ZONE 'UTC' WHERE id IN (50, 51, 3401)")
    return spec_from_dict(
        {
            "name": "accounts",
            "truth": {"url": t, "table": "accounts"},
            "projection": {"url": p, "table": "account_view"},
            "key": ["region", {"id": "account_id"}],
            "columns": ["balance", "name"],
            "freshness": {"truth_column": "at", "grace": "5m"},
        }
    )


def test_composite_key_duplicates_nulls_pending(
    make_pg_db: Any, opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = opened(composite_pair(make_pg_db))
    agree(pair)  # sized from statistics (the table may or may not have been analysed yet)
    got = agree(pair, first_bits=12)
    o = got.outcome
    kinds = sorted(f.kind.value for f in o.findings)
    assert kinds.count("duplicate") == 2 and kinds.count("orphan") == 41 and kinds.count("missing") == 402
    assert o.pending == 3  # 3401 is pending inside a range that differs anyway
    assert got.stats.levels[0].grain.startswith("region, id>>")
    assert got.stats.fetched_truth < 1500 and got.stats.skipped_rows > 4000
    assert view(push(pair, "hash").outcome) == view(o)
    for bits in (2, 6, 12):
        agree(pair, first_bits=bits)
    monkeypatch.setattr(checksum, "RANGE_REFINE_ROWS", 0)
    deep = agree(pair, first_bits=6)
    grains = [lv.grain for lv in deep.stats.levels]
    assert grains[0] == "region, id>>9" and grains[1] in ("region, id>>3", "region, id>>2")


def test_composite_key_where_watch_and_key_range(make_pg_db: Any, opened: Any) -> None:
    pair = opened(composite_pair(make_pg_db))
    watch = {("eu", 1), ("us", 2000), ("ap", 3002), ("eu", 3400), ("us", 5998)}
    kws: list[dict[str, Any]] = [
        {"where": "region = 'eu'", "watch": watch},
        {"key_range": ("eu", "us"), "watch": watch},
        {"key_range": (None, "eu")},
        {"key_range": ("us", None), "where": "name IS NULL OR name <> 'x'"},
    ]
    for kw in kws:
        r = agree(pair, **kw)
        s = stream(
            pair, where=kw.get("where"), key_range=kw.get("key_range"), watch=kw.get("watch", frozenset())
        )
        assert r.outcome.clean == s.clean  # with a filter, watched keys are all resolved
        agree(pair, "hash", **kw)


def test_one_side_empty(make_pg_db: Any, opened: Any) -> None:
    spec = composite_pair(make_pg_db, n=500)
    pair = opened(spec)
    run_sql(spec.projection.url or "", "DELETE FROM account_view")
    got = agree(pair)
    assert {f.kind.value for f in got.outcome.findings} == {"missing"}
    assert (
        checksum_diff(
            pair.truth, pair.projection, pair.plans(), pair.rules, spec.key_truth, now=NOW, grace=timedelta(0)
        )
        is None
    )  # every bucket differs: the caller streams
    run_sql(spec.truth.url or "", "DELETE FROM accounts")
    assert agree(pair).outcome.findings == []


# -- integer keys --------------------------------------------------------------------------------------
def test_int_keys_at_the_bigint_limits(make_pg_db: Any, opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    t, p = make_pg_db("truth"), make_pg_db("proj")
    lo, hi = -(2**63), 2**63 - 1
    keys = sorted(
        {lo, lo + 1, -1, 0, 1, hi - 1, hi, *range(-2000, 2000, 3), *(2**40 + i for i in range(300))}
    )
    truth = [{"id": k, "v": k % 97} for k in keys]
    proj = [
        {"id": k, "v": (k % 97) + (1 if k in (hi, 0, 2**40 + 5) else 0)}
        for k in keys
        if k not in (lo, 7, 2**40)
    ]
    proj += [{"id": k, "v": 0} for k in (hi - 2, 8, -(2**62))]
    run_sql(
        t,
        "CREATE TABLE t (id bigint PRIMARY KEY, v integer)",
        rows=truth,
        insert="INSERT INTO t VALUES (:id, :v)",
    )
    run_sql(
        p,
        "CREATE TABLE p (id numeric(20,0), v integer)",
        "CREATE UNIQUE INDEX ON p (id)",
        rows=proj,
        insert="INSERT INTO p VALUES (:id, :v)",
    )
    spec = {
        "name": "ids",
        "truth": {"url": t, "table": "t"},
        "projection": {"url": p, "table": "p"},
        "key": ["id"],
        "columns": ["v"],
    }
    # numeric(20,0) keys are integers by kind but not an integer type: hash buckets.
    pair = opened(spec_from_dict(spec))
    assert "neither an integer nor a text" in (auto(pair).stats.why_hash or "")
    run_sql(p, "ALTER TABLE p ALTER COLUMN id TYPE bigint")
    pair = opened(spec_from_dict(spec))
    got = agree(pair)
    assert len(got.outcome.findings) == 9
    assert agree(pair, first_bits=12).stats.levels[0].grain == "id>>52"  # 2**64 keys / 4096 buckets
    for bits in (3, 10, 20):
        agree(pair, first_bits=bits)
    monkeypatch.setattr(checksum, "RANGE_REFINE_ROWS", 0)
    for bits in (2, 8, 16):  # the drift is clumped: most buckets differ at once, or refine
        agree(pair, first_bits=bits)
    agree(pair, key_range=(-5, 2**40 + 3))


def test_int_key_bench_shape_refines_to_single_keys(make_pg_db: Any, opened: Any, tmp_path: Any) -> None:
    t, p = make_pg_db("truth"), make_pg_db("proj")
    n = 60_000
    ddl = (
        "CREATE TABLE {} (id integer PRIMARY KEY, customer text NOT NULL,"
        " amount numeric(12,2) NOT NULL, status text)"
    )
    fill = (
        "INSERT INTO {} SELECT g, 'c-' || mod(g, 500), mod(g, 1000) / 100.0,"
        f" (ARRAY['new','paid',NULL])[1 + mod(g, 3)] FROM generate_series(1, {n}) g"
    )
    run_sql(t, ddl.format("orders"), fill.format("orders"), "DELETE FROM orders WHERE mod(id, 997) = 1")
    run_sql(
        p,
        ddl.format("orders_view"),
        fill.format("orders_view"),
        "DELETE FROM orders_view WHERE mod(id, 991) = 2",
        "UPDATE orders_view SET amount = amount + 1 WHERE mod(id, 983) = 3",
        "UPDATE orders_view SET status = NULL WHERE mod(id, 977) = 4 AND status IS NOT NULL",
    )
    spec = spec_from_dict(
        {
            "name": "orders",
            "truth": {"url": t, "table": "orders"},
            "projection": {"url": p, "table": "orders_view"},
            "key": ["id"],
            "columns": ["customer", "amount", "status"],
        }
    )
    pair = opened(spec)
    got = agree(pair, fallback=True)
    levels = got.stats.levels
    assert len(levels) == 2 and all(lv.grain.startswith("id>>") for lv in levels)
    assert levels[1].differing_rows <= 4 * levels[1].differing  # sub-ranges of about 4 rows
    assert got.stats.fetched_truth <= 4 * len(got.outcome.findings)  # little beyond the drift
    store = AuditStore(f"sqlite:///{tmp_path / 'store.db'}")
    r = audit(Context.of(store), spec)
    assert r.strategy == "checksum" and len(r.findings) == len(got.outcome.findings)


# -- when ranges cannot run -------------------------------------------------------------------------
def test_hash_buckets_when_ranges_cannot_run(make_pg_db: Any, opened: Any) -> None:
    pair = opened(composite_pair(make_pg_db, n=400, index=False))
    assert agree(pair, "hash").stats.why_hash is None  # asked for hash: ranges not even tried
    with pytest.raises(SpecError, match="key ranges cannot run: projection table account_view has no btree"):
        push(pair, "range")
    got = auto(pair)
    assert got.stats.buckets == "hash" and view(got.outcome) == view(stream(pair))
    assert "has no btree index on (region, account_id)" in (got.stats.why_hash or "")

    t, p = make_pg_db("truth"), make_pg_db("proj")
    for url, coll in ((t, '"C"'), (p, '"und-x-icu"')):
        run_sql(
            url,
            f"CREATE TABLE s (k text COLLATE {coll} PRIMARY KEY, v integer)",
            rows=[{"k": f"K{i}", "v": i} for i in range(200)],
            insert="INSERT INTO s VALUES (:k, :v)",
        )
    spec = {
        "name": "s",
        "truth": {"url": t, "table": "s"},
        "projection": {"url": p, "table": "s"},
        "key": ["k"],
        "columns": ["v"],
    }
    pair = opened(spec_from_dict(spec))
    with pytest.raises(SpecError, match="collation 'und-x-icu', which does not sort by code point"):
        push(pair, "range")
    spec["projection"] = {"url": p, "query": "SELECT k, v FROM s"}
    pair = opened(spec_from_dict(spec))
    with pytest.raises(SpecError, match="projection is a query"):
        push(pair, "range")
    agree(pair, "hash")


# -- the first scan in block ranges, on one snapshot -------------------------------------------------
def test_first_scan_in_block_ranges_on_one_snapshot(
    make_pg_db: Any, opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    t, p = make_pg_db("truth"), make_pg_db("proj")
    ddl = "CREATE TABLE {} (id bigint PRIMARY KEY, name text, amount numeric(10,2))"
    fill = "INSERT INTO {} SELECT g, 'n' || g, g / 7.0 FROM generate_series(1, 20000) g"
    run_sql(t, ddl.format("a"), fill.format("a"), "DELETE FROM a WHERE mod(id, 1999) = 0", "ANALYZE a")
    run_sql(
        p, ddl.format("b"), fill.format("b"), "UPDATE b SET name = NULL WHERE mod(id, 1777) = 0", "ANALYZE b"
    )  # ANALYZE: relpages, which the cut into block ranges reads
    spec = spec_from_dict(
        {
            "name": "ab",
            "truth": {"url": t, "table": "a"},
            "projection": {"url": p, "table": "b"},
            "key": ["id"],
            "columns": ["name", "amount"],
        }
    )
    pair = opened(spec)
    monkeypatch.setattr(checksum, "CHUNK_PAGES", 1)  # a small table, cut as a big one would be
    for buckets in ("range", "hash"):
        got = agree(pair, buckets)
        assert got.stats.scan_chunks == (3, 3)  # PostgreSQL's default: a leader and 2 workers

    tplan, pplan = pair.plans()
    side = checksum._Side(pair.truth, tplan, pair.projection, pplan, 0, None)
    side.pages = 200
    kind = checksum._HashBuckets(6)

    def summaries(chunks: int, xor: bool) -> list[Any]:
        side.chunks, side.xor = chunks, xor
        return list(checksum._summaries(side, kind, kind.first, None))

    for xor in (True, False):  # the folds of a bucket met in several chunks add up
        assert summaries(3, xor) == summaries(1, xor)

    # A row written after the snapshot was shared is in no chunk: they read one snapshot.
    before = summaries(1, True)
    real = checksum._summary_stmt
    calls: list[int] = []

    def write_then_build(*a: Any) -> Any:
        if not calls:
            run_sql(t, "INSERT INTO a VALUES (1999, 'late', 1)", "DELETE FROM a WHERE id = 2")
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(checksum, "_summary_stmt", write_then_build)
    assert summaries(3, True) == before
    monkeypatch.setattr(checksum, "_summary_stmt", real)
    assert summaries(3, True) != before


# -- the plan of a range fetch ------------------------------------------------------------------------
def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def test_differing_ranges_are_probed_through_the_key_index_on_a_big_table(make_pg_db: Any) -> None:
    """A fetch of 300 differing ranges loops over the ranges and probes the key index per range.

    As a plain join, a 20M-row table made PostgreSQL walk the whole key index in order and test
    each row against every range (6 billion comparisons: the 20M bench never finished); the
    ranges are now joined LATERAL behind an OFFSET 0 fence, so no other plan exists. The table
    here has 100k rows with the catalog saying 20M, which is not enough to make the planner pick
    the old bad plan for the old plain join (it took the 20M table itself, see bench/README.md);
    this holds the plan's shape, so that a change of the statement that allows it again fails.
    """
    from sqlalchemy.dialects import postgresql as pg

    from reconcile.sources import keyranges

    url = make_pg_db("plan")
    run_sql(
        url,
        "CREATE TABLE big (id bigint PRIMARY KEY, v integer NOT NULL)",
        "INSERT INTO big SELECT g, mod(g, 7) FROM generate_series(1, 100000) g",
        "ANALYZE big",
        "UPDATE pg_class SET reltuples = reltuples * 200"
        " WHERE oid IN ('big'::regclass, 'big_pkey'::regclass)",
    )
    t = sa.Table("big", sa.MetaData(), sa.Column("id", sa.BigInteger), sa.Column("v", sa.Integer))
    base = sa.select(t).where(t.c.id.isnot(None)).subquery("r")
    key = keyranges.RangeKey(("int",), ((None,), (None,)))
    buckets = [(b,) for b in range(0, 100_000 // 4, 83)][:300]  # ranges of 4 keys (shift 2)
    rows = key.scoped(0, base, ["id"], keyranges.Grain(0, 2, None), buckets)
    stmt = sa.select(*rows.c).order_by(rows.c.id).compile(dialect=pg.dialect())
    e = engine(url)
    try:
        with e.connect() as conn:
            conn.exec_driver_sql("SET max_parallel_workers_per_gather = 0")
            plan: Any = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(stmt), stmt.params).scalar()
            got = [r[0] for r in conn.exec_driver_sql(str(stmt), stmt.params)]
    finally:
        e.dispose()
    nodes = list(_nodes(plan[0]["Plan"]))
    loop = next(n for n in nodes if n["Node Type"] == "Nested Loop")
    outer, inner = loop["Plans"]
    assert outer["Node Type"] == "Function Scan", plan  # the ranges drive the loop
    probes = [n for n in _nodes(inner) if ">=" in n.get("Index Cond", "")]  # an index scan, or a bitmap one
    assert probes, plan
    assert not any("Join Filter" in n for n in nodes), plan
    assert got == [k for (b,) in buckets for k in range(4 * b, 4 * b + 4) if 1 <= k <= 100_000]
