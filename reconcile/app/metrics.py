"""Use case: the numbers a monitoring system scrapes — one consistent snapshot of every spec.

Plain values, no pandas, and cheap: a few aggregate queries of the store whatever its size (see
:mod:`reconcile.store.queries`) plus one lag reading per spec that names a consumer group. The
time-to-heal histograms cost a scan of every resolved finding, so a long-lived shell keeps them
in a :class:`HealCache`, which recounts a spec only when it has new runs. The ``/metrics`` route
of ``reconcile serve`` renders a :class:`Snapshot` in Prometheus' format.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import ReconcileError
from ..findings import FindingKind
from ..lifecycle import ACTIVE
from ..spec import Spec
from ..store import HealHistogram, RunRecord, Store
from .context import Context

__all__ = ["HEAL_BUCKETS", "KINDS", "ACTIVE_STATUSES", "Lag", "Snapshot", "HealCache", "snapshot"]

# Time to heal, in seconds: a minute to a week. A correction usually heals within the relay and
# the projector's lag (minutes); the long buckets tell drift that waited for a human.
HEAL_BUCKETS: tuple[float, ...] = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800)
KINDS: tuple[str, ...] = tuple(k.value for k in FindingKind)
ACTIVE_STATUSES: tuple[str, ...] = tuple(s.value for s in ACTIVE)


@dataclass(frozen=True)
class Lag:
    """A projector's consumer-group lag on its spec's correction topic."""

    consumer_group: str
    topic: str
    messages: int


@dataclass
class Snapshot:
    """Every spec's metrics at one instant. Finding counts are zero-filled for every known spec
    and every kind x active status, so a drift that heals reads 0 rather than vanishing."""

    taken_at: datetime
    specs: list[str]
    findings: dict[tuple[str, str, str], int]
    latest: dict[str, RunRecord]
    runs: dict[tuple[str, str], int]
    outbox: dict[str, tuple[int, float | None]]  # spec -> (unsent, age of the oldest in seconds)
    heal: dict[str, HealHistogram]
    lag: dict[str, Lag] = field(default_factory=dict)
    lag_errors: dict[str, str] = field(default_factory=dict)  # spec -> why its lag is unknown
    dead: dict[str, int] = field(default_factory=dict)  # spec -> corrective events parked for good


class HealCache:
    """Time-to-heal histograms kept between snapshots, recounted for a spec only when its number
    of runs changed: a finding is resolved by a run (an audit, or verify's re-check), so a spec
    without a new run has the same histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: tuple[float, ...] = ()
        self._by_spec: dict[str, tuple[int, HealHistogram | None]] = {}

    def histograms(
        self, store: Store, runs: dict[tuple[str, str], int], buckets: Sequence[float]
    ) -> dict[str, HealHistogram]:
        """Every spec's histogram, given the store's run counts (as ``Store.run_counts`` returns them)."""
        totals: dict[str, int] = {}
        for (spec, _), n in runs.items():
            totals[spec] = totals.get(spec, 0) + n
        with self._lock:
            if tuple(buckets) != self._buckets:
                self._buckets, self._by_spec = tuple(buckets), {}
            stale = [s for s, n in totals.items() if self._by_spec.get(s, (-1, None))[0] != n]
            if stale:
                fresh = store.heal_histograms(buckets, stale)
                for s in stale:
                    self._by_spec[s] = (totals[s], fresh.get(s))
            return {s: h for s, (_, h) in self._by_spec.items() if h is not None and s in totals}


def snapshot(
    ctx: Context,
    specs: Sequence[Spec] = (),
    *,
    lag: bool = True,
    buckets: Sequence[float] = HEAL_BUCKETS,
    now: datetime | None = None,
    heal_cache: HealCache | None = None,
) -> Snapshot:
    """Read the store (and, with ``lag``, each spec's transport) once for every spec.

    The specs named are those of ``specs`` (the spec files) and every spec the store has seen.
    A lag reading that fails is left out and its reason kept in ``lag_errors``: the rest of the
    snapshot still counts. ``heal_cache`` keeps the time-to-heal histograms between calls.
    """
    now = now or datetime.now(UTC)
    store = ctx.store
    counts = store.finding_counts()
    latest = store.latest_runs()
    names = sorted({s.name for s in specs} | set(store.spec_names()))
    findings = {(n, k, st): 0 for n in names for k in KINDS for st in ACTIVE_STATUSES}
    findings.update(counts)
    backlog = store.outbox_backlogs()
    outbox: dict[str, tuple[int, float | None]] = {n: (0, None) for n in names}
    for name, (unsent, oldest) in backlog.items():
        outbox[name] = (unsent, max((now - oldest).total_seconds(), 0.0) if oldest else None)
    runs = store.run_counts()
    snap = Snapshot(
        taken_at=now,
        specs=names,
        findings=findings,
        latest=latest,
        runs=runs,
        outbox=outbox,
        heal=(heal_cache or HealCache()).histograms(store, runs, buckets),
        dead={n: 0 for n in names} | store.outbox_dead(),
    )
    if lag:
        for spec in specs:
            c = spec.correction
            if c is None or not c.consumer_group:
                continue
            try:
                n = ctx.transport(c.transport).lag(c.consumer_group, c.topic)
            except ReconcileError as e:
                snap.lag_errors[spec.name] = str(e)
            else:
                snap.lag[spec.name] = Lag(c.consumer_group, c.topic, n)
    return snap
