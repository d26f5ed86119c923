"""Recording a run does what :func:`reconcile.lifecycle.plan_run` says, on every store.

The PostgreSQL store decides the lifecycle in set-based SQL (``reconcile/store/record.py``), the
others batch by batch through ``plan_run`` itself; the pure function is the rule, and this test
holds both stores to it on random cases: a stored history (resolved episodes, an active finding
in any status, seen any number of times), a run's findings in random order, clean and pending
keys, a scoped or whole run, ``confirm_runs`` and how many findings a run hands back (``keep``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.findings import Finding, FindingKind, FindingStatus, Summary
from reconcile.lifecycle import Stored, plan_run
from reconcile.store import AuditStore
from reconcile.store.schema import findings as F

NOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
ACTIVE = (FindingStatus.OPEN, FindingStatus.CORRECTING, FindingStatus.ACKNOWLEDGED)
KINDS = list(FindingKind)


@dataclass
class Case:
    rows: list[dict[str, Any]]  # the stored findings before the run
    seen: list[Finding]
    clean: set[str]
    pending: set[str]
    resolve_unseen: bool
    confirm_runs: int
    keep: int


def finding(rnd: random.Random, sku: str) -> Finding:
    kind = rnd.choice(KINDS)
    return Finding(
        kind,
        {"sku": sku},
        columns=("on_hand",) if kind is FindingKind.MISMATCH else (),
        truth=None if kind is FindingKind.ORPHAN else {"on_hand": rnd.randrange(100)},
        projection=None if kind is FindingKind.MISSING else {"on_hand": rnd.randrange(100)},
        copies=rnd.randrange(2, 4) if kind is FindingKind.DUPLICATE else 1,
    )


def make_case(rnd: random.Random) -> Case:
    skus = [f"k{i:02d}" for i in range(rnd.randrange(1, 16))]
    rows: list[dict[str, Any]] = []
    first_audit = rnd.random() < 0.25  # nothing stored yet: PostgreSQL COPYs into the findings
    for sku in [] if first_audit else skus:
        episodes = rnd.randrange(0, 3)  # resolved episodes before
        active = rnd.random() < 0.5
        for ep in range(1, episodes + 1 + active):
            f = finding(rnd, sku)
            is_active = active and ep == episodes + 1
            first = NOW - timedelta(days=10 - ep, minutes=rnd.randrange(60))
            rows.append(
                {
                    "key_id": f.key_id,
                    "entity_key": f.key,
                    "kind": f.kind.value,
                    "columns": list(f.columns),
                    "truth": f.truth,
                    "projection": f.projection,
                    "copies": f.copies,
                    "status": (rnd.choice(ACTIVE) if is_active else FindingStatus.RESOLVED).value,
                    "times_seen": rnd.randrange(1, 4),
                    "first_seen": first,
                    "last_seen": first + timedelta(hours=1),
                    "first_run_id": "before",
                    "last_run_id": "before",
                    "resolved_at": None if is_active else first + timedelta(hours=2),
                    "note": rnd.choice([None, f"note {sku}"]),
                    "episode": ep,
                }
            )
    seen = [finding(rnd, s) for s in rnd.sample(skus, rnd.randrange(0, len(skus) + 1))]
    ids = [Finding(FindingKind.MISSING, {"sku": s}).key_id for s in skus]
    return Case(
        rows=rows,
        seen=seen,
        clean={k for k in ids if rnd.random() < 0.3},
        pending={k for k in ids if rnd.random() < 0.3},
        resolve_unseen=rnd.random() < 0.5,
        confirm_runs=rnd.randrange(1, 4),
        keep=rnd.choice([1, 2, 3, 5, 100]),
    )


def lifecycle_of(f: Finding) -> tuple[Any, ...]:
    return (
        f.key_id,
        f.kind,
        f.truth,
        f.projection,
        f.copies,
        f.status,
        f.times_seen,
        f.first_seen,
        f.note,
        f.episode,
        f.confirmed,
    )


def expected(case: Case) -> tuple[dict[tuple[str, int], tuple[Any, ...]], Any, Summary]:
    """The stored findings after the run by (key id, episode), the plan, and its summary."""
    active = {
        r["key_id"]: Stored(
            i,
            r["key_id"],
            FindingStatus(r["status"]),
            r["times_seen"],
            r["first_seen"],
            r["note"],
            r["episode"],
        )
        for i, r in enumerate(case.rows)
        if r["status"] != "resolved"
    }
    last: dict[str, int] = {}
    for r in case.rows:
        if r["key_id"] not in active:
            last[r["key_id"]] = max(last.get(r["key_id"], 0), r["episode"])
    plan = plan_run(
        active,
        case.seen,
        clean=case.clean,
        pending=case.pending,
        resolve_unseen=case.resolve_unseen,
        confirm_runs=case.confirm_runs,
        now=NOW,
        last_episode=last,
    )
    state = {
        (r["key_id"], r["episode"]): (
            FindingKind(r["kind"]),
            r["truth"],
            r["projection"],
            FindingStatus(r["status"]),
            r["times_seen"],
            r["first_seen"],
            r["note"],
        )
        for r in case.rows
    }
    for row_id, f in plan.again:
        assert case.rows[row_id]["key_id"] == f.key_id
        state[(f.key_id, f.episode)] = (
            f.kind,
            f.truth,
            f.projection,
            f.status,
            f.times_seen,
            f.first_seen,
            f.note,
        )
    for row_id in plan.resolve:
        r = case.rows[row_id]
        kind, truth, proj, _, times, first, note = state[(r["key_id"], r["episode"])]
        state[(r["key_id"], r["episode"])] = (kind, truth, proj, FindingStatus.RESOLVED, times, first, note)
    for f in plan.new:
        state[(f.key_id, f.episode)] = (f.kind, f.truth, f.projection, FindingStatus.OPEN, 1, NOW, None)
    summary = Summary()
    plan.tally(summary)
    return state, plan, summary


def check(store: AuditStore, case: Case) -> None:
    spec = f"eq-{uuid.uuid4().hex[:8]}"
    if case.rows:
        with store.engine.begin() as conn:
            conn.execute(F.insert(), [{**r, "spec": spec} for r in case.rows])
    want, plan, want_summary = expected(case)
    summary = Summary()
    run_id = str(uuid.uuid4())
    confirmed, unconfirmed = store.record_run(
        run_id=run_id,
        spec=spec,
        started_at=NOW,
        finished_at=NOW,
        strategy="stream",
        scope={},
        summary=summary,
        seen=iter(case.seen),
        clean=set(case.clean),
        pending=set(case.pending),
        resolve_unseen=case.resolve_unseen,
        confirm_runs=case.confirm_runs,
        keep=case.keep,
    )
    got = {
        (f.key_id, f.episode): (f.kind, f.truth, f.projection, f.status, f.times_seen, f.first_seen, f.note)
        for f in store.findings(spec, [s.value for s in FindingStatus])
    }
    assert got == want
    assert summary == want_summary
    assert [lifecycle_of(f) for f in confirmed] == [lifecycle_of(f) for f in plan.confirmed[: case.keep]]
    assert [lifecycle_of(f) for f in unconfirmed] == [lifecycle_of(f) for f in plan.unconfirmed[: case.keep]]
    run = store.latest_run(spec)
    assert run is not None and run.status == plan.status


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request, tmp_path: Path) -> Iterator[AuditStore]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s = AuditStore(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        s = AuditStore(request.getfixturevalue("make_pg_db")("receq"))
    s.migrate()
    yield s
    s.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rnd=st.randoms(use_true_random=False))
def test_recording_follows_plan_run(store: AuditStore, rnd: random.Random) -> None:
    # one spec per example: the examples of a test share its store
    check(store, make_case(rnd))


def test_values_survive_recording(store: AuditStore) -> None:
    """Keys and values with what COPY text escapes (backslash, tab, line breaks), quotes, other
    scripts, several key parts, causes and evidence come back as recorded: on a spec's first
    audit (COPY into the findings table on PostgreSQL) and seen again with new values."""
    odd = ["back\\slash", "tab\there", "line\nbreak\r", 'quote"s', "naïve ☃", "\\N", "", "a\\tb"]

    def run(version: int) -> list[Finding]:
        return [
            Finding(
                KINDS[i % len(KINDS)],
                {"sku": v, "part": i} if i % 2 else {"sku": v},
                columns=("on_hand", v),
                truth=None if i % 4 == 1 else {"on_hand": version, "title": v},
                projection=None if i % 4 == 0 else {"title": f"{v}\\{version}"},
                copies=2 + i,
                cause=None if i % 3 == 0 else f"cause\t{v}",
                evidence=({"event": v, "n": version},) if i % 3 else (),
            )
            for i, v in enumerate(odd)
        ]

    spec = f"odd-{uuid.uuid4().hex[:8]}\\\t"
    for version in (1, 2):
        seen = run(version)
        store.record_run(
            run_id=str(uuid.uuid4()),
            spec=spec,
            started_at=NOW,
            finished_at=NOW + timedelta(minutes=version),
            strategy="stream",
            scope={},
            summary=Summary(),
            seen=iter(seen),
            clean=set(),
            pending=set(),
            resolve_unseen=True,
            confirm_runs=1,
        )
        got = {f.key_id: f for f in store.findings(spec)}
        assert len(got) == len(seen)
        for f in seen:
            g = got[f.key_id]
            assert (g.kind, g.key, g.columns, g.truth, g.projection, g.copies, g.cause, g.evidence) == (
                f.kind,
                f.key,
                f.columns,
                f.truth,
                f.projection,
                f.copies,
                f.cause,
                f.evidence if f.cause is not None else (),
            )
            assert (g.times_seen, g.first_seen, g.episode) == (version, NOW + timedelta(minutes=1), 1)
