"""Health of the pipes that cause drift: outbox backlog, projector lag, audit recency.

``check()`` reads the audit store and asks a lag function (Kafka in production) for each spec's
projector; every threshold crossed becomes one human-readable problem line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ReconcileError
from .spec import Spec
from .store import AuditStore

__all__ = ["Thresholds", "SpecHealth", "check", "kafka_lag"]

LagFn = Callable[[str, str], int]  # (consumer group, topic) -> messages not yet consumed


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["last_run_at"] = self.last_run_at.isoformat() if self.last_run_at else None
        return d


def check(
    specs: Sequence[Spec],
    store: AuditStore,
    thresholds: Thresholds = Thresholds(),
    *,
    lag: LagFn | None = None,
    now: datetime | None = None,
) -> list[SpecHealth]:
    """Measure every spec; a lag reading that fails is a problem too (the broker is part of the pipe)."""
    now = now or datetime.now(UTC)
    last = store.last_run_times()
    out: list[SpecHealth] = []
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
        corr = spec.correction
        if corr and corr.consumer_group and corr.transport == "kafka":
            if lag is None:
                h.notes.append("lag: no Kafka settings, not measured")
            else:
                try:
                    h.lag = lag(corr.consumer_group, corr.topic)
                except ReconcileError as e:
                    h.problems.append(f"lag: cannot read consumer group {corr.consumer_group!r}: {e}")
                else:
                    if h.lag > thresholds.max_lag:
                        h.problems.append(
                            f"projector: consumer group {corr.consumer_group!r} is {h.lag} message(s) "
                            f"behind on {corr.topic} (threshold {thresholds.max_lag})"
                        )
        stale = spec.alerts.stale_after or thresholds.stale_after
        if spec.schedule:
            if h.last_run_at is None:
                h.notes.append("never audited")
            elif now - h.last_run_at > stale:
                h.problems.append(
                    f"audit: last run {_ago((now - h.last_run_at).total_seconds())} ago "
                    f"(threshold {_ago(stale.total_seconds())})"
                )
        out.append(h)
    return out


def kafka_lag(bootstrap: str | None = None, extra: dict[str, str] | None = None) -> LagFn:
    """A lag function over the real broker (needs :mod:`reconcile.events.kafka`)."""
    from .events.kafka import KafkaSettings, consumer_lag  # type: ignore[import-not-found,unused-ignore]

    settings = KafkaSettings.from_env(bootstrap=bootstrap)
    if extra:
        settings = settings.with_config(extra) if hasattr(settings, "with_config") else settings

    def measure(group: str, topic: str) -> int:
        return int(consumer_lag(settings, group, topic))

    return measure


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
