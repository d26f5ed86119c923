"""The healing loop: correct → relay → verify, and ``run`` (audit → correct → relay → verify).

* **correct** turns the confirmed open findings of a spec's latest run into corrective events in
  the outbox and marks those findings ``correcting`` — one transaction of the audit store, so a
  crash leaves either both or neither. The outbox's unique event id makes a repeat a no-op. The
  blast-radius guard refuses when the drift is larger than the spec allows.
* **relay** publishes unsent outbox rows (Kafka or the embedded log) and marks a row sent only
  once the destination confirmed it. Killed at any point, a rerun loses nothing; an event may be
  delivered twice, always under the same id.
* **verify** waits until the projector's consumer group has consumed the corrections, re-audits
  just those keys, and resolves or escalates each finding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .app import audit
from .errors import GuardTripped, PublishError, ReconcileError, VerifyError
from .events.cloudevent import CorrectiveEvent, build_event
from .events.embedded import EmbeddedLog, EmbeddedTransport, embedded_log_url
from .events.kafka import KafkaSettings, KafkaTransport, consumer_lag
from .events.transport import Transport
from .findings import FindingStatus, RunResult
from .spec import Spec
from .store import AuditStore

__all__ = [
    "CorrectionResult",
    "RelayResult",
    "VerifyResult",
    "RunOutcome",
    "correct",
    "relay",
    "verify",
    "run",
    "check_guard",
]


# -- correct -------------------------------------------------------------------------------
@dataclass
class CorrectionResult:
    """What ``correct`` decided: the events, how many were new in the outbox."""

    spec: str
    run_id: str
    events: list[CorrectiveEvent]
    written: int
    dry_run: bool
    compared: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "events": len(self.events),
            "written": self.written,
            "already_in_outbox": 0 if self.dry_run else len(self.events) - self.written,
            "corrections": [e.to_dict() for e in self.events],
        }


def check_guard(spec: Spec, findings: int, compared: int) -> None:
    """Raise GuardTripped when ``findings`` corrections are more than the spec allows."""
    c = spec.correction
    assert c is not None
    ratio = findings / compared if compared else (float("inf") if findings else 0.0)
    if findings > c.max_count:
        raise GuardTripped(
            f"blast-radius guard: {findings:,} corrections exceed correction.max_count {c.max_count:,} "
            f"for spec {spec.name}; nothing written (use --force if this drift is real)"
        )
    if ratio > c.max_ratio:
        shown = "all" if compared == 0 else f"{ratio:.4g}"
        raise GuardTripped(
            f"blast-radius guard: {findings:,} corrections of {compared:,} compared (ratio {shown}) exceed "
            f"correction.max_ratio {c.max_ratio} for spec {spec.name}; nothing written "
            "(use --force if this drift is real)"
        )


def _require_correction(spec: Spec) -> None:
    if spec.correction is None:
        raise ReconcileError(f"spec {spec.label}: correction: this spec has no correction section")


def correct(
    spec: Spec, store: AuditStore, *, dry_run: bool = False, force: bool = False, now: datetime | None = None
) -> CorrectionResult:
    """Write corrective events for the confirmed open findings of the latest run to the outbox."""
    _require_correction(spec)
    latest = store.latest_run(spec.name)
    if latest is None:
        raise ReconcileError(f"spec {spec.name}: no audit run yet; run `reconcile audit` first")
    compared = int(latest.summary.get("compared", 0))
    with store.begin() as conn:
        todo = [
            (fid, f)
            for fid, f in store.run_findings(conn, spec.name, latest.id, FindingStatus.OPEN.value)
            if f.times_seen >= spec.freshness.confirm_runs
        ]
        if not force:
            check_guard(spec, len(todo), compared)
        events = [build_event(spec, f, latest.id, now) for _, f in todo]
        if dry_run or not events:
            return CorrectionResult(spec.name, latest.id, events, 0, dry_run, compared)
        written = store.enqueue(
            conn,
            [
                {
                    "event_id": e.id,
                    "spec": spec.name,
                    "run_id": latest.id,
                    "finding_id": fid,
                    "topic": e.topic,
                    "transport": e.transport,
                    "message_key": e.subject,
                    "headers": e.headers(),
                    "payload": e.value(),
                    "created_at": e.time,
                }
                for (fid, _), e in zip(todo, events, strict=True)
            ],
        )
        store.set_status(
            conn,
            spec.name,
            [f.key_id for _, f in todo],
            FindingStatus.CORRECTING,
            note=f"correction sent by run {latest.id}",
            only_from=[FindingStatus.OPEN.value],
        )
    return CorrectionResult(spec.name, latest.id, events, written, False, compared)


# -- relay ---------------------------------------------------------------------------------
@dataclass
class RelayResult:
    """What a relay pass published."""

    sent: int = 0
    batches: int = 0
    seconds: float = 0.0
    by_transport: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        return {
            "sent": self.sent,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(rate, 1),
            "by_transport": self.by_transport,
        }


def _transport(kind: str, store: AuditStore, kafka: KafkaSettings | None, timeout_s: float) -> Transport:
    if kind == "embedded":
        return EmbeddedTransport(EmbeddedLog(embedded_log_url(store.url)))
    return KafkaTransport(kafka or KafkaSettings.from_env(), timeout_s=timeout_s)


def relay(
    store: AuditStore,
    *,
    spec_name: str | None = None,
    once: bool = True,
    kafka: KafkaSettings | None = None,
    timeout_s: float = 30.0,
    batch_size: int = 5000,
    idle_s: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RelayResult:
    """Publish unsent outbox rows in batches until the outbox is empty (``once``) or stopped.

    A row is marked sent only after its transport confirmed it. When some rows cannot be
    delivered within ``timeout_s`` (broker down), the confirmed ones are marked, the rest stay
    unsent, and PublishError is raised.
    """
    result = RelayResult()
    transports: dict[str, Transport] = {}
    started = time.monotonic()
    try:
        while not (should_stop and should_stop()):
            rows = store.unsent(batch_size, spec_name)
            if not rows:
                if once:
                    break
                time.sleep(idle_s)
                continue
            for kind in dict.fromkeys(r.transport for r in rows):
                batch = [r for r in rows if r.transport == kind]
                if kind not in transports:
                    transports[kind] = _transport(kind, store, kafka, timeout_s)
                report = transports[kind].publish(batch)
                if report.confirmed:
                    store.mark_sent(report.confirmed)
                    result.sent += len(report.confirmed)
                    result.by_transport[kind] = result.by_transport.get(kind, 0) + len(report.confirmed)
                if report.failed:
                    store.mark_failed(report.failed, report.first_error or "not delivered")
                    where = (kafka or KafkaSettings.from_env()).bootstrap_servers if kind == "kafka" else kind
                    raise PublishError(
                        f"relay: {len(report.failed):,} event(s) not delivered to {kind} {where} within "
                        f"{timeout_s:g}s (first error: {report.first_error}); they stay in the outbox "
                        f"for the next relay ({result.sent:,} sent)"
                    )
            result.batches += 1
            if on_batch:
                on_batch(result.sent)
    finally:
        for t in transports.values():
            t.close()
        result.seconds = time.monotonic() - started
    return result


# -- verify --------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """Which corrected findings healed and which were escalated."""

    spec: str
    checked: int = 0
    resolved: int = 0
    escalated: int = 0
    pending: int = 0
    lag: int = 0
    waited_s: float = 0.0
    run_id: str | None = None
    escalated_keys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.escalated or self.pending else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "checked": self.checked,
            "resolved": self.resolved,
            "escalated": self.escalated,
            "pending": self.pending,
            "lag": self.lag,
            "waited_seconds": round(self.waited_s, 3),
            "run_id": self.run_id,
            "escalated_keys": self.escalated_keys,
        }


def projector_lag(spec: Spec, store: AuditStore, kafka: KafkaSettings | None = None) -> int:
    """How many corrective events the spec's projector has not consumed yet."""
    _require_correction(spec)
    c = spec.correction
    assert c is not None
    if not c.consumer_group:
        raise VerifyError(f"spec {spec.label}: correction.consumer_group is needed to verify")
    if c.transport == "embedded":
        log = EmbeddedLog(embedded_log_url(store.url))
        try:
            return log.lag(c.consumer_group, c.topic)
        finally:
            log.dispose()
    return consumer_lag(kafka or KafkaSettings.from_env(), c.consumer_group, c.topic)


