"""The findings lifecycle, decided in plain Python: no database, no clock of its own.

A finding moves ``open`` → ``correcting`` → ``resolved``, or a human moves it to
``acknowledged``; verify sends a correction that did not heal back to ``open`` (escalated).
The audit store only carries out what these functions decide, in one transaction.

    TRANSITIONS[status]          where a finding in ``status`` may move next
    plan_run(...)                what one audit does to the stored findings of its spec
    is_confirmed(...)            whether a finding seen so often is confirmed
    tally(...)                   how findings count into a run's summary
    correctable(...)             which findings a correction may act on
    plan_verify(...)             which corrected findings escalate, which changed since
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .findings import Finding, FindingKind, FindingStatus, Summary

__all__ = [
    "ACTIVE",
    "TRANSITIONS",
    "can_move",
    "Stored",
    "RunPlan",
    "plan_run",
    "is_confirmed",
    "tally",
    "correctable",
    "VerifyPlan",
    "plan_verify",
]

OPEN, CORRECTING, RESOLVED, ACKNOWLEDGED = (
    FindingStatus.OPEN,
    FindingStatus.CORRECTING,
    FindingStatus.RESOLVED,
    FindingStatus.ACKNOWLEDGED,
)

ACTIVE: tuple[FindingStatus, ...] = (OPEN, CORRECTING, ACKNOWLEDGED)
"""Statuses of a finding whose episode has not ended."""

TRANSITIONS: Mapping[FindingStatus, frozenset[FindingStatus]] = {
    OPEN: frozenset({CORRECTING, ACKNOWLEDGED, RESOLVED}),
    CORRECTING: frozenset({OPEN, RESOLVED}),  # open again: the correction did not heal (escalated)
    ACKNOWLEDGED: frozenset({RESOLVED}),  # a known drift ends when the entity is consistent again
    RESOLVED: frozenset(),  # drift that comes back is a new episode, a new finding
}
"""A resolved finding never reopens: when the entity drifts again, the store opens a new finding
whose ``episode`` is one more than the entity's last, and its corrective events get new ids."""


def can_move(src: FindingStatus, dst: FindingStatus) -> bool:
    """Whether a finding in ``src`` may move to ``dst``."""
    return dst in TRANSITIONS[src]


@dataclass(frozen=True)
class Stored:
    """What the audit store holds of one active finding."""

    row_id: int
    key_id: str
    status: FindingStatus
    times_seen: int
    first_seen: datetime | None = None
    note: str | None = None
    episode: int = 1


@dataclass
class RunPlan:
    """What one audit does to its spec's stored findings."""

    new: list[Finding] = field(default_factory=list)  # first seen now: insert as open
    again: list[tuple[int, Finding]] = field(default_factory=list)  # (row id, finding) seen once more
    resolve: list[int] = field(default_factory=list)  # row ids whose entity is consistent again
    confirmed: list[Finding] = field(default_factory=list)
    unconfirmed: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The run's verdict: ``drift`` when a confirmed finding is not acknowledged."""
        return "drift" if any(f.status is not ACKNOWLEDGED for f in self.confirmed) else "clean"

    def tally(self, summary: Summary) -> None:
        """Count the confirmed findings by kind (and acknowledged, unconfirmed) into ``summary``."""
        for f in self.confirmed:
            tally(summary, f.kind, f.status, confirmed=True)
        summary.unconfirmed = len(self.unconfirmed)


def is_confirmed(times_seen: int, confirm_runs: int) -> bool:
    """A finding is confirmed once seen in ``confirm_runs`` runs."""
    return times_seen >= confirm_runs


def tally(
    summary: Summary, kind: FindingKind, status: FindingStatus, *, confirmed: bool, count: int = 1
) -> bool:
    """Add ``count`` findings of one kind and status to ``summary``; whether they make the run
    drift (confirmed and not acknowledged). The store tallies a run's findings group by group."""
    if not confirmed:
        summary.unconfirmed += count
        return False
    setattr(summary, kind.value, getattr(summary, kind.value) + count)
    if status is ACKNOWLEDGED:
        summary.acknowledged += count
        return False
    return True


def plan_run(
    active: Mapping[str, Stored],
    seen: Sequence[Finding],
    *,
    clean: Iterable[str],
    pending: Iterable[str],
    resolve_unseen: bool,
    confirm_runs: int,
    now: datetime,
    last_episode: Mapping[str, int] | None = None,
) -> RunPlan:
    """Decide what an audit does to the stored findings.

    ``active`` are the spec's stored active findings by key id; ``seen`` this run's findings;
    ``clean`` / ``pending`` the key ids of active findings the run compared and found equal /
    still in flight. A finding seen again keeps its episode (first seen, status, note) and
    counts one more sighting; it is *confirmed* once seen in ``confirm_runs`` runs. An active
    finding the run did not see is resolved when the run found it clean, or when the run covered
    its key (``resolve_unseen``: a whole-pair audit) and it is not pending. A new finding of
    an entity that drifted before (``last_episode``: the last episode of keys with no active
    finding) opens that entity's next episode.
    """
    plan = RunPlan()
    left = dict(active)
    episodes = last_episode or {}
    for f in seen:
        old = left.pop(f.key_id, None)
        if old is None:
            episode = episodes.get(f.key_id, 0) + 1
            f = f.with_lifecycle(times_seen=1, first_seen=now, status=OPEN, note=None, episode=episode)
            plan.new.append(f)
        else:
            f = f.with_lifecycle(
                times_seen=old.times_seen + 1,
                first_seen=old.first_seen,
                status=old.status,
                note=old.note,
                episode=old.episode,
            )
            plan.again.append((old.row_id, f))
        f = f.with_lifecycle(confirmed=is_confirmed(f.times_seen, confirm_runs))
        (plan.confirmed if f.confirmed else plan.unconfirmed).append(f)
    clean_ids, pending_ids = set(clean), set(pending)
    plan.resolve = [
        s.row_id for kid, s in left.items() if kid in clean_ids or (resolve_unseen and kid not in pending_ids)
    ]
    return plan


def correctable(findings: Iterable[Finding], confirm_runs: int) -> list[Finding]:
    """Open findings seen in at least ``confirm_runs`` runs: what a correction may act on."""
    return [f for f in findings if f.status is OPEN and is_confirmed(f.times_seen, confirm_runs)]


@dataclass(frozen=True)
class VerifyPlan:
    """What verify does to the findings it corrected."""

    escalate: frozenset[str]  # still drifted after the projector consumed the correction
    changed: frozenset[str]  # pending at the re-check: the entity changed since; the next audit decides


def plan_verify(still_correcting: Iterable[str], still_drifted: Iterable[str]) -> VerifyPlan:
    """Corrected findings the re-check did not resolve: escalate the drifted, reopen the changed.

    ``still_correcting`` are the key ids still ``correcting`` after the re-check (the re-check's
    own run resolved the healed ones); ``still_drifted`` the key ids it found drifted.
    """
    drifted = frozenset(still_drifted)
    return VerifyPlan(escalate=drifted, changed=frozenset(still_correcting) - drifted)
