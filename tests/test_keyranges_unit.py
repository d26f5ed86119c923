"""Key-range buckets, the pure parts: a bucket is exactly its range, levels nest (no services)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from reconcile.sources.keyranges import (
    Grain,
    _bounds,
    _code_point,
    _ladder,
    _shift_for,
    finer,
    text_successor,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
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
    "\ud7ff",
]


def random_text(rng: random.Random) -> str:
    alphabet = "ab\x01z~é日\ud7ff\ue000😀\U0010ffff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))


def test_text_successor() -> None:
    assert text_successor("ab") == "ac"
    assert text_successor("a\U0010ffff") == "b"
    assert text_successor("\ud7ff") == "\ue000"  # no surrogates in PostgreSQL text
    assert text_successor("\U0010ffff\U0010ffff") is None
    assert text_successor("") is None
    rng = random.Random(7)
    for _ in range(5000):
        p, s = random_text(rng), random_text(rng)
        succ = text_successor(p)
        for t in (s, p + s):  # [p, successor) holds exactly the texts that start with p
            assert (p <= t and (succ is None or t < succ)) == t.startswith(p), (p, t)


def in_range(kind: str, grain: Grain, key: tuple[Any, ...], bucket: tuple[Any, ...]) -> bool:
    """Is ``key`` inside the range of ``bucket`` (what the SQL join tests)?"""
    if tuple(key[: grain.col]) != tuple(bucket[: grain.col]):
        return False
    lo, hi = _bounds(grain, [kind] * (grain.col + 1), bucket)
    v = key[grain.col]
    if kind == "int":
        return bool(lo <= v <= hi)
    return bool(lo <= v and (hi is None or v < hi))


@pytest.mark.parametrize("shift", [0, 1, 6, 17, 62, 63])
def test_an_int_bucket_is_exactly_its_range(shift: int) -> None:
    rng = random.Random(shift)
    grain = Grain(0, shift=shift)
    keys = [INT64_MIN, INT64_MAX, -1, 0, 1] + [rng.randint(INT64_MIN, INT64_MAX) for _ in range(300)]
    keys += [rng.randint(-1000, 1000) for _ in range(300)]
    buckets = {grain.bucket((k,), ["int"]) for k in keys}
    for k in keys:
        mine = grain.bucket((k,), ["int"])
        lo, hi = _bounds(grain, ["int"], mine)
        assert INT64_MIN <= lo <= k <= hi <= INT64_MAX  # bounds fit a bigint
        assert [b for b in buckets if in_range("int", grain, (k,), b)] == [mine]


@pytest.mark.parametrize("prefix", [1, 2, 3, None])
def test_a_text_bucket_is_exactly_its_range(prefix: int | None) -> None:
    rng = random.Random(prefix or 0)
    grain = Grain(0, prefix=prefix)
    keys = SPECIAL + [random_text(rng) for _ in range(600)]
    buckets = {grain.bucket((k,), ["text"]) for k in keys}
    for k in keys:
        mine = grain.bucket((k,), ["text"])
        assert [b for b in buckets if in_range("text", grain, (k,), b)] == [mine], k


def test_composite_buckets_take_leading_columns_whole() -> None:
    grain = Grain(1, shift=4)
    kinds = ["text", "int"]
    assert grain.bucket(("eu", 37), kinds) == ("eu", 2)
    assert _bounds(grain, kinds, ("eu", 2)) == (32, 47)
    assert grain.describe(["region", "id"], kinds) == "region, id>>4"
    assert Grain(0, prefix=2).describe(["sku"], ["text"]) == "left(sku,2)"


def test_the_ladder_refines_step_by_step() -> None:
    rng = random.Random(3)
    kinds = ["text", "int"]
    sample = [(rng.choice(["eu", "us", "e", ""]), rng.randint(-5000, 5000)) for _ in range(500)]
    ladder = _ladder(sample, kinds)
    assert ladder[0] == Grain(0, prefix=1) and ladder[-1] == Grain(1, shift=0)
    for coarse, fine in zip(ladder, ladder[1:], strict=False):
        # Each finer bucket lies in exactly one coarser bucket: the finer one decides the coarser.
        parent: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for k in sample:
            f, c = fine.bucket(k, kinds), coarse.bucket(k, kinds)
            assert parent.setdefault(f, c) == c
        distinct = [len({g.bucket(k, kinds) for k in sample}) for g in (coarse, fine)]
        assert distinct[0] <= distinct[1]


def test_finer_walks_down_then_to_the_next_column() -> None:
    kinds = ["text", "int"]
    tops = (0, 20)
    g: Grain | None = Grain(0, prefix=1)
    seen = []
    while g is not None:
        seen.append(g)
        g = finer(g, kinds, 8, tops)
        if g is not None and g.col == 0 and g.prefix is not None and g.prefix > 4:
            g = Grain(0, prefix=None)  # a text column ends whole (what a bucket's keys reach)
    assert seen == [
        Grain(0, prefix=1),
        Grain(0, prefix=3),
        Grain(0, prefix=None),
        Grain(1, shift=13),
        Grain(1, shift=5),
        Grain(1, shift=0),
    ]


@pytest.mark.parametrize(
    ("span", "target"), [(1, 1), (5_000_000, 131_072), (2**64, 1), (100, 1000), (1000, 7)]
)
def test_shift_keeps_buckets_within_target(span: int, target: int) -> None:
    s = _shift_for(span, target)
    assert 0 <= s <= 63
    assert s == 63 or -(-span // (1 << s)) <= target
    assert s == 0 or -(-span // (1 << (s - 1))) > target  # the least such shift


@pytest.mark.parametrize(
    ("coll", "db", "ok"),
    [
        ({"collname": "C", "collprovider": "c", "collcollate": "C"}, {}, True),
        ({"collname": "POSIX", "collprovider": "c", "collcollate": "POSIX"}, {}, True),
        ({"collname": "C.utf8", "collprovider": "c", "collcollate": "C.utf8"}, {}, True),
        (
            {"collname": "default", "collprovider": "d"},
            {"datcollate": "C.UTF-8", "datlocprovider": "c"},
            True,
        ),
        (
            {"collname": "default", "collprovider": "d"},
            {"datcollate": "en_US.UTF-8", "datlocprovider": "c"},
            False,
        ),
        ({"collname": "default", "collprovider": "d"}, {"datcollate": "C", "datlocprovider": "i"}, False),
        ({"collname": "und-x-icu", "collprovider": "i", "collcollate": None}, {}, False),
        ({"collname": "en_US", "collprovider": "c", "collcollate": "en_US.utf8"}, {}, False),
        (None, {}, False),
    ],
)
def test_code_point_collations(coll: dict[str, Any] | None, db: dict[str, Any], ok: bool) -> None:
    assert _code_point(coll, db) is ok