def verify(
    spec: Spec,
    store: AuditStore,
    *,
    timeout: timedelta = timedelta(minutes=5),
    kafka: KafkaSettings | None = None,
    truth_url: str | None = None,
    projection_url: str | None = None,
    poll_s: float = 0.5,
) -> VerifyResult:
    """Wait for the projector to consume the corrections, then re-audit the corrected keys."""
    _require_correction(spec)
    out = VerifyResult(spec.name)
    correcting = store.findings(spec.name, [FindingStatus.CORRECTING.value])
    if not correcting:
        return out
    unsent, _ = store.outbox_backlog(spec.name)
    if unsent:
        raise VerifyError(
            f"spec {spec.name}: {unsent:,} correction(s) still unsent; run `reconcile relay` first"
        )
    started = time.monotonic()
    deadline = started + timeout.total_seconds()
    while True:
        out.lag = projector_lag(spec, store, kafka)
        if out.lag == 0 or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    out.waited_s = time.monotonic() - started
    keys = [tuple(f.key[n] for n in spec.key_truth) for f in correcting]
    result = audit(spec, store, keys=keys, truth_url=truth_url, projection_url=projection_url)
    out.run_id, out.checked = result.run_id, len(correcting)
    still = {f.key_id for f in result.findings}
    pending_now = {f.key_id for f in store.findings(spec.name, [FindingStatus.CORRECTING.value])} - still
    group = spec.correction.consumer_group if spec.correction else ""
    why = (
        f"projector {group} still {out.lag:,} behind after {timeout.total_seconds():g}s"
        if out.lag
        else "projector consumed the correction but the projection still differs"
    )
    with store.begin() as conn:
        out.escalated = store.set_status(
            conn,
            spec.name,
            still,
            FindingStatus.OPEN,
            note=f"escalated by verify {result.run_id}: {why}",
            only_from=[FindingStatus.CORRECTING.value],
        )
        out.pending = store.set_status(
            conn,
            spec.name,
            pending_now,
            FindingStatus.OPEN,
            note=f"pending at verify {result.run_id}: changed since the correction; the next audit decides",
            only_from=[FindingStatus.CORRECTING.value],
        )
    out.resolved = out.checked - out.escalated - out.pending
    out.escalated_keys = [f.key for f in result.findings][:50]
    return out


