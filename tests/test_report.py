"""A run's verdict and the notice it sends: plain values, no I/O."""

from __future__ import annotations

from typing import Any

from reconcile.app import audit_verdict, lag_verdict, report, verify_verdict
from reconcile.spec import Spec, spec_from_dict

RUN: dict[str, Any] = {
    "run_id": "r1",
    "summary": {"compared": 10, "missing": 2, "orphan": 0, "mismatch": 1, "duplicate": 0, "acknowledged": 0},
    "findings": [{"kind": "missing", "key": {"sku": "A"}}, {"kind": "missing", "key": {"sku": "B"}}],
}


def spec(correction: bool = True, on: list[str] | None = None) -> Spec:
    doc: dict[str, Any] = {
        "name": "s",
        "truth": {"url": "sqlite://", "table": "t"},
        "projection": {"url": "sqlite://", "table": "p"},
        "key": ["sku"],
        "alerts": {"webhook": "http://127.0.0.1:9/hook", **({"on": on} if on else {})},
    }
    if correction:
        doc["correction"] = {"topic": "t", "event_type": "E", "consumer_group": "g"}
    return spec_from_dict(doc)


def test_audit_only_drift_fails_at_the_audit_with_a_drift_alert() -> None:
    v = audit_verdict(spec(correction=False), RUN)
    assert v.failure is not None and "3 drifted entities" in v.failure and "audit only" in v.failure
    assert v.alert is not None and v.alert.event == "drift"
    assert audit_verdict(spec(), RUN).failure is None  # with a correction, healing decides
    assert audit_verdict(spec(correction=False), {**RUN, "findings": []}).failure is None


def test_verify_escalation_and_lag_have_their_own_reasons() -> None:
    v = verify_verdict(spec(), RUN, {"escalated": 2, "checked": 3})
    assert v.failure is not None and "2 of 3" in v.failure and v.alert and v.alert.event == "drift"
    assert verify_verdict(spec(), RUN, {"escalated": 0, "checked": 3}).failure is None
    lag = lag_verdict(spec(), "cannot tell: projector group 'g' is still 4 message(s) behind")
    assert lag.alert is not None and lag.alert.event == "verify" and "'g'" in lag.alert.text()


def test_a_healed_run_sends_resolved_only_when_asked() -> None:
    healed = {"exit_code": 0, "resolved": 3, "checked": 3}
    quiet = spec()
    told = report(quiet, RUN, {"written": 3}, {"sent": 3}, healed)
    assert told.alert is not None and told.alert.event == "resolved"
    assert not quiet.alerts.wants("resolved")  # not in the default `on:`: nobody is paged
    asked = spec(on=["drift", "resolved"])
    assert asked.alerts.wants(report(asked, RUN, {"written": 3}, {"sent": 3}, healed).alert.event)  # type: ignore[union-attr]
    dry = report(quiet, RUN, {"dry_run": True, "events": 3, "guard": "too much"}, {}, {})
    assert dry.alert is None and "the guard would refuse" in dry.lines[0]
    assert report(quiet, {**RUN, "findings": []}, {}, {}, {}).lines == ["no drift"]
