"""Use case: the verdict of one scheduled run, and the alert it raises. Plain values in and out.

A run's colour is its verdict: green when no drift remains (none found, or healed and
verified); failed when drift remains, when the guard refused, or when the pipe cannot be
judged. The step that decides fails, with a one-line reason, and says why in its alert:

    audit    an audit-only spec (no ``correction:``) with confirmed drift   -> "drift"
    correct  the blast-radius guard refused (never on a dry run)            -> "guard"
    verify   the projector still lags: cannot tell                          -> "verify"
    verify   corrections consumed, yet the projection still differs         -> "drift"
    report   drift healed and verified                                      -> "resolved" (only when asked)

The Airflow glue sends the alert through its notifiers and fails the task on ``failure``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..alerts import Alert, drift_alert, resolved_alert, verify_alert
from ..spec import Spec

__all__ = ["Verdict", "Report", "audit_verdict", "verify_verdict", "lag_verdict", "report"]


@dataclass
class Verdict:
    """What a step decided: the alert to send (if any) and why the run fails (if it does)."""

    alert: Alert | None = None
    failure: str | None = None


def audit_verdict(spec: Spec, run: Mapping[str, Any]) -> Verdict:
    """An audit-only spec with confirmed drift fails at the audit: nothing will heal it."""
    if spec.correction is not None or not _drifted(run):
        return Verdict()
    total = _total(run)
    return Verdict(
        drift_alert(spec.name, run, spec.alerts.findings),
        f"audit: {total:,} drifted entit{'y' if total == 1 else 'ies'} confirmed; spec {spec.name} "
        "has no correction: section (audit only), so the drift remains",
    )


def lag_verdict(spec: Spec, message: str) -> Verdict:
    """verify could not judge: the projector has not consumed the corrections."""
    return Verdict(verify_alert(spec.name, message), message)


def verify_verdict(spec: Spec, run: Mapping[str, Any], verified: Mapping[str, Any]) -> Verdict:
    """Corrections consumed, yet some entities still differ: escalate."""
    escalated = int(verified.get("escalated") or 0)
    if not escalated:
        return Verdict()
    base = drift_alert(spec.name, run, spec.alerts.findings)
    line = (
        f"verify: {escalated:,} of {verified.get('checked', 0):,} corrected entities still differ after the "
        "projector consumed the corrections: escalated (a projector bug, or a writer besides the projector)"
    )
    alert = Alert(base.event, base.spec, base.title, (*base.lines, line), base.counts, base.findings)
    return Verdict(alert, line)


@dataclass
class Report:
    """What a run did, and the notice it sends (if any)."""

    story: dict[str, Any]
    alert: Alert | None = None
    lines: list[str] = field(default_factory=list)


def report(
    spec: Spec,
    run: Mapping[str, Any],
    corrected: Mapping[str, Any],
    relayed: Mapping[str, Any],
    verified: Mapping[str, Any],
) -> Report:
    """Tell the story of a run that did not fail: clean, healed and verified, or a dry run."""
    out = Report(
        {"run": dict(run), "correct": dict(corrected), "relay": dict(relayed), "verify": dict(verified)}
    )
    if not _drifted(run):
        out.lines.append("no drift")
        return out
    if corrected.get("dry_run"):
        out.lines.append(
            f"dry run: {corrected.get('events', 0)} corrective event(s) would be written"
            + (f"; the guard would refuse: {corrected['guard']}" if corrected.get("guard") else "")
        )
        return out
    if verified.get("exit_code") == 0:
        line = (
            f"healed: {corrected.get('written', 0)} corrective event(s) written, "
            f"{relayed.get('sent', 0)} sent, {verified.get('resolved', 0)} verified"
        )
        out.lines.append(line)
        out.alert = resolved_alert(spec.name, run, line)
    return out


def _drifted(run: Mapping[str, Any]) -> bool:
    return bool(run.get("findings")) or bool(run.get("findings_truncated"))


def _total(run: Mapping[str, Any]) -> int:
    s = run.get("summary", {})
    return sum(int(s.get(k, 0)) for k in ("missing", "orphan", "mismatch", "duplicate")) - int(
        s.get("acknowledged", 0)
    )
