"""Use case: the report of one scheduled run — its story in one value, and the alert it raises.

Plain values in, plain values out: the Airflow glue sends the alert through its notifiers and
fails the run when :attr:`Report.failure` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..alerts import Alert, drift_alert
from ..spec import Spec

__all__ = ["Report", "report"]


@dataclass
class Report:
    """What a run did, the alert to send (if any), and why the run failed (if it did)."""

    story: dict[str, Any]
    alert: Alert | None = None
    failure: str | None = None
    lines: list[str] = field(default_factory=list)


def report(
    spec: Spec,
    run: Mapping[str, Any],
    corrected: Mapping[str, Any],
    relayed: Mapping[str, Any],
    verified: Mapping[str, Any],
) -> Report:
    """Tell the run's story: the audit, what was corrected, relayed and verified.

    Confirmed drift raises a ``drift`` alert saying what was done about it; drift that verify
    could not heal fails the run.
    """
    out = Report(
        {"run": dict(run), "correct": dict(corrected), "relay": dict(relayed), "verify": dict(verified)}
    )
    if run["findings"]:
        base = drift_alert(spec.name, run, spec.alerts.findings)
        if corrected.get("written"):
            out.lines.append(
                f"{corrected['written']} corrective event(s) written, {relayed.get('sent', 0)} sent"
            )
        if "exit_code" in verified:
            out.lines.append(
                "verified: healed" if verified["exit_code"] == 0 else "verify: drift remains, escalate"
            )
        out.alert = Alert(
            base.event, base.spec, base.title, (*base.lines, *out.lines), base.counts, base.findings
        )
    if verified.get("exit_code", 0) not in (0, None):
        out.failure = f"verify: drift remains after correction ({dict(verified)})"
    return out
