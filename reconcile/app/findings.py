"""Use cases on stored findings: list them, and acknowledge one (a human's decision)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import StoreError
from ..findings import Finding
from ..keys import parse_keys
from ..lifecycle import ACTIVE
from ..spec import Spec
from .context import Context

__all__ = ["list_findings", "acknowledge"]


def list_findings(ctx: Context, spec: Spec, statuses: Sequence[str] | None = None) -> list[Finding]:
    """A spec's findings in ``statuses`` (default: the active ones), oldest first."""
    wanted = list(statuses) if statuses else [s.value for s in ACTIVE]
    return ctx.store.findings(spec.name, wanted, spec.freshness.confirm_runs)


def acknowledge(ctx: Context, spec: Spec, key: str, reason: str) -> Finding:
    """Mark the active finding of entity ``key`` (as ``--keys`` writes one) known: not to be corrected."""
    if not reason.strip():
        raise StoreError("--acknowledge needs --reason TEXT")
    (raw,) = (parse_keys([key] if not key.startswith("{") else key, spec) or [()])[:1]
    names = spec.key_truth
    for f in ctx.store.active_findings(spec.name):
        if all(str(f.key.get(n)) == str(v) for n, v in zip(names, raw, strict=True)):
            return ctx.store.acknowledge(spec.name, f.key_id, reason)
    raise StoreError(f"spec {spec.name}: no open finding with key {key}")
