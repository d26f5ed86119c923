"""The findings lifecycle and the blast-radius guard: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconcile.errors import GuardTripped
from reconcile.findings import Finding, FindingKind, FindingStatus, Summary
from reconcile.guard import check_guard, guard_ratio
from reconcile.lifecycle import ACTIVE, TRANSITIONS, Stored, can_move, correctable, plan_run, plan_verify

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
OPEN, CORR, RES, ACK = (
    FindingStatus.OPEN,
    FindingStatus.CORRECTING,
    FindingStatus.RESOLVED,
    FindingStatus.ACKNOWLEDGED,
)


def f(sku: str, kind: FindingKind = FindingKind.MISSING) -> Finding:
    return Finding(kind, {"sku": sku}, truth={"on_hand": 1})


def stored(sku: str, row: int, status: FindingStatus = OPEN, seen: int = 1) -> tuple[str, Stored]:
    kid = f(sku).key_id
    return kid, Stored(row, kid, status, seen, NOW - timedelta(hours=1), "note")


def test_transitions_end_an_episode_only_by_resolving() -> None:
    assert can_move(OPEN, CORR) and can_move(CORR, RES) and can_move(CORR, OPEN)
    assert can_move(OPEN, ACK) and can_move(ACK, RES)
    assert not can_move(RES, OPEN) and not can_move(ACK, CORR) and not can_move(CORR, ACK)
    assert TRANSITIONS[RES] == frozenset() and set(ACTIVE) == {OPEN, CORR, ACK}


def test_a_new_finding_opens_an_episode_and_confirms_after_confirm_runs() -> None:
    plan = plan_run({}, [f("a")], clean=[], pending=[], resolve_unseen=True, confirm_runs=2, now=NOW)
    assert [x.times_seen for x in plan.new] == [1] and plan.new[0].first_seen == NOW
    assert plan.confirmed == [] and [x.key["sku"] for x in plan.unconfirmed] == ["a"]
    assert plan.status == "clean"

    active = dict([stored("a", 7)])
    again = plan_run(active, [f("a")], clean=[], pending=[], resolve_unseen=True, confirm_runs=2, now=NOW)
    ((row, seen),) = again.again
    assert row == 7 and seen.times_seen == 2 and seen.first_seen == NOW - timedelta(hours=1)
    assert seen.note == "note" and seen.confirmed and again.status == "drift"


def test_unseen_findings_resolve_only_when_the_run_covered_them() -> None:
    active = dict([stored("a", 1), stored("b", 2), stored("c", 3)])
    kid_b, kid_c = f("b").key_id, f("c").key_id
    whole = plan_run(active, [], clean=[], pending=[kid_c], resolve_unseen=True, confirm_runs=1, now=NOW)
    assert sorted(whole.resolve) == [1, 2]  # c is pending: not judged yet
    scoped = plan_run(active, [], clean=[kid_b], pending=[], resolve_unseen=False, confirm_runs=1, now=NOW)
    assert scoped.resolve == [2]  # a scoped run resolves only what it compared clean


def test_acknowledged_findings_do_not_make_a_run_drift_and_are_tallied() -> None:
    active = dict([stored("a", 1, status=ACK)])
    plan = plan_run(
        active,
        [f("a", FindingKind.MISMATCH)],
        clean=[],
        pending=[],
        resolve_unseen=True,
        confirm_runs=1,
        now=NOW,
    )
    assert plan.status == "clean"
    summary = Summary()
    plan.tally(summary)
    assert summary.mismatch == 1 and summary.acknowledged == 1 and summary.unconfirmed == 0


def test_correctable_takes_confirmed_open_findings_only() -> None:
    items = [
        f("a").with_lifecycle(times_seen=2),
        f("b").with_lifecycle(times_seen=1),
        f("c").with_lifecycle(times_seen=3, status=ACK),
        f("d").with_lifecycle(times_seen=3, status=CORR),
    ]
    assert [x.key["sku"] for x in correctable(items, 2)] == ["a"]


def test_verify_escalates_the_drifted_and_reopens_the_changed() -> None:
    plan = plan_verify(["a", "b", "c"], ["a"])
    assert plan.escalate == {"a"} and plan.changed == {"b", "c"}


def test_guard_by_count_and_by_ratio() -> None:
    check_guard("s", 5, 100, max_count=5, max_ratio=0.05)  # at the limits: allowed
    with pytest.raises(GuardTripped, match="max_count 5"):
        check_guard("s", 6, 1000, max_count=5, max_ratio=1.0)
    with pytest.raises(GuardTripped, match=r"ratio 0\.06.*max_ratio 0\.05"):
        check_guard("s", 6, 100, max_count=100, max_ratio=0.05)
    with pytest.raises(GuardTripped, match="ratio all"):
        check_guard("s", 1, 0, max_count=100, max_ratio=0.5)
    assert guard_ratio(0, 0) == 0.0 and guard_ratio(1, 0) == float("inf")
    assert GuardTripped("x").exit_code == 1
