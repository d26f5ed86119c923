"""The streaming merge: classification, pending, ordering checks (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.compare import ColumnRule
from reconcile.diff import Row, diff_rows
from reconcile.errors import SourceError
from reconcile.findings import FindingKind

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
OLD = NOW - timedelta(hours=1)
RULES = [ColumnRule("on_hand")]


def run(truth: list[Row], proj: list[Row], **kw):  # type: ignore[no-untyped-def]
    return diff_rows(truth, proj, RULES, ["sku"], now=NOW, grace=timedelta(minutes=5), **kw)


def test_every_kind() -> None:
    truth = [Row(("a",), (1,), OLD), Row(("b",), (2,), OLD), Row(("c",), (3,), OLD), Row(("e",), (5,), OLD)]
    proj = [Row(("a",), (1,)), Row(("b",), (20,)), Row(("d",), (4,)), Row(("e",), (5,)), Row(("e",), (5,))]
    out = run(truth, proj)
    kinds = {f.key["sku"]: f.kind for f in out.findings}
    assert kinds == {
        "b": FindingKind.MISMATCH,
        "c": FindingKind.MISSING,
        "d": FindingKind.ORPHAN,
        "e": FindingKind.DUPLICATE,
    }
    mismatch = next(f for f in out.findings if f.kind is FindingKind.MISMATCH)
    assert mismatch.columns == ("on_hand",)
    assert mismatch.truth == {"on_hand": 2} and mismatch.projection == {"on_hand": 20}
    dup = next(f for f in out.findings if f.kind is FindingKind.DUPLICATE)
    assert dup.copies == 2
    assert out.compared == 5 and out.pending == 0
    assert (out.truth_rows, out.projection_rows) == (4, 5)


def test_recent_changes_are_pending_not_findings() -> None:
    fresh = NOW - timedelta(seconds=30)
    truth = [Row(("a",), (1,), fresh), Row(("b",), (2,), fresh), Row(("c",), (3,), OLD)]
    proj = [Row(("a",), (0,)), Row(("c",), (0,))]
    out = run(truth, proj)
    assert [f.key["sku"] for f in out.findings] == ["c"]
    assert out.pending == 2


def test_fresh_projection_row_makes_an_orphan_pending() -> None:
    out = run([], [Row(("z",), (1,), NOW - timedelta(seconds=1))])
    assert out.findings == [] and out.pending == 1


def test_equal_rows_inside_grace_are_not_pending() -> None:
    out = run([Row(("a",), (1,), NOW)], [Row(("a",), (1,))])
    assert out.findings == [] and out.pending == 0


def test_watched_keys_report_clean_and_pending() -> None:
    truth = [Row(("a",), (1,), OLD), Row(("b",), (2,), NOW)]
    proj = [Row(("a",), (1,)), Row(("b",), (3,))]
    out = run(truth, proj, watch={("a",), ("b",)})
    assert out.clean == {("a",)} and out.pending_keys == {("b",)}


def test_unordered_stream_is_an_error_not_a_wrong_answer() -> None:
    with pytest.raises(SourceError, match="not ordered"):
        run([Row(("b",), (1,)), Row(("a",), (1,))], [])


def test_duplicate_truth_key_is_an_error() -> None:
    with pytest.raises(SourceError, match="truth key must be unique"):
        run([Row(("a",), (1,)), Row(("a",), (1,))], [])


keys = st.lists(st.integers(0, 200), unique=True).map(sorted)


@settings(max_examples=200)
@given(keys, keys, st.data())
def test_merge_agrees_with_set_arithmetic(tkeys: list[int], pkeys: list[int], data: st.DataObject) -> None:
    tvals = {k: data.draw(st.integers(0, 2)) for k in tkeys}
    pvals = {k: data.draw(st.integers(0, 2)) for k in pkeys}
    out = diff_rows(
        [Row((k,), (tvals[k],), OLD) for k in tkeys],
        [Row((k,), (pvals[k],)) for k in pkeys],
        RULES,
        ["id"],
        now=NOW,
        grace=timedelta(minutes=5),
    )
    got = {(f.kind, f.key["id"]) for f in out.findings}
    want = {(FindingKind.MISSING, k) for k in set(tkeys) - set(pkeys)}
    want |= {(FindingKind.ORPHAN, k) for k in set(pkeys) - set(tkeys)}
    want |= {(FindingKind.MISMATCH, k) for k in set(tkeys) & set(pkeys) if tvals[k] != pvals[k]}
    assert got == want
    assert out.compared == len(set(tkeys) | set(pkeys))


@settings(max_examples=200)
@given(keys, st.lists(st.integers(0, 200)).map(sorted), st.data())
def test_copies_counts_and_rows_seen(tkeys: list[int], pkeys: list[int], data: st.DataObject) -> None:
    """Projection copies make duplicates; every row of both sides is counted and seen once."""
    tvals = {k: data.draw(st.integers(0, 2)) for k in tkeys}
    seen: list[int] = []
    out = diff_rows(
        [Row((k,), (tvals[k],), OLD) for k in tkeys],
        [Row((k,), (tvals.get(k, 0),)) for k in pkeys],
        RULES,
        ["id"],
        now=NOW,
        grace=timedelta(minutes=5),
        on_row=lambda: seen.append(1),
    )
    copies = {k: pkeys.count(k) for k in pkeys}
    got = {(f.kind, f.key["id"]): f.copies for f in out.findings if f.kind is FindingKind.DUPLICATE}
    assert got == {(FindingKind.DUPLICATE, k): n for k, n in copies.items() if n > 1 and k in tvals}
    assert (out.truth_rows, out.projection_rows) == (len(tkeys), len(pkeys)) and len(seen) == len(
        tkeys
    ) + len(pkeys)


@pytest.mark.parametrize(
    ("truth", "proj", "match"),
    [
        ([], [Row(("b",), (1,)), Row(("a",), (1,))], "projection: rows are not ordered by key"),
        (
            [Row(("a",), (1,)), Row(("c",), (1,)), Row(("b",), (1,))],
            [Row(("c",), (1,))],
            "truth: rows are not",
        ),
        ([Row(("a",), (1,)), Row(("a",), (1,))], [Row(("a",), (1,))], "truth: key .* more than once"),
        ([Row(("a",), (1,)), Row((1,), (1,))], [], "truth: key values of different types"),
        ([], [Row(("a",), (1,)), Row((1,), (1,))], "projection: key values of different types"),
    ],
)
def test_each_side_is_checked_as_it_is_read(truth: list[Row], proj: list[Row], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        run(truth, proj)
