"""Use case: the numbers a monitoring system scrapes — one consistent snapshot of every spec.

Plain values, no pandas, and cheap: five aggregate queries of the store whatever its size (see
:mod:`reconcile.store.queries`) plus one lag reading per spec that names a consumer group. The
``/metrics`` route of ``reconcile serve`` renders a :class:`Snapshot` in Prometheus' format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import ReconcileError
from ..findings import FindingKind
from ..lifecycle import ACTIVE
from ..spec import Spec
from ..store import HealHistogram, RunRecord
from .context import Context

__all__ = ["HEAL_BUCKETS", "KINDS", "ACTIVE_STATUSES", "Lag", "Snapshot", "snapshot"]

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


def snapshot(
    ctx: Context,
    specs: Sequence[Spec] = (),
    *,
    lag: bool = True,
    buckets: Sequence[float] = HEAL_BUCKETS,
    now: datetime | None = None,
) -> Snapshot:
    """Read the store (and, with ``lag``, each spec's transport) once for every spec.

    The specs named are those of ``specs`` (the spec files) and every spec the store has seen.
    A lag reading that fails is left out and its reason kept in ``lag_errors``: the rest of the
    snapshot still counts.
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
    snap = Snapshot(
        taken_at=now,
        specs=names,
        findings=findings,
        latest=latest,
        runs=store.run_counts(),
        outbox=outbox,
        heal=store.heal_histograms(buckets),
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
