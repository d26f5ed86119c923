"""``/metrics``: a :class:`~reconcile.app.metrics.Snapshot` in Prometheus' text format.

Rendered with the official ``prometheus_client`` through a custom collector: every scrape reads
the store afresh (five aggregate queries) instead of keeping counters in this process, so any
number of ``reconcile serve`` replicas over one store report the same numbers, and a restart
loses nothing.

    reconcile_findings{spec,kind,status}                  gauge: active findings (open, correcting, ...)
    reconcile_pending_entities{spec}                      gauge: pending in the latest run
    reconcile_entities_compared{spec}                     gauge: compared in the latest run
    reconcile_last_audit_timestamp_seconds{spec}          gauge: when the latest run finished (Unix time)
    reconcile_last_audit_duration_seconds{spec}           gauge: how long it took
    reconcile_runs_total{spec,status}                     counter: stored runs by verdict (clean, drift)
    reconcile_outbox_unsent{spec}                         gauge: corrective events not yet relayed
    reconcile_outbox_oldest_unsent_age_seconds{spec}      gauge: age of the oldest (0 when none)
    reconcile_outbox_dead{spec}                           gauge: corrective events parked for good
    reconcile_projector_lag{spec,consumer_group}          gauge: messages the projector has not consumed
    reconcile_time_to_heal_seconds{spec}                  histogram: first seen -> resolved
    reconcile_scrape_errors{spec,what}                    gauge: 1 where a number could not be read
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..app.metrics import Snapshot

__all__ = ["SnapshotCollector", "render", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotCollector(Collector):
    """Turns a fresh snapshot into metric families on every collect (every scrape)."""

    def __init__(self, take: Callable[[], Snapshot]):
        self._take = take

    def collect(self) -> Iterator[Metric]:
        yield from families(self._take())


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    findings = GaugeMetricFamily(
        "reconcile_findings",
        "Active findings by kind and status (open, correcting, acknowledged) as of the latest run.",
        labels=["spec", "kind", "status"],
    )
    for (spec, kind, status), n in sorted(snap.findings.items()):
        findings.add_metric([spec, kind, status], n)
    yield findings

    pending = GaugeMetricFamily(
        "reconcile_pending_entities", "Entities pending (in flight) in the latest run.", labels=["spec"]
    )
    compared = GaugeMetricFamily(
        "reconcile_entities_compared", "Entities compared by the latest run.", labels=["spec"]
    )
    last_at = GaugeMetricFamily(
        "reconcile_last_audit_timestamp_seconds",
        "When the latest run of the spec finished, in seconds since the Unix epoch.",
        labels=["spec"],
    )
    last_took = GaugeMetricFamily(
        "reconcile_last_audit_duration_seconds", "How long the latest run of the spec took.", labels=["spec"]
    )
    for spec, run in sorted(snap.latest.items()):
        pending.add_metric([spec], int(run.summary.get("pending", 0)))
        compared.add_metric([spec], int(run.summary.get("compared", 0)))
        last_at.add_metric([spec], run.finished_at.timestamp())
        last_took.add_metric([spec], max((run.finished_at - run.started_at).total_seconds(), 0.0))
    yield from (pending, compared, last_at, last_took)

    runs = CounterMetricFamily(
        "reconcile_runs", "Runs stored in the audit store, by verdict.", labels=["spec", "status"]
    )
    for (spec, status), n in sorted(snap.runs.items()):
        runs.add_metric([spec, status], n)
    yield runs

    unsent = GaugeMetricFamily(
        "reconcile_outbox_unsent", "Corrective events in the outbox not yet relayed.", labels=["spec"]
    )
    oldest = GaugeMetricFamily(
        "reconcile_outbox_oldest_unsent_age_seconds",
        "Age of the oldest unsent corrective event (0 when none is waiting).",
        labels=["spec"],
    )
    for spec, (n, age) in sorted(snap.outbox.items()):
        unsent.add_metric([spec], n)
        oldest.add_metric([spec], age or 0.0)
    yield from (unsent, oldest)

    dead = GaugeMetricFamily(
        "reconcile_outbox_dead",
        "Corrective events parked for good: the broker refused them (too large, invalid); no relay "
        "retries them. `reconcile health SPEC` lists them with their errors.",
        labels=["spec"],
    )
    for spec, n in sorted(snap.dead.items()):
        dead.add_metric([spec], n)
    yield dead

    lag = GaugeMetricFamily(
        "reconcile_projector_lag",
        "Messages of the correction topic the projector's consumer group has not consumed.",
        labels=["spec", "consumer_group"],
    )
    for spec, reading in sorted(snap.lag.items()):
        lag.add_metric([spec, reading.consumer_group], reading.messages)
    yield lag

    heal = HistogramMetricFamily(
        "reconcile_time_to_heal_seconds",
        "Time from a finding's first sighting to its resolution, over resolved findings.",
        labels=["spec"],
    )
    for spec, h in sorted(snap.heal.items()):
        buckets = [(f"{b:g}", c) for b, c in zip(h.bounds, h.cumulative, strict=True)] + [("+Inf", h.count)]
        heal.add_metric([spec], buckets, h.total_seconds)
    yield heal

    errors = GaugeMetricFamily(
        "reconcile_scrape_errors",
        "1 where a number could not be read at this scrape (what: lag); see the server's log.",
        labels=["spec", "what"],
    )
    for spec in sorted(snap.lag_errors):
        errors.add_metric([spec, "lag"], 1)
    yield errors


def render(snap: Snapshot) -> bytes:
    """The exposition text of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snap))
    return generate_latest(registry)
