"""reconcile: a consistency auditor for event-driven systems.

Compares source-of-truth tables with projections built from events, reports silent drift
(never entities still in flight) and heals it with corrective events sent through an outbox.
"""

from .causes import Cause
from .errors import (
    GuardTripped,
    PreflightFailed,
    PublishError,
    ReconcileError,
    SchemaIncompatible,
    SourceError,
    SpecError,
    StoreError,
    VerifyError,
)
from .findings import Finding, FindingKind, FindingStatus, RunResult, Summary
from .spec import Spec, load_spec

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Spec",
    "load_spec",
    "Finding",
    "FindingKind",
    "FindingStatus",
    "RunResult",
    "Summary",
    "Cause",
    "ReconcileError",
    "SpecError",
    "SourceError",
    "StoreError",
    "PublishError",
    "VerifyError",
    "PreflightFailed",
    "SchemaIncompatible",
    "GuardTripped",
]
