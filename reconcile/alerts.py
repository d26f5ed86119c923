"""Alert messages: what a person is told about confirmed drift, a tripped guard, a failed
preflight or an unhealthy pipe. Plain values, no I/O: the Airflow notifiers (``dags/``) send
them by mail or to a Slack-compatible webhook.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Alert",
    "drift_alert",
    "guard_alert",
    "preflight_alert",
    "health_alert",
    "verify_alert",
    "resolved_alert",
]


@dataclass(frozen=True)
class Alert:
    """One notification: a title, a few lines, the counts, and some findings as examples."""

    event: str  # drift | guard | preflight | health | verify | resolved
    spec: str
    title: str
    lines: tuple[str, ...] = ()
    counts: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[Mapping[str, Any], ...] = ()

    def text(self) -> str:
        """Plain text: title, lines, counts, findings (one per line)."""
        out = [self.title, *self.lines]
        if self.counts:
            out.append(", ".join(f"{k}={v}" for k, v in self.counts.items()))
        out += [_finding_line(f) for f in self.findings]
        return "\n".join(out)

    def html(self) -> str:
        body = "".join(f"<p>{html.escape(line)}</p>" for line in self.lines)
        if self.counts:
            body += "<p>" + html.escape(", ".join(f"{k}={v}" for k, v in self.counts.items())) + "</p>"
        if self.findings:
            items = "".join(f"<li><code>{html.escape(_finding_line(f))}</code></li>" for f in self.findings)
            body += f"<ul>{items}</ul>"
        return f"<h3>{html.escape(self.title)}</h3>{body}"

    def slack(self) -> dict[str, Any]:
        """A Slack incoming-webhook body (``text`` for any Slack-compatible receiver, plus blocks)."""
        detail = "\n".join([*self.lines, *(f"• `{_finding_line(f)}`" for f in self.findings)])
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": self.title}}
        ]
        if detail:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": detail}})
        if self.counts:
            blocks.append(
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": ", ".join(f"{k}={v}" for k, v in self.counts.items())}
                    ],
                }
            )
        return {
            "text": self.text(),
            "blocks": blocks,
            "reconcile": {"event": self.event, "spec": self.spec, "counts": dict(self.counts)},
        }


def _finding_line(f: Mapping[str, Any]) -> str:
    key = ",".join(f"{k}={v}" for k, v in (f.get("key") or {}).items())
    cols = f.get("columns") or []
    what = f"{f.get('kind')} {key}"
    if cols:
        t, p = f.get("truth") or {}, f.get("projection") or {}
        what += " " + "; ".join(f"{c}: truth={t.get(c)!r} projection={p.get(c)!r}" for c in cols)
    if f.get("cause"):
        what += f" — cause: {f['cause']}"
        evidence = f.get("evidence") or []
        if evidence:
            e = evidence[0]
            at = f" at partition {e['partition']} offset {e['offset']}" if "partition" in e else ""
            what += f" (event {e.get('event_id')} {e.get('stage')}{at})"
    return what


_KINDS = ("missing", "orphan", "mismatch", "duplicate")


def drift_alert(spec: str, run: Mapping[str, Any], limit: int = 5) -> Alert:
    """From a run's ``to_dict()``: confirmed drift with counts and the first ``limit`` findings."""
    summary = run.get("summary", {})
    counts = {k: summary.get(k, 0) for k in _KINDS if summary.get(k)}
    total = sum(counts.values())
    return Alert(
        "drift",
        spec,
        f"reconcile {spec}: {total} drifted entit{'y' if total == 1 else 'ies'} confirmed",
        (f"run {run.get('run_id')} compared {summary.get('compared', 0)} entities", *_cause_lines(run)),
        counts,
        tuple(run.get("findings", [])[:limit]),
    )


def _cause_lines(run: Mapping[str, Any]) -> tuple[str, ...]:
    """With a spec's path: the findings per cause (why they drifted)."""
    causes = {c: n for c, n in (run.get("causes") or {}).items() if n}
    if not causes:
        return ()
    return ("causes: " + ", ".join(f"{c} {n}" for c, n in causes.items()),)


def guard_alert(spec: str, message: str, run: Mapping[str, Any] | None = None, limit: int = 5) -> Alert:
    """The blast-radius guard refused to auto-correct: a person has to look."""
    base = drift_alert(spec, run, limit) if run else None
    return Alert(
        "guard",
        spec,
        f"reconcile {spec}: guard tripped, corrections NOT sent",
        (message, "Inspect the findings; correct with force=True once the cause is understood."),
        base.counts if base else {},
        base.findings if base else (),
    )


def preflight_alert(spec: str, message: str) -> Alert:
    return Alert(
        "preflight",
        spec,
        f"reconcile {spec}: preflight failed, audit stopped",
        (message, "No findings were recorded and no corrections were sent."),
    )


def health_alert(spec: str, problems: Sequence[str], counts: Mapping[str, Any] | None = None) -> Alert:
    return Alert("health", spec, f"reconcile {spec}: unhealthy", tuple(problems), dict(counts or {}))


def verify_alert(spec: str, message: str) -> Alert:
    """verify cannot tell: the projector has not consumed the corrections (lag is not drift)."""
    return Alert(
        "verify",
        spec,
        f"reconcile {spec}: cannot verify, the projector lags",
        (
            message,
            "Check that the projector is running; the corrections stay `correcting` until it catches up.",
        ),
    )


def resolved_alert(spec: str, run: Mapping[str, Any], line: str) -> Alert:
    """A healed incident: the drift was corrected and verified (sent only when `on:` asks for it)."""
    base = drift_alert(spec, run, 0)
    return Alert("resolved", spec, f"reconcile {spec}: drift healed and verified", (line,), base.counts)
