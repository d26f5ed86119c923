"""reconcile: a consistency auditor for event-driven systems.

Compares source-of-truth tables with projections built from events, reports silent drift
(never entities still in flight) and heals it with corrective events sent through an outbox.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .causes import Cause
    from .spec import Spec, load_spec

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Loaded on first use: the spec's models (pydantic) and the event path's causes, so that a
    # command can set itself up before they load (see reconcile.cli) and a plain audit never
    # imports the causes.
    if name == "Cause":
        from .causes import Cause

        return Cause
    if name in ("Spec", "load_spec"):
        from . import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
