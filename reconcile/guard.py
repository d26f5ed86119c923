"""The blast-radius guard: refuse to auto-correct more drift than a spec allows. Pure.

A broken read looks like a flood of drift; correcting it would overwrite a healthy projection.
So a correction is refused (``GuardTripped``, exit 1) when it would emit more events than
``correction.max_count``, or more than ``correction.max_ratio`` of the entities compared.
"""

from __future__ import annotations

from .errors import GuardTripped

__all__ = ["check_guard", "guard_ratio"]


def guard_ratio(corrections: int, compared: int) -> float:
    """Corrections per entity compared (infinite when nothing was compared but something drifted)."""
    if compared:
        return corrections / compared
    return float("inf") if corrections else 0.0


def check_guard(spec: str, corrections: int, compared: int, *, max_count: int, max_ratio: float) -> None:
    """Raise GuardTripped when ``corrections`` exceed ``max_count`` or ``max_ratio`` of ``compared``."""
    if corrections > max_count:
        raise GuardTripped(
            f"blast-radius guard: {corrections:,} corrections exceed correction.max_count {max_count:,} "
            f"for spec {spec}; nothing written (use --force if this drift is real)"
        )
    ratio = guard_ratio(corrections, compared)
    if ratio > max_ratio:
        shown = "all" if compared == 0 else f"{ratio:.4g}"
        raise GuardTripped(
            f"blast-radius guard: {corrections:,} corrections of {compared:,} compared (ratio {shown}) "
            f"exceed correction.max_ratio {max_ratio} for spec {spec}; nothing written "
            "(use --force if this drift is real)"
        )
