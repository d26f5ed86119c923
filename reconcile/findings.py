"""Findings and run results: plain values, no I/O.

A **finding** is one drifted entity; its ``kind`` says how it drifted and ``truth`` /
``projection`` hold both sides' compared values, so a user can always see why. A
:class:`RunResult` is what one audit returns and what ``--format json`` prints.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from .compare import json_text, jsonable

__all__ = ["FindingKind", "FindingStatus", "Finding", "Summary", "RunResult", "key_id"]


class FindingKind(StrEnum):
    """How an entity drifted."""

    MISSING = "missing"  # in truth, not in the projection
    ORPHAN = "orphan"  # in the projection, not in truth
    MISMATCH = "mismatch"  # in both, compared columns differ
    DUPLICATE = "duplicate"  # the key appears more than once in the projection


class FindingStatus(StrEnum):
    """Where a finding is in its lifecycle."""

    OPEN = "open"
    CORRECTING = "correcting"
    RESOLVED = "resolved"
    ACKNOWLEDGED = "acknowledged"


def key_id(key: dict[str, Any]) -> str:
    """The stable text identity of an entity key (JSON, truth column names, canonical values)."""
    return json_text(key, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Finding:
    """One drifted entity, with both sides' compared values."""

    kind: FindingKind
    key: dict[str, Any]
    columns: tuple[str, ...] = ()
    truth: dict[str, Any] | None = None
    projection: dict[str, Any] | None = None
    copies: int = 1  # rows with this key in the projection (> 1 for duplicates)
    status: FindingStatus = FindingStatus.OPEN
    confirmed: bool = True
    times_seen: int = 1
    first_seen: datetime | None = None
    note: str | None = None
    episode: int = 1  # 1 for an entity's first drift; drift that comes back after resolving: 2, 3...
    cause: str | None = None  # with a spec's `path`: why it drifted (reconcile.causes.Cause)
    evidence: tuple[dict[str, Any], ...] = ()  # the events behind the cause
    _key_id: str | None = field(default=None, repr=False, compare=False)  # computed once

    @property
    def key_id(self) -> str:
        if self._key_id is None:
            object.__setattr__(self, "_key_id", key_id(self.key))
        return self._key_id  # type: ignore[return-value]

    def with_lifecycle(self, **changes: Any) -> Finding:
        """A copy with ``changes`` (``dataclasses.replace`` without its per-call introspection:
        recording a run calls this twice per finding)."""
        unknown = changes.keys() - _FINDING_FIELDS
        if unknown:
            raise TypeError(f"Finding has no field(s) {sorted(unknown)}")
        new = object.__new__(Finding)
        for name in _FINDING_FIELDS:
            object.__setattr__(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind.value,
            "key": jsonable(self.key),
            "columns": list(self.columns),
            "truth": jsonable(self.truth),
            "projection": jsonable(self.projection),
            "status": self.status.value,
            "times_seen": self.times_seen,
        }
        if self.kind is FindingKind.DUPLICATE:
            out["copies"] = self.copies
        if self.first_seen is not None:
            out["first_seen"] = jsonable(self.first_seen)
        if self.note:
            out["note"] = self.note
        if self.episode > 1:
            out["episode"] = self.episode
        if self.cause is not None:
            out["cause"] = self.cause
            out["evidence"] = [dict(e) for e in self.evidence]
        return out


_FINDING_FIELDS = tuple(f.name for f in fields(Finding))


def _set_slots_init(cls: type) -> None:
    """Give a frozen dataclass with slots the same ``__init__``, writing each slot through its
    descriptor instead of ``object.__setattr__(self, name, value)`` (the frozen class's own
    ``__setattr__`` refuses): building a Finding takes about 40 % less time, and an audit or a
    recording builds one per drifted entity (millions)."""
    ns: dict[str, Any] = {}
    params, body = [], []
    for f in fields(cls):
        if f.default_factory is not MISSING or not f.init:  # pragma: no cover - none today
            raise TypeError(f"{cls.__name__}.{f.name}: only plain defaults are supported")
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body), ns)  # noqa: S102 - as dataclasses does
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]


_set_slots_init(Finding)


@dataclass(slots=True)
class Summary:
    """Counts of one run. Kind counts are confirmed findings; pending entities are never findings."""

    compared: int = 0
    pending: int = 0
    missing: int = 0
    orphan: int = 0
    mismatch: int = 0
    duplicate: int = 0
    unconfirmed: int = 0
    acknowledged: int = 0
    truth_rows: int = 0
    projection_rows: int = 0

    @property
    def drift(self) -> int:
        return self.missing + self.orphan + self.mismatch + self.duplicate

    def count(self, kind: FindingKind) -> None:
        setattr(self, kind.value, getattr(self, kind.value) + 1)

    def to_dict(self) -> dict[str, int]:
        return {
            "compared": self.compared,
            "pending": self.pending,
            "missing": self.missing,
            "orphan": self.orphan,
            "mismatch": self.mismatch,
            "duplicate": self.duplicate,
            "unconfirmed": self.unconfirmed,
            "acknowledged": self.acknowledged,
            "truth_rows": self.truth_rows,
            "projection_rows": self.projection_rows,
        }


@dataclass(slots=True)
class RunResult:
    """What one audit found. ``exit_code`` follows diff(1): 0 clean, 1 drift."""

    run_id: str
    spec: str
    started_at: datetime
    finished_at: datetime
    summary: Summary
    findings: list[Finding] = field(default_factory=list)  # confirmed findings
    unconfirmed: list[Finding] = field(default_factory=list)
    scope: dict[str, Any] = field(default_factory=dict)
    strategy: str = "stream"
    cut: dict[str, Any] | None = None  # with a spec's `path`: the positions the run was taken at
    causes: dict[str, int] | None = None  # with a spec's `path`: confirmed findings per cause

    @property
    def actionable(self) -> list[Finding]:
        """Confirmed findings a correction may act on (not acknowledged by a human)."""
        return [f for f in self.findings if f.status is not FindingStatus.ACKNOWLEDGED]

    @property
    def exit_code(self) -> int:
        return 1 if self.actionable or self.summary.drift > self.summary.acknowledged else 0

    @property
    def truncated(self) -> int:
        """Confirmed findings not held in ``findings`` (a huge run keeps the first ones; the
        store has them all)."""
        return max(0, self.summary.drift - len(self.findings))

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "spec": self.spec,
            "started_at": jsonable(self.started_at),
            "finished_at": jsonable(self.finished_at),
            "strategy": self.strategy,
            "scope": self.scope,
            "summary": self.summary.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "unconfirmed": [f.to_dict() for f in self.unconfirmed],
            **({"findings_truncated": self.truncated} if self.truncated else {}),
            **({"cut": self.cut} if self.cut is not None else {}),
            **({"causes": self.causes} if self.causes is not None else {}),
        }
