"""The application layer: every use case of reconcile, once. The shells (the CLI, the Airflow
DAGs) parse their input, make a :class:`Context`, call one of these, and render the result.

    validate                 a spec against both databases, nothing audited
    audit                    one run: diff, recheck, record (whole pair, --keys or --where)
    plan_ranges / audit_range / merge_ranges / audit_fanout
                             the same audit fanned out over key ranges
    preflight / gate         Great Expectations suites on both sides before a diff
    correct                  confirmed findings -> corrective events in the outbox (guarded)
    relay                    outbox -> Kafka or the embedded log, marked sent when confirmed
    verify                   wait for the projector, re-check the corrected keys
    heal                     preflight -> audit -> correct -> relay (-> verify)
    health                   outbox backlog, projector lag, audit recency of every spec
    list_findings / acknowledge
    report                   a scheduled run's story and the alert it raises
    trace                    one entity's story along the spec's event path, and its cause
    Projector                the reference projector (``reconcile project``)

Imported by their module, not from here (so an audit never loads pandas):

    dashboard                read-only views behind ``reconcile serve``'s pages, and CSV exports
    metrics                  one snapshot of every spec for ``/metrics``
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audit import (
        STRATEGIES,
        audit,
        audit_fanout,
        audit_range,
        key_kinds,
        merge_ranges,
        outcome_from_dict,
        outcome_to_dict,
        plan_ranges,
        validate,
    )
    from .context import Context, env_connection_url
    from .findings import acknowledge, list_findings
    from .heal import (
        CorrectionResult,
        HealResult,
        RelayResult,
        VerifyResult,
        correct,
        heal,
        projector_lag,
        relay,
        verify,
    )
    from .health import HealthReport, SpecHealth, Thresholds, health
    from .preflight import gate, preflight
    from .project import Projector, ProjectorStats
    from .report import Report, Verdict, audit_verdict, lag_verdict, report, verify_verdict
    from .trace import TraceResult, trace

# Where each public name lives (see _Package below).
_HOME = {
    "STRATEGIES": "audit",
    "audit": "audit",
    "audit_fanout": "audit",
    "audit_range": "audit",
    "key_kinds": "audit",
    "merge_ranges": "audit",
    "outcome_from_dict": "audit",
    "outcome_to_dict": "audit",
    "plan_ranges": "audit",
    "validate": "audit",
    "Context": "context",
    "env_connection_url": "context",
    "acknowledge": "findings",
    "list_findings": "findings",
    "CorrectionResult": "heal",
    "HealResult": "heal",
    "RelayResult": "heal",
    "VerifyResult": "heal",
    "correct": "heal",
    "heal": "heal",
    "projector_lag": "heal",
    "relay": "heal",
    "verify": "heal",
    "HealthReport": "health",
    "SpecHealth": "health",
    "Thresholds": "health",
    "health": "health",
    "gate": "preflight",
    "preflight": "preflight",
    "Projector": "project",
    "ProjectorStats": "project",
    "Report": "report",
    "Verdict": "report",
    "audit_verdict": "report",
    "lag_verdict": "report",
    "report": "report",
    "verify_verdict": "report",
    "TraceResult": "trace",
    "trace": "trace",
}


class _Package(types.ModuleType):
    """This package, with its use cases imported from their modules on first use (PEP 562's
    idea, as a module class): a command loads only its own use case, so an audit does not
    import healing, health, reports or the projector."""

    def __getattr__(self, name: str) -> Any:
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{home}", __name__), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule binds it on its package; where a use case has its module's
        # name (audit, heal, health, preflight, report, trace) the use case keeps the name,
        # as it did when this package imported every use case eagerly.
        if name in _HOME and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_HOME))


sys.modules[__name__].__class__ = _Package


__all__ = [
    "Context",
    "env_connection_url",
    "STRATEGIES",
    "validate",
    "audit",
    "plan_ranges",
    "audit_range",
    "merge_ranges",
    "audit_fanout",
    "key_kinds",
    "outcome_to_dict",
    "outcome_from_dict",
    "preflight",
    "gate",
    "correct",
    "relay",
    "verify",
    "heal",
    "projector_lag",
    "CorrectionResult",
    "RelayResult",
    "VerifyResult",
    "HealResult",
    "health",
    "HealthReport",
    "SpecHealth",
    "Thresholds",
    "list_findings",
    "acknowledge",
    "report",
    "Report",
    "Verdict",
    "audit_verdict",
    "verify_verdict",
    "lag_verdict",
    "Projector",
    "ProjectorStats",
    "trace",
    "TraceResult",
]
