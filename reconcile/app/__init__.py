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
