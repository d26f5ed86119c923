"""Use case: health of the pipes that cause drift — outbox backlog, projector lag, audit recency.

:func:`health` reads the audit store and asks each spec's transport (Kafka or the embedded log)
for its projector's lag; every threshold crossed becomes one human-readable problem line. The
verdict follows the CLI's exit codes: 0 healthy, 1 a threshold crossed, 2 cannot tell (the
store, a broker or a spec could not be read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ReconcileError
from ..spec import Spec
from .context import Context

__all__ = ["Thresholds", "SpecHealth", "HealthReport", "health"]


@dataclass(frozen=True)
class Thresholds:
    """When a number becomes a problem."""

    outbox_max_age: timedelta = timedelta(minutes=10)  # oldest unsent corrective event
    outbox_max_rows: int = 10_000
    max_lag: int = 1_000  # projector consumer-group lag, in messages
    stale_after: timedelta = timedelta(hours=3)  # no audit for this long (per spec: alerts.stale_after)


@dataclass
class SpecHealth:
    """One spec's health numbers and the problems they show."""

    spec: str
    outbox_unsent: int
    outbox_oldest_age_s: float | None
    lag: int | None
    last_run_at: datetime | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # what could not be measured, and why
    outbox_dead: int = 0  # corrective events parked: the broker refused them for good

    @property
    def status(self) -> str:
        """``unknown`` (cannot tell), ``unhealthy`` (a threshold crossed) or ``healthy``."""
        return "unknown" if self.unknown else "unhealthy" if self.problems else "healthy"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["last_run_at"] = self.last_run_at.isoformat() if self.last_run_at else None
        d["status"] = self.status
        return d


@dataclass
class HealthReport:
    """Every spec's health, and the verdict: 0 healthy, 1 a threshold crossed, 2 cannot tell."""

    checked_at: datetime
    specs: list[SpecHealth]
    outbox_unsent: int = 0
    outbox_oldest: datetime | None = None

    @property
    def problems(self) -> int:
        return sum(len(h.problems) + len(h.unknown) for h in self.specs)

    @property
    def exit_code(self) -> int:
        if any(h.unknown for h in self.specs):
            return 2
        return 1 if any(h.problems for h in self.specs) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "exit_code": self.exit_code,
            "outbox_unsent": self.outbox_unsent,
            "outbox_oldest": self.outbox_oldest.isoformat() if self.outbox_oldest else None,
            "problems": self.problems,
            "specs": [h.to_dict() for h in self.specs],
        }


def health(
    ctx: Context,
    specs: Sequence[Spec],
    thresholds: Thresholds = Thresholds(),
    *,
    invalid: Sequence[tuple[str, str]] = (),
    now: datetime | None = None,
) -> HealthReport:
    """Measure every spec. ``invalid`` are (spec file, error) pairs of specs that did not load:
    they cannot be judged, so they are reported as such. A lag reading that fails is "cannot
    tell" too: the broker is part of the pipe."""
    now = now or datetime.now(UTC)
    store = ctx.store
    last = store.last_run_times()
    out: list[SpecHealth] = [
        SpecHealth(path, 0, None, None, None, unknown=[f"spec: {error}"]) for path, error in invalid
    ]
    for spec in specs:
        n, oldest = store.outbox_backlog(spec.name)
        age = (now - oldest).total_seconds() if oldest else None
        h = SpecHealth(spec.name, n, age, None, last.get(spec.name))
        if age is not None and age > thresholds.outbox_max_age.total_seconds():
            h.problems.append(
                f"outbox: {n} unsent corrective event(s), the oldest {_ago(age)} old "
                f"(threshold {_ago(thresholds.outbox_max_age.total_seconds())}): is the relay running?"
            )
        elif n > thresholds.outbox_max_rows:
            h.problems.append(
                f"outbox: {n} unsent corrective events (threshold {thresholds.outbox_max_rows})"
            )
        dead, first = store.dead_letters(spec.name, limit=1)
        h.outbox_dead = dead
        if dead:
            why = f" (row {first[0].id}: {(first[0].last_error or '')[:200]})" if first else ""
            h.problems.append(
                f"outbox: {dead} corrective event(s) parked: the broker refused them for good{why}; "
                "their findings are open again"
            )
        corr = spec.correction
        if corr and corr.consumer_group:
            try:
                h.lag = ctx.transport(corr.transport).lag(corr.consumer_group, corr.topic)
            except ReconcileError as e:
                h.unknown.append(f"lag: cannot read consumer group {corr.consumer_group!r}: {e}")
            else:
                if h.lag > thresholds.max_lag:
                    h.problems.append(
                        f"projector: consumer group {corr.consumer_group!r} is {h.lag} message(s) "
                        f"behind on {corr.topic} (threshold {thresholds.max_lag})"
                    )
        stale = spec.alerts.stale_after or thresholds.stale_after
        gates = store.preflight_history(spec.name, limit=1)
        if gates and not gates[0].success and (h.last_run_at is None or gates[0].checked_at > h.last_run_at):
            h.problems.append(
                f"preflight: the last gate failed at {gates[0].checked_at:%Y-%m-%d %H:%M}Z and no audit "
                "has run since (see `reconcile check`)"
            )
        if spec.schedule:
            if h.last_run_at is None:
                h.problems.append("audit: never audited (is its DAG paused, or failing before the audit?)")
            elif now - h.last_run_at > stale:
                h.problems.append(
                    f"audit: last run {_ago((now - h.last_run_at).total_seconds())} ago "
                    f"(threshold {_ago(stale.total_seconds())})"
                )
        out.append(h)
    total, oldest_all = store.outbox_backlog()
    return HealthReport(now, out, total, oldest_all)


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