# -- run -----------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """audit → correct → relay (→ verify) of one spec."""

    audit: RunResult
    correction: CorrectionResult | None = None
    relay: RelayResult | None = None
    verify: VerifyResult | None = None

    @property
    def exit_code(self) -> int:
        if not self.audit.actionable:
            return 0
        if self.verify is not None:
            return self.verify.exit_code
        return 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "audit": self.audit.to_dict(),
            "correction": self.correction.to_dict() if self.correction else None,
            "relay": self.relay.to_dict() if self.relay else None,
            "verify": self.verify.to_dict() if self.verify else None,
        }


def run(
    spec: Spec,
    store: AuditStore,
    *,
    verify: bool = False,
    dry_run: bool = False,
    force: bool = False,
    kafka: KafkaSettings | None = None,
    timeout: timedelta = timedelta(minutes=5),
    truth_url: str | None = None,
    projection_url: str | None = None,
    keys: list[tuple[Any, ...]] | None = None,
    where: str | None = None,
    on_row: Callable[[], None] | None = None,
) -> RunOutcome:
    """One command for cron and Airflow: audit, correct, relay, and optionally verify."""
    _require_correction(spec)
    result = audit(
        spec, store, keys=keys, where=where, truth_url=truth_url, projection_url=projection_url, on_row=on_row
    )
    outcome = RunOutcome(result)
    if not result.actionable:
        return outcome
    outcome.correction = correct(spec, store, dry_run=dry_run, force=force)
    if dry_run:
        return outcome
    outcome.relay = relay(store, spec_name=spec.name, once=True, kafka=kafka)
    if verify:
        outcome.verify = _verify(
            spec, store, timeout=timeout, kafka=kafka, truth_url=truth_url, projection_url=projection_url
        )
    return outcome


_verify = verify
