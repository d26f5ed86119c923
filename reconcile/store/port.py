"""The store port: state (runs, findings with their lifecycle, the outbox) as one small interface.

The use cases in :mod:`reconcile.app` talk to the audit store only through these methods. No
method hands out a connection or a transaction: each one that changes state is one
transaction of its own, so a crash leaves runs, findings and outbox consistent with each other.
What the lifecycle *decides* lives in :mod:`reconcile.lifecycle`; a store carries it out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..findings import Finding, FindingStatus, Summary
from ..lifecycle import ACTIVE

__all__ = [
    "Store",
    "RunRecord",
    "OutboxRow",
    "OutboxEntry",
    "PreflightRecord",
    "FindingRecord",
    "CorrectionRecord",
    "HealHistogram",
    "Claim",
]


@dataclass(frozen=True)
class RunRecord:
    """One stored run."""

    id: str
    spec: str
    started_at: datetime
    finished_at: datetime
    status: str
    strategy: str
    scope: dict[str, Any]
    summary: dict[str, int]
    cut: dict[str, Any] | None = None  # with a spec's `path`: the positions the run was taken at


@dataclass(frozen=True)
class OutboxEntry:
    """A corrective event to write to the outbox, for the finding with ``key_id``."""

    key_id: str
    event_id: str
    topic: str
    transport: str
    message_key: str
    headers: dict[str, str]
    payload: str | None
    created_at: datetime


@dataclass(frozen=True)
class OutboxRow:
    """One corrective event waiting in (or sent from) the outbox."""

    id: int
    event_id: str
    spec: str
    run_id: str
    topic: str
    transport: str
    message_key: str
    headers: dict[str, str]
    payload: str | None
    created_at: datetime
    sent_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    dead_at: datetime | None = None


class Claim(ABC):
    """Outbox rows one relay took (:meth:`Store.claim`): no other relay publishes them."""

    rows: list[OutboxRow]

    @abstractmethod
    def sent(self, ids: Sequence[int]) -> None:
        """Mark rows sent (only rows their destination confirmed)."""

    @abstractmethod
    def failed(self, ids: Sequence[int], error: str) -> None:
        """Count a failed attempt (the broker was unreachable...) on rows that stay unsent."""

    @abstractmethod
    def rejected(self, errors: dict[int, str], max_attempts: int) -> list[int]:
        """Count a refused attempt (row id -> the broker's reason); park the rows at
        ``max_attempts``; the ids parked."""

    @abstractmethod
    def close(self) -> None:
        """Release the rows (commit what was marked)."""


@dataclass(frozen=True)
class PreflightRecord:
    """One stored preflight gate."""

    id: str
    spec: str
    checked_at: datetime
    success: bool
    results: dict[str, Any]
    docs: str | None


@dataclass(frozen=True)
class FindingRecord:
    """One stored finding with its whole lifecycle: one episode of one entity's drift."""

    id: int
    spec: str
    finding: Finding
    last_seen: datetime
    resolved_at: datetime | None
    first_run_id: str
    last_run_id: str
    corrections: int = 0  # corrective events written to the outbox for this episode


@dataclass(frozen=True)
class CorrectionRecord:
    """A corrective event in the outbox, with the finding it was written for and its delivery."""

    event: OutboxRow
    finding_id: int | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class HealHistogram:
    """Time to heal (first seen -> resolved) of one spec's resolved findings, Prometheus-style."""

    bounds: tuple[float, ...]  # upper bounds in seconds, ascending, without +Inf
    cumulative: tuple[int, ...]  # findings healed within each bound
    count: int
    total_seconds: float


class Store(ABC):
    """Runs, findings and the outbox of every spec."""

    url: str

    @property
    @abstractmethod
    def display(self) -> str:
        """Where the store is, password masked."""

    @abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the store's tables (idempotent); the schema version."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError when the store cannot be reached."""

    @abstractmethod
    def dispose(self) -> None:
        """Release connections."""

    # -- findings ------------------------------------------------------------------------
    @abstractmethod
    def active_findings(self, spec: str) -> list[Finding]:
        """Findings of a spec whose episode has not ended (open, correcting, acknowledged)."""

    @abstractmethod
    def findings(self, spec: str, statuses: Sequence[str], confirm_runs: int = 1) -> list[Finding]:
        """Findings of a spec in the given statuses, oldest first."""

    def finding_keys(self, spec: str, statuses: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """(key id, key) of a spec's findings in the given statuses, oldest first: what
        :meth:`findings` reads, without the values (verify and an audit's watched keys)."""
        return [(f.key_id, f.key) for f in self.findings(spec, statuses)]

    @abstractmethod
    def record_run(
        self,
        *,
        run_id: str,
        spec: str,
        started_at: datetime,
        finished_at: datetime,
        strategy: str,
        scope: dict[str, Any],
        summary: Summary,
        seen: Iterable[Finding],
        clean: set[str],
        pending: set[str],
        resolve_unseen: bool,
        confirm_runs: int,
        cut: dict[str, Any] | None = None,
    ) -> tuple[list[Finding], list[Finding]]:
        """Store a run and apply :func:`~reconcile.lifecycle.plan_run`, in batches, after taking
        the spec's lock row; (the first confirmed, the first unconfirmed) findings."""

    @abstractmethod
    def audit_lock(self, spec: str, *, wait: bool = False) -> AbstractContextManager[None]:
        """Hold the spec's audit lock for a block; busy: raise ConcurrentRun, or wait."""

    @abstractmethod
    def run_findings(self, spec: str, run_id: str, status: str) -> list[Finding]:
        """A spec's findings last seen by a run, in a status."""

    @abstractmethod
    def iter_run_findings(self, spec: str, run_id: str, confirm_runs: int = 1) -> Iterable[Finding]:
        """Every confirmed finding a run saw, oldest first, read page by page (flat memory)."""

    @abstractmethod
    def correct(
        self,
        spec: str,
        run_id: str,
        decide: Callable[[list[Finding]], list[OutboxEntry]],
        *,
        note: str,
        confirm_runs: int = 1,
        guard: Callable[[int], None] | None = None,
    ) -> tuple[int, int]:
        """Write ``decide``'s events to the outbox and mark their findings correcting, atomically.

        ``guard`` gets the number of open findings first; ``decide`` then gets them page by
        page (memory stays flat). Either raising writes nothing. Returns (events, rows written).
        """

    @abstractmethod
    def move(
        self,
        spec: str,
        moves: Sequence[tuple[Iterable[str], FindingStatus, str]],
        *,
        only_from: Sequence[str] = tuple(ACTIVE),
    ) -> list[int]:
        """Move groups of findings (key ids, status, note) in one transaction; counts per group."""

    @abstractmethod
    def acknowledge(self, spec: str, key_id: str, reason: str) -> Finding:
        """A human marks an active finding as known and not to be corrected."""

    # -- runs ----------------------------------------------------------------------------
    @abstractmethod
    def latest_run(self, spec: str) -> RunRecord | None:
        """The most recent stored run of a spec."""

    @abstractmethod
    def last_run_times(self) -> dict[str, datetime]:
        """Spec name -> when its latest run finished."""

    # -- outbox --------------------------------------------------------------------------
    @abstractmethod
    def unsent(self, limit: int, spec: str | None = None, after_id: int = 0) -> list[OutboxRow]:
        """The oldest unsent outbox rows (of one spec), after a row id."""

    @abstractmethod
    def mark_sent(self, ids: Sequence[int], at: datetime | None = None) -> None:
        """Mark rows sent (only rows their destination confirmed)."""

    @abstractmethod
    def mark_failed(self, ids: Sequence[int], error: str) -> None:
        """Count a failed attempt on rows that stay unsent."""

    @abstractmethod
    def outbox_events(self, spec: str | None = None, sent: bool | None = None) -> list[OutboxRow]:
        """Outbox rows (all, or only sent / unsent), oldest first."""

    @abstractmethod
    def outbox_backlog(self, spec: str | None = None) -> tuple[int, datetime | None]:
        """(unsent rows that are not parked, creation time of the oldest)."""

    @abstractmethod
    def dead_letters(self, spec: str | None = None, limit: int = 20) -> tuple[int, list[OutboxRow]]:
        """(parked rows: refused by the broker for good, the oldest ``limit`` of them)."""

    @abstractmethod
    def claim(self, limit: int, spec: str | None = None, *, after: int = 0) -> Claim:
        """Take up to ``limit`` unsent, unparked rows (oldest first, ids above ``after``) for one relay."""

    # -- preflight gates -----------------------------------------------------------------
    @abstractmethod
    def record_preflight(
        self,
        *,
        check_id: str,
        spec: str,
        checked_at: datetime,
        success: bool,
        results: dict[str, Any],
        docs: str | None,
    ) -> None:
        """Store one gate's outcome and its JSON results."""

    @abstractmethod
    def preflight_history(self, spec: str, limit: int = 20) -> list[PreflightRecord]:
        """The latest stored gates of a spec, newest first."""

    @abstractmethod
    def baseline_run(self, spec: str) -> RunRecord | None:
        """The latest run of a spec that covered the whole pair (what row counts are held against)."""

    # -- read-only queries for the dashboard and /metrics ---------------------------------
    @abstractmethod
    def spec_names(self) -> list[str]:
        """Every spec the store has runs, findings or preflight gates of, sorted."""

    @abstractmethod
    def runs(
        self,
        spec: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """A spec's runs started in [since, until], newest first."""

    @abstractmethod
    def latest_runs(self) -> dict[str, RunRecord]:
        """Spec name -> its most recent run, for every spec at once."""

    @abstractmethod
    def run_counts(self) -> dict[tuple[str, str], int]:
        """(spec, run status) -> number of stored runs."""

    @abstractmethod
    def finding_counts(self) -> dict[tuple[str, str, str], int]:
        """(spec, kind, status) -> active findings (open, correcting, acknowledged)."""

    @abstractmethod
    def finding_records(
        self,
        spec: str,
        *,
        statuses: Sequence[str] | None = None,
        since: datetime | None = None,
        key_ids: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[FindingRecord]:
        """A spec's findings (all statuses unless given; active ones or first seen since
        ``since``; only ``key_ids`` when given), newest episode first."""

    @abstractmethod
    def corrections(self, spec: str, finding_ids: Sequence[int]) -> list[CorrectionRecord]:
        """The corrective events written for these findings, oldest first."""

    @abstractmethod
    def outbox_backlogs(self) -> dict[str, tuple[int, datetime | None]]:
        """Spec name -> (unsent rows, creation time of the oldest), for every spec with a backlog
        (parked rows are not a backlog)."""

    @abstractmethod
    def outbox_dead(self) -> dict[str, int]:
        """Spec name -> corrective events parked for good, for every spec with any."""

    @abstractmethod
    def heal_histograms(
        self, bounds: Sequence[float], specs: Sequence[str] | None = None
    ) -> dict[str, HealHistogram]:
        """Spec name -> the time-to-heal histogram of its resolved findings (of ``specs`` only)."""
