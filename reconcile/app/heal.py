"""The healing loop: correct → relay → verify, and ``heal`` (preflight → audit → correct → relay
→ verify), which the CLI's ``run`` and the scheduled DAG both call.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..errors import PublishError, ReconcileError, VerifyError
from ..events.cloudevent import CorrectiveEvent, EventBuilder
from ..findings import Finding, FindingStatus, RunResult
from ..guard import check_guard
from ..lifecycle import correctable, plan_verify
from ..spec import Spec
from ..store import Claim, OutboxEntry, RunRecord, Store
from .audit import audit
from .context import Context

__all__ = [
    "CorrectionResult",
    "RelayResult",
    "VerifyResult",
    "HealResult",
    "correct",
    "relay",
    "verify",
    "heal",
    "projector_lag",
]


# -- correct -------------------------------------------------------------------------------
LISTED_EVENTS = 10_000  # events a CorrectionResult holds; the outbox has them all (like RunResult)


@dataclass
class CorrectionResult:
    """What ``correct`` decided: the first events, how many in all, how many were new in the outbox."""

    spec: str
    run_id: str
    events: list[CorrectiveEvent]  # the first LISTED_EVENTS of them
    written: int
    dry_run: bool
    compared: int
    refused: list[dict[str, Any]] = field(default_factory=list)  # events over max_event_bytes
    total: int | None = None  # events decided in all (None: len(events))

    @property
    def count(self) -> int:
        """Corrective events decided in all (listed or not)."""
        return len(self.events) if self.total is None else self.total

    @property
    def truncated(self) -> int:
        """Events not held in ``events`` (the outbox has them)."""
        return self.count - len(self.events)

    @property
    def exit_code(self) -> int:
        """1 when some events were refused (their findings stay open), else 0."""
        return 1 if self.refused else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "events": self.count,
            "written": self.written,
            "already_in_outbox": 0 if self.dry_run else self.count - self.written,
            "refused": self.refused,
            "corrections": [e.to_dict() for e in self.events],
            "corrections_listed": len(self.events),  # the first ones; `events` counts them all
            **({"corrections_truncated": self.truncated} if self.truncated else {}),
        }


def _require_correction(spec: Spec) -> None:
    if spec.correction is None:
        raise ReconcileError(f"spec {spec.label}: correction: this spec has no correction section")


def _guard_base(store: Store, spec: str, latest: RunRecord) -> int:
    """What the guard's ratio is taken over: the entities of the whole pair.

    A keyed or filtered run compared only its slice (2 corrections of 2 compared is 100%, yet
    harmless), so its ratio is taken over the last full audit's entity count when there is one.
    """
    compared = int(latest.summary.get("compared", 0))
    scope = latest.scope or {}
    if scope.get("keys") is None and scope.get("where") is None:
        return compared
    full = store.baseline_run(spec)
    return max(compared, int(full.summary.get("compared", 0))) if full is not None else compared


def correct(
    ctx: Context, spec: Spec, *, dry_run: bool = False, force: bool = False, now: datetime | None = None
) -> CorrectionResult:
    """Write corrective events for the confirmed open findings of the latest run to the outbox.

    One transaction of the store: the outbox rows and the findings' move to ``correcting``
    together. The blast-radius guard runs inside it on the count of open findings before
    anything is written (and again on the running count of each page), so a refusal writes
    nothing. The findings are read, and their events built and written, page by page; the
    result keeps the first :data:`LISTED_EVENTS` events and the total, so memory stays flat
    however many findings there are.
    """
    _require_correction(spec)
    c = spec.correction
    assert c is not None
    store = ctx.store
    latest = store.latest_run(spec.name)
    if latest is None:
        raise ReconcileError(f"spec {spec.name}: no audit run yet; run `reconcile audit` first")
    compared = _guard_base(store, spec.name, latest)
    events: list[CorrectiveEvent] = []
    refused: list[dict[str, Any]] = []
    total = seen = 0
    builder = EventBuilder(spec, latest.id, now)

    def guard(corrections: int) -> None:
        if not force:
            check_guard(spec.name, corrections, compared, max_count=c.max_count, max_ratio=c.max_ratio)

    def decide(found: list[Finding]) -> list[OutboxEntry]:
        # one page of the open findings: its events go to the outbox before the next page is read
        nonlocal total, seen
        todo = correctable(found, spec.freshness.confirm_runs)
        seen += len(todo)
        guard(seen)  # the count said less: findings appeared since; a refusal still rolls back
        entries: list[OutboxEntry] = []
        topic, transport, limit = c.topic, c.transport, c.max_event_bytes
        for f in todo:
            # the outbox's parts of the event; an event object only for the ones listed
            p = builder.parts(f)
            size = _wire_size(p.subject, p.value, p.headers)
            if size > limit:
                refused.append({"key": f.key, "key_id": f.key_id, "bytes": size})
                continue
            total += 1
            if len(events) < LISTED_EVENTS:
                events.append(builder.event(f, p))
            if not dry_run:
                entries.append(
                    OutboxEntry(f.key_id, p.id, topic, transport, p.subject, p.headers, p.value, p.time)
                )
        return entries

    # A dry run takes the same path with nothing to write: decide returns no entries, so the
    # store reads (and the guard counts) exactly what a real run would, and writes nothing.
    _, written = store.correct(
        spec.name,
        latest.id,
        decide,
        note=f"correction sent by run {latest.id}",
        confirm_runs=spec.freshness.confirm_runs,
        guard=guard,
    )
    result = CorrectionResult(
        spec.name, latest.id, events, written, dry_run, compared, _jsonable(refused), total
    )
    if refused and not dry_run:
        # The finding stays open, saying why: a poison event never enters the outbox.
        for r in refused:
            store.move(
                spec.name,
                [
                    (
                        [r["key_id"]],
                        FindingStatus.OPEN,
                        f"not corrected: its event is {r['bytes']:,} bytes, over correction.max_event_bytes "
                        f"{c.max_event_bytes:,}",
                    )
                ],
                only_from=[FindingStatus.OPEN.value],
            )
    return result


def event_size(e: CorrectiveEvent) -> int:
    """Bytes a corrective event takes on the wire: key, value and headers."""
    return _wire_size(e.subject, e.value(), e.headers())


def _wire_size(key: str, value: str | None, headers: dict[str, str]) -> int:
    return (
        _utf8_len(key)
        + (_utf8_len(value) if value is not None else 0)
        + _utf8_len("".join(headers))
        + _utf8_len("".join(headers.values()))
    )


def _utf8_len(s: str) -> int:
    """``len(s.encode())`` without the encoded copy when ``s`` is ASCII (an event, nearly always:
    its JSON escapes whatever is not)."""
    return len(s) if s.isascii() else len(s.encode())


def _jsonable(refused: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from ..compare import jsonable

    return [{"key": jsonable(r["key"]), "bytes": r["bytes"]} for r in refused]


# -- relay ---------------------------------------------------------------------------------
@dataclass
class RelayResult:
    """What a relay pass published."""

    sent: int = 0
    batches: int = 0
    seconds: float = 0.0
    by_transport: dict[str, int] = field(default_factory=dict)
    rejected: int = 0  # attempts the broker refused for good
    dead: list[dict[str, Any]] = field(default_factory=list)  # rows parked by this pass

    @property
    def exit_code(self) -> int:
        """1 when this pass parked rows (a refusal: see `reconcile health`), else 0."""
        return 1 if self.dead else 0

    def to_dict(self) -> dict[str, Any]:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        return {
            "sent": self.sent,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(rate, 1),
            "by_transport": self.by_transport,
            "rejected": self.rejected,
            "dead": self.dead,
        }


def relay(
    ctx: Context,
    *,
    spec_name: str | None = None,
    once: bool = True,
    batch_size: int = 20000,
    idle_s: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_attempts: int = 3,
) -> RelayResult:
    """Publish unsent outbox rows in batches until the outbox is empty (``once``) or stopped.

    A row is marked sent only after its transport confirmed it. A row the destination refuses
    for good (too large, invalid) is retried up to ``max_attempts`` times, then parked
    (``dead``, with the broker's reason; its finding goes back to ``open``): it never blocks the
    other rows, nor verify. When some rows cannot be
    delivered within ``timeout_s`` (broker down), the confirmed ones are marked, the rest stay
    unsent, and PublishError is raised. How long a broker is waited for is the context's
    ``kafka_timeout_s``.
    """
    store = ctx.store
    result = RelayResult()
    started = time.monotonic()
    # Rows are *claimed* (Store.claim): two relays never publish the same row. Three steps overlap:
    # the next batch is claimed (reader thread) and the last one's delivered rows are marked sent
    # and committed (marker thread) while this one is published, so the store's time overlaps the
    # broker's. Marks run one batch after the other, in order; a batch's marks are submitted only
    # after the previous batch's committed, and an error in them stops the relay.
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-claim")
    marker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-mark")
    # Claims go on from the last id claimed (keyset): the next claim starts past the rows this
    # relay still publishes or marks instead of stepping over each of them. When one comes back
    # empty, a claim from the start takes what it passed by (rows another relay held then, or
    # that were older); only an empty claim from the start means the outbox is empty.
    after = 0
    ahead: Future[Claim] | None = reader.submit(store.claim, batch_size, spec_name, after=after)
    marking: Future[None] | None = None
    try:
        while not (should_stop and should_stop()):
            assert ahead is not None
            claim = ahead.result()
            ahead = None
            handed = False
            try:
                if not claim.rows:
                    if after:
                        after = 0
                        ahead = reader.submit(store.claim, batch_size, spec_name, after=after)
                        continue
                    if once:
                        break
                    time.sleep(idle_s)
                    ahead = reader.submit(store.claim, batch_size, spec_name, after=after)
                    continue
                after = max(r.id for r in claim.rows)
                ahead = reader.submit(store.claim, batch_size, spec_name, after=after)
                confirmed = _publish(ctx, claim, result, max_attempts)
                if marking is not None:
                    marking.result()  # the previous batch's marks are committed (or raise here)
                marking = marker.submit(_mark_and_close, claim, confirmed)
                handed = True
            finally:
                if not handed:
                    claim.close()
            result.batches += 1
            if on_batch:
                on_batch(result.sent)
        if marking is not None:
            marking.result()  # every confirmed row is marked sent before relay returns
    finally:
        if ahead is not None:
            ahead.cancel()
            try:
                ahead.result().close()
            except BaseException:  # noqa: BLE001,S110 - it never started, or failed: nothing held
                pass
        reader.shutdown(wait=True)
        marker.shutdown(wait=True)  # a batch being marked finishes and releases its rows
        result.seconds = time.monotonic() - started
    return result


def _mark_and_close(claim: Claim, confirmed: list[int]) -> None:
    """Mark a published claim's delivered rows sent, and release (commit) it."""
    try:
        if confirmed:
            claim.sent(confirmed)
    finally:
        claim.close()


def _park_refused(
    claim: Claim, transport: Any, refused: list[Any], result: RelayResult, max_attempts: int, kind: str
) -> None:
    """Rows a broker refused for good, retried alone until they go through or are parked.

    A broker refuses a whole record batch for one bad message in it, so the refused rows are
    published one by one; each refusal of a row alone counts as one attempt, and a row refused
    ``max_attempts`` times is parked (dead, with the broker's reason; its finding reopens).
    """
    for _ in range(max_attempts):
        errors: dict[int, str] = {}
        for row in refused:
            alone = transport.publish([row])
            if alone.confirmed:
                claim.sent(alone.confirmed)
                result.sent += len(alone.confirmed)
                result.by_transport[kind] = result.by_transport.get(kind, 0) + len(alone.confirmed)
            errors.update(alone.rejected)
            if alone.failed:
                claim.failed(alone.failed, alone.first_error or "not delivered")
        if not errors:
            return
        result.rejected += len(errors)
        parked = set(claim.rejected(errors, max_attempts))
        by_id = {r.id: r for r in refused}
        result.dead += [
            {"id": i, "event_id": by_id[i].event_id, "key": by_id[i].message_key[:200], "error": errors[i]}
            for i in sorted(parked)
        ]
        refused = [r for r in refused if r.id in errors and r.id not in parked]
        if not refused:
            return


def _publish(ctx: Context, claim: Claim, result: RelayResult, max_attempts: int) -> list[int]:
    """Publish one claim's rows, transport by transport: the ids delivered, for the caller to
    mark sent. Refused rows are retried alone and marked (or parked) here; when some rows were
    not delivered, the delivered ones are marked here too before PublishError is raised."""
    rows = claim.rows
    confirmed: list[int] = []
    for kind in dict.fromkeys(r.transport for r in rows):
        batch = [r for r in rows if r.transport == kind]
        transport = ctx.transport(kind)
        report = transport.publish(batch)
        if report.confirmed:
            confirmed += report.confirmed
            result.sent += len(report.confirmed)
            result.by_transport[kind] = result.by_transport.get(kind, 0) + len(report.confirmed)
        if report.rejected:
            _park_refused(
                claim, transport, [r for r in batch if r.id in report.rejected], result, max_attempts, kind
            )
        if report.failed:
            if confirmed:
                claim.sent(confirmed)
            claim.failed(report.failed, report.first_error or "not delivered")
            raise PublishError(
                f"relay: {len(report.failed):,} event(s) not delivered to {kind} {transport.where} "
                f"within {ctx.kafka_timeout_s:g}s (first error: {report.first_error}); they stay "
                "in the outbox "
                f"for the next relay ({result.sent:,} sent)"
            )
    return confirmed


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


def projector_lag(ctx: Context, spec: Spec) -> int:
    """How many events of the spec's correction topic its projector has not consumed yet."""
    _require_correction(spec)
    c = spec.correction
    assert c is not None
    if not c.consumer_group:
        raise VerifyError(f"spec {spec.label}: correction.consumer_group is needed to verify")
    return ctx.transport(c.transport).lag(c.consumer_group, c.topic)


def verify(
    ctx: Context,
    spec: Spec,
    *,
    timeout: timedelta | None = None,
    poll_s: float = 0.5,
) -> VerifyResult:
    """Wait for the projector to consume the corrections, then re-audit the corrected keys.

    Lag is not drift: while the projector has not consumed every correction, verify cannot tell
    whether they healed, so after ``timeout`` (default ``correction.verify_timeout``) with lag
    above 0 it raises VerifyError (exit 2) naming the consumer group and its lag, and leaves the
    findings ``correcting``. Only once the lag is 0 does it re-check the corrected keys and
    resolve or escalate them.
    """
    _require_correction(spec)
    assert spec.correction is not None
    timeout = timeout if timeout is not None else spec.correction.verify_timeout
    store = ctx.store
    out = VerifyResult(spec.name)
    # (key id, key) only: the findings' values are not needed to re-audit their keys
    correcting = store.finding_keys(spec.name, [FindingStatus.CORRECTING.value])
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
        out.lag = projector_lag(ctx, spec)
        if out.lag == 0 or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    out.waited_s = time.monotonic() - started
    if out.lag:
        c = spec.correction
        raise VerifyError(
            f"verify {spec.name}: cannot tell: projector group {c.consumer_group!r} is still {out.lag:,} "
            f"message(s) behind on {c.topic} after {out.waited_s:.0f}s; {len(correcting):,} correction(s) "
            "stay `correcting` (is the projector running?)"
        )
    keys = [tuple(key[n] for n in spec.key_truth) for _, key in correcting]
    result = audit(ctx, spec, keys=keys, wait=True)  # a scheduled audit running now: after it
    out.run_id, out.checked = result.run_id, len(correcting)
    plan = plan_verify(
        (kid for kid, _ in store.finding_keys(spec.name, [FindingStatus.CORRECTING.value])),
        (f.key_id for f in result.findings),
    )
    why = "projector consumed the correction but the projection still differs"
    out.escalated, out.pending = store.move(
        spec.name,
        [
            (plan.escalate, FindingStatus.OPEN, f"escalated by verify {result.run_id}: {why}"),
            (
                plan.changed,
                FindingStatus.OPEN,
                f"pending at verify {result.run_id}: changed since the correction; the next audit decides",
            ),
        ],
        only_from=[FindingStatus.CORRECTING.value],
    )
    out.resolved = out.checked - out.escalated - out.pending
    out.escalated_keys = [f.key for f in result.findings][:50]
    return out


# -- heal ----------------------------------------------------------------------------------
@dataclass
class HealResult:
    """preflight → audit → correct → relay (→ verify) of one spec."""

    audit: RunResult
    correction: CorrectionResult | None = None
    relay: RelayResult | None = None
    verify: VerifyResult | None = None
    preflight: dict[str, Any] | None = None  # the gate's summary; None when skipped
    error: ReconcileError | None = None  # what stopped the loop after the audit (a tripped guard...)

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if not self.audit.exit_code:
            return 0
        if self.verify is not None:
            return self.verify.exit_code
        return 1

    def to_dict(self) -> dict[str, Any]:
        out = {
            "exit_code": self.exit_code,
            "preflight": self.preflight,
            "audit": self.audit.to_dict(),
            "correction": self.correction.to_dict() if self.correction else None,
            "relay": self.relay.to_dict() if self.relay else None,
            "verify": self.verify.to_dict() if self.verify else None,
        }
        if self.error is not None:
            out["error"] = {"type": type(self.error).__name__, "message": str(self.error)}
        return out


def heal(
    ctx: Context,
    spec: Spec,
    *,
    verify: bool = False,
    dry_run: bool = False,
    force: bool = False,
    preflight: bool = True,
    timeout: timedelta | None = None,
    keys: list[tuple[Any, ...]] | None = None,
    where: str | None = None,
    on_row: Callable[[], None] | None = None,
    wait: bool = False,
    settle: timedelta | None = None,
) -> HealResult:
    """The whole loop for one spec: the preflight gate, audit, correct, relay, optionally verify.

    The gate runs first unless ``preflight`` is False; a failed gate raises PreflightFailed
    before anything is read for the diff or written. A spec without ``correction:`` is audited
    only. Once the audit is stored, an error of a later step (a tripped guard, an unreachable
    broker) does not raise: it is the result's ``error`` (and exit code), so the audit and what
    was done are still reported.
    """
    gate_summary: dict[str, Any] | None = None
    if preflight:
        from .preflight import gate

        passed = gate(ctx, spec)
        gate_summary = {"id": passed.id, "success": passed.success, "seconds": round(passed.seconds, 3)}
    result = audit(ctx, spec, keys=keys, where=where, on_row=on_row, wait=wait, settle=settle)
    outcome = HealResult(result, preflight=gate_summary)
    if not result.exit_code or spec.correction is None:
        return outcome
    try:
        outcome.correction = correct(ctx, spec, dry_run=dry_run, force=force)
        if dry_run:
            return outcome
        outcome.relay = relay(ctx, spec_name=spec.name, once=True)
        if verify:
            outcome.verify = _verify(ctx, spec, timeout=timeout)
    except ReconcileError as e:
        outcome.error = e
    return outcome


_verify = verify
