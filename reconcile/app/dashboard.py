"""Use cases behind the dashboard's pages and exports: read-only views of the audit store.

    overview(ctx, specs)              every spec's state at a glance (the page ``/``)
    spec_detail(ctx, name, spec)      drift over time, run history, open findings, the healing
                                      funnel, time to heal, the last preflight (``/specs/<name>``)
    finding_detail(ctx, name, key)    one entity's every episode: runs, corrective events, timeline
    findings_frame / findings_csv     findings as a flat table (``findings --format csv``, downloads)
    runs_frame / drift_series         runs as a time series, resampled per hour or day

pandas earns its place here (resampling, percentiles, CSV) and only here: nothing that audits
imports this module. Everything returned is plain values (``to_dict()`` for the JSON API).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from ..compare import jsonable
from ..errors import SpecError
from ..findings import Finding, FindingStatus, key_id
from ..spec import Spec
from ..store import CorrectionRecord, FindingRecord, PreflightRecord, RunRecord
from .context import Context
from .health import SpecHealth, Thresholds, health
from .metrics import KINDS

__all__ = [
    "STATES",
    "SpecStatus",
    "Overview",
    "RunRow",
    "FindingRow",
    "SpecDetail",
    "Episode",
    "FindingDetail",
    "overview",
    "spec_detail",
    "finding_detail",
    "spec_state",
    "key_text",
    "findings_frame",
    "findings_csv",
    "runs_frame",
    "drift_series",
    "heal_times",
]

# A spec's state, most urgent first: the first that applies names it, the rest are still shown.
STATES = ("preflight failed", "drift", "pipe unhealthy", "stale", "correcting", "healthy")
ESCALATED = "escalated by verify"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else jsonable(value)


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max((now - then).total_seconds(), 0.0)


def _whole(run: RunRecord) -> bool:
    """Whether a run covered the whole pair (no --keys, no --where): only those chart drift."""
    return run.scope.get("keys") is None and run.scope.get("where") is None


def key_text(key: dict[str, Any]) -> str:
    """An entity key as ``--keys`` takes it: ``W1:A-1`` (parts in key order), or JSON when a part
    holds a ``:`` and the short form would be ambiguous."""
    parts = [str(v) for v in key.values()]
    if len(parts) > 1 and any(":" in p for p in parts[:-1]):
        return json.dumps(jsonable(key), separators=(",", ":"))
    return ":".join(parts)


# -- one spec's state ----------------------------------------------------------------------
@dataclass
class SpecStatus:
    """One spec at a glance: its state, open findings by kind, its last audit and its pipe."""

    name: str
    state: str
    flags: list[str]
    reasons: list[str]
    description: str | None = None
    open_by_kind: dict[str, int] = field(default_factory=dict)  # open (not acknowledged) findings
    correcting: int = 0
    acknowledged: int = 0
    last_run: RunRow | None = None
    outbox_unsent: int = 0
    outbox_oldest_age_s: float | None = None
    outbox_dead: int = 0  # corrective events parked for good (the broker refused them)
    lag: int | None = None
    consumer_group: str | None = None
    recent_drift: list[tuple[datetime, int]] = field(default_factory=list)  # the largest per step
    recent_step: str = "6h"
    spec_file: bool = True
    error: str | None = None  # the spec file did not load

    @property
    def open(self) -> int:
        return sum(self.open_by_kind.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["open"] = self.open
        d["last_run"] = self.last_run.to_dict() if self.last_run else None
        d["recent_drift"] = [{"at": _iso(t), "drift": n} for t, n in self.recent_drift]
        return d


def spec_state(
    *,
    open_findings: int,
    correcting: int,
    latest: RunRecord | None,
    preflight: PreflightRecord | None,
    pipe: SpecHealth | None,
) -> tuple[str, list[str], list[str]]:
    """(state, every flag that applies, one reason per flag), from plain numbers.

    ``preflight failed`` when the newest gate failed and no run came after it; ``pipe unhealthy``
    when the outbox or the projector crossed a threshold (or could not be read); ``stale`` when a
    scheduled spec was not audited in time (or never).
    """
    flags: dict[str, str] = {}
    if preflight is not None and not preflight.success:
        if latest is None or preflight.checked_at >= latest.started_at:
            failed = preflight.results.get("failures") or []
            flags["preflight failed"] = "preflight: " + (str(failed[0]) if failed else "failed")
    if open_findings:
        flags["drift"] = f"{open_findings} open finding(s)"
    if pipe is not None:
        piped = [p for p in pipe.problems if not p.startswith(("audit:", "preflight:"))] + pipe.unknown
        if piped:
            flags["pipe unhealthy"] = "; ".join(piped)
        stale = [p for p in pipe.problems if p.startswith("audit:")] + [
            n for n in pipe.notes if n == "never audited"
        ]
        if stale:
            flags["stale"] = "; ".join(stale)
    if correcting:
        flags["correcting"] = f"{correcting} finding(s) being corrected"
    order = [s for s in STATES if s in flags]
    return (order[0] if order else "healthy"), order, [flags[s] for s in order]


# -- runs as rows and as a time series -----------------------------------------------------
@dataclass
class RunRow:
    """One run as the history table shows it."""

    id: str
    started_at: datetime
    finished_at: datetime
    seconds: float
    status: str
    exit_code: int
    strategy: str
    started_by: str
    scope: str  # "whole pair", "3 keys", "where ..."
    compared: int
    pending: int
    kinds: dict[str, int]
    unconfirmed: int
    cut: dict[str, Any] | None = None  # with a spec's path: the positions the run was taken at

    @property
    def drift(self) -> int:
        return sum(self.kinds.values())

    @classmethod
    def of(cls, r: RunRecord) -> RunRow:
        s, scope = r.summary, r.scope
        if scope.get("keys") is not None:
            what = f"{scope['keys']} key(s)"
        elif scope.get("where") is not None:
            what = f"where {scope['where']}"
        elif scope.get("ranges"):
            what = f"whole pair, {scope['ranges']} ranges"
        else:
            what = "whole pair"
        return cls(
            id=r.id,
            started_at=r.started_at,
            finished_at=r.finished_at,
            seconds=max((r.finished_at - r.started_at).total_seconds(), 0.0),
            status=r.status,
            exit_code=1 if r.status == "drift" else 0,
            strategy=r.strategy,
            started_by=str(scope.get("started_by") or "unknown"),
            scope=what,
            compared=int(s.get("compared", 0)),
            pending=int(s.get("pending", 0)),
            kinds={k: int(s.get(k, 0)) for k in KINDS},
            unconfirmed=int(s.get("unconfirmed", 0)),
            cut=r.cut,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["started_at"], d["finished_at"] = _iso(self.started_at), _iso(self.finished_at)
        d["seconds"] = round(self.seconds, 3)
        d["drift"] = self.drift
        return d


RUN_COLUMNS = ["started_at", *KINDS, "drift", "pending", "compared", "seconds"]


def runs_frame(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """Runs as a frame indexed by start time (UTC), oldest first: findings by kind, drift,
    pending, compared, seconds, and the run's id, status, strategy, who started it."""
    rows = [RunRow.of(r) for r in runs]
    df = pd.DataFrame(
        [
            {
                "started_at": r.started_at,
                **r.kinds,
                "drift": r.drift,
                "pending": r.pending,
                "compared": r.compared,
                "seconds": r.seconds,
                "run_id": r.id,
                "status": r.status,
                "strategy": r.strategy,
                "started_by": r.started_by,
                "scope": r.scope,
            }
            for r in rows
        ],
        columns=[*RUN_COLUMNS, "run_id", "status", "strategy", "started_by", "scope"],
    )
    df["started_at"] = pd.to_datetime(df["started_at"], utc=True)
    return df.set_index("started_at").sort_index()


# Resolutions a chart steps through until it has few enough points.
_STEPS = (("run", None), ("hour", "1h"), ("6 hours", "6h"), ("day", "1D"), ("week", "7D"))


def drift_series(runs: Sequence[RunRecord], *, max_points: int = 120) -> tuple[str, list[dict[str, Any]]]:
    """Drift over time from whole-pair runs: findings by kind, pending and compared per point.

    One point per run while they fit in ``max_points``; else the runs are resampled per hour,
    6 hours, day or week (the worst — largest — value of each bucket; buckets without a run are
    left out). Returns (the resolution, the points oldest first).
    """
    df = runs_frame([r for r in runs if _whole(r)])[RUN_COLUMNS[1:]]
    resolution = "run"
    if len(df) > max_points:
        whole = df
        for step, freq in _STEPS[1:]:
            resolution, df = step, whole.resample(freq).max().dropna(how="all")
            if len(df) <= max_points:
                break
    points = [
        {"at": t.to_pydatetime(), **{c: int(v) if c != "seconds" else float(v) for c, v in row.items()}}
        for t, row in df.iterrows()
    ]
    return resolution, points


def recent_step(days: int) -> str:
    """The step of the overview's small drift chart: about 24 to 60 bars whatever the window."""
    return "1h" if days <= 2 else "6h" if days <= 14 else "1D"


def recent_drift(
    runs: Sequence[RunRecord], start: datetime, end: datetime, step: str
) -> list[tuple[datetime, int]]:
    """The largest drift of each step (``1h``, ``6h``, ``1D``) in [start, end], 0 for steps
    without a whole-pair run."""
    edges = pd.date_range(pd.Timestamp(start).floor(step), pd.Timestamp(end).floor(step), freq=step)
    df = runs_frame([r for r in runs if _whole(r)])
    drift = df["drift"].resample(step).max() if len(df) else pd.Series(dtype="float64")
    drift = drift.reindex(edges).fillna(0)
    return [(t.to_pydatetime(), int(v)) for t, v in drift.items()]


# -- the overview --------------------------------------------------------------------------
@dataclass
class Overview:
    """Every spec's state, worst first, and the totals across them."""

    checked_at: datetime
    specs: list[SpecStatus]
    days: int

    def totals(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for s in self.specs:
            out[s.state] = out.get(s.state, 0) + 1
        out["open"] = sum(s.open for s in self.specs)
        out["correcting_findings"] = sum(s.correcting for s in self.specs)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked_at": _iso(self.checked_at),
            "days": self.days,
            "totals": self.totals(),
            "specs": [s.to_dict() for s in self.specs],
        }


def _statuses(
    ctx: Context,
    names: Sequence[str],
    specs: dict[str, Spec],
    *,
    days: int,
    now: datetime,
    thresholds: Thresholds,
) -> list[SpecStatus]:
    store = ctx.store
    report = health(ctx, [specs[n] for n in names if n in specs], thresholds, now=now)
    pipes = {h.spec: h for h in report.specs}
    counts = store.finding_counts()
    latest = store.latest_runs()
    backlog = store.outbox_backlogs()
    since = now - timedelta(days=days)
    out: list[SpecStatus] = []
    for name in names:
        spec = specs.get(name)
        by = {(k, st): n for (sp, k, st), n in counts.items() if sp == name}
        open_by_kind = {k: by.get((k, "open"), 0) for k in KINDS}
        correcting = sum(by.get((k, "correcting"), 0) for k in KINDS)
        history = store.preflight_history(name, 1)
        pipe = pipes.get(name)
        state, flags, reasons = spec_state(
            open_findings=sum(open_by_kind.values()),
            correcting=correcting,
            latest=latest.get(name),
            preflight=history[0] if history else None,
            pipe=pipe,
        )
        unsent, oldest = backlog.get(name, (0, None))
        c = spec.correction if spec else None
        out.append(
            SpecStatus(
                name=name,
                state=state,
                flags=flags,
                reasons=reasons,
                description=spec.description if spec else None,
                open_by_kind=open_by_kind,
                correcting=correcting,
                acknowledged=sum(by.get((k, "acknowledged"), 0) for k in KINDS),
                last_run=RunRow.of(latest[name]) if name in latest else None,
                outbox_unsent=unsent,
                outbox_oldest_age_s=_age(now, oldest),
                outbox_dead=pipe.outbox_dead if pipe else 0,
                lag=pipe.lag if pipe else None,
                consumer_group=c.consumer_group if c else None,
                recent_drift=recent_drift(store.runs(name, since=since), since, now, recent_step(days)),
                recent_step=recent_step(days),
                spec_file=spec is not None,
            )
        )
    return out


def overview(
    ctx: Context,
    specs: Sequence[Spec],
    invalid: Sequence[tuple[str, str]] = (),
    *,
    days: int = 7,
    now: datetime | None = None,
    thresholds: Thresholds = Thresholds(),
) -> Overview:
    """Every spec — from the spec files and from the store — with its state, worst state first.

    ``invalid`` are (file, error) pairs of spec files that did not load; they are listed too
    (state ``stale``: they cannot be audited until fixed).
    """
    now = now or datetime.now(UTC)
    by_name = {s.name: s for s in specs}
    names = sorted(set(by_name) | set(ctx.store.spec_names()))
    rows = _statuses(ctx, names, by_name, days=days, now=now, thresholds=thresholds)
    for path, error in invalid:
        rows.append(SpecStatus(name=path, state="stale", flags=["stale"], reasons=[error], error=error))
    rows.sort(key=lambda s: (STATES.index(s.state) if s.state in STATES else 0, s.name))
    return Overview(now, rows, days)


# -- one spec ------------------------------------------------------------------------------
@dataclass
class FindingRow:
    """One finding as the pages list it: both sides' values, what differs, how long it is open."""

    id: int
    key: dict[str, Any]
    key_text: str
    kind: str
    status: str
    columns: list[str]  # the differing columns (mismatch)
    values: list[tuple[str, Any, Any, bool]]  # (column, truth, projection, differs)
    copies: int
    times_seen: int
    first_seen: datetime | None
    last_seen: datetime
    resolved_at: datetime | None
    open_for_s: float | None
    corrections: int
    note: str | None
    cause: str | None = None  # with a spec's path: why it drifted
    evidence: list[dict[str, Any]] = field(default_factory=list)  # the events behind the cause

    @classmethod
    def of(cls, rec: FindingRecord, now: datetime) -> FindingRow:
        f = rec.finding
        cols = list(dict.fromkeys([*(f.truth or {}), *(f.projection or {})]))
        differs = set(f.columns) if f.columns else set(cols)
        values = [
            (
                c,
                (f.truth or {}).get(c) if f.truth is not None else None,
                (f.projection or {}).get(c) if f.projection is not None else None,
                c in differs,
            )
            for c in cols
        ]
        end = rec.resolved_at or now
        return cls(
            id=rec.id,
            key=f.key,
            key_text=key_text(f.key),
            kind=f.kind.value,
            status=f.status.value,
            columns=list(f.columns),
            values=values,
            copies=f.copies,
            times_seen=f.times_seen,
            first_seen=f.first_seen,
            last_seen=rec.last_seen,
            resolved_at=rec.resolved_at,
            open_for_s=_age(end, f.first_seen),
            corrections=rec.corrections,
            note=f.note,
            cause=f.cause,
            evidence=[dict(e) for e in f.evidence],
        )

    @property
    def has_truth(self) -> bool:
        return self.kind != "orphan"

    @property
    def has_projection(self) -> bool:
        return self.kind != "missing"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": jsonable(self.key),
            "key_text": self.key_text,
            "kind": self.kind,
            "status": self.status,
            "columns": self.columns,
            "truth": {c: jsonable(t) for c, t, _, _ in self.values} if self.has_truth else None,
            "projection": {c: jsonable(p) for c, _, p, _ in self.values} if self.has_projection else None,
            "copies": self.copies,
            "times_seen": self.times_seen,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "resolved_at": _iso(self.resolved_at),
            "open_for_seconds": None if self.open_for_s is None else round(self.open_for_s, 1),
            "corrections": self.corrections,
            "note": self.note,
            "cause": self.cause,
            "evidence": jsonable(self.evidence),
        }


def heal_times(records: Sequence[FindingRecord]) -> dict[str, Any]:
    """Time to heal (first seen -> resolved) of the resolved findings: count, p50, p90, p99, max."""
    secs = pd.Series(
        [
            (r.resolved_at - r.finding.first_seen).total_seconds()
            for r in records
            if r.resolved_at is not None and r.finding.first_seen is not None
        ],
        dtype="float64",
    ).clip(lower=0)
    if secs.empty:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    q = secs.quantile([0.5, 0.9, 0.99])
    return {
        "count": int(secs.size),
        "p50": float(q.loc[0.5]),
        "p90": float(q.loc[0.9]),
        "p99": float(q.loc[0.99]),
        "max": float(secs.max()),
    }


def _funnel(records: Sequence[FindingRecord]) -> dict[str, int]:
    """found -> correcting -> resolved / escalated, over the findings of the window."""
    status = [r.finding.status for r in records]
    corrected = [r.corrections > 0 for r in records]
    return {
        "found": len(records),
        "corrected": sum(corrected),
        "resolved": sum(s is FindingStatus.RESOLVED for s in status),
        "healed_by_correction": sum(
            c and s is FindingStatus.RESOLVED for c, s in zip(corrected, status, strict=True)
        ),
        "escalated": sum(1 for r in records if (r.finding.note or "").startswith(ESCALATED)),
        "open": sum(s is FindingStatus.OPEN for s in status),
        "correcting": sum(s is FindingStatus.CORRECTING for s in status),
        "acknowledged": sum(s is FindingStatus.ACKNOWLEDGED for s in status),
    }


@dataclass
class SpecDetail:
    """Everything the page of one spec shows."""

    status: SpecStatus
    checked_at: datetime
    days: int
    spec: dict[str, Any] | None  # what the spec file says (URLs masked); None without a file
    runs: list[RunRow]
    resolution: str
    series: list[dict[str, Any]]
    findings: list[FindingRow]  # active findings, oldest first
    findings_total: int
    funnel: dict[str, int]
    time_to_heal: dict[str, Any]
    preflight: dict[str, Any] | None
    cut: dict[str, Any] | None = None  # the newest run's cut (specs with a path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.status.name,
            "checked_at": _iso(self.checked_at),
            "days": self.days,
            "status": self.status.to_dict(),
            "spec": self.spec,
            "runs": [r.to_dict() for r in self.runs],
            "drift": {
                "resolution": self.resolution,
                "points": [{**p, "at": _iso(p["at"])} for p in self.series],
            },
            "findings": [f.to_dict() for f in self.findings],
            "findings_total": self.findings_total,
            "funnel": self.funnel,
            "time_to_heal": self.time_to_heal,
            "preflight": jsonable(self.preflight),
            "cut": self.cut,
        }


def _describe(spec: Spec) -> dict[str, Any]:
    c = spec.correction
    return {
        "description": spec.description,
        "truth": spec.truth.display,
        "projection": spec.projection.display,
        "key": [k.truth if k.truth == k.projection else f"{k.truth}->{k.projection}" for k in spec.key],
        "columns": [
            n if spec.projection_name(n) == n else f"{n}->{spec.projection_name(n)}" for n in spec.columns
        ],
        "schedule": spec.schedule,
        "grace_seconds": spec.freshness.grace.total_seconds(),
        "confirm_runs": spec.freshness.confirm_runs,
        "correction": None
        if c is None
        else {"topic": c.topic, "transport": c.transport, "consumer_group": c.consumer_group},
    }


def _preflight(record: PreflightRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    sides = record.results.get("sides") or {}
    return {
        "id": record.id,
        "checked_at": record.checked_at,
        "success": record.success,
        "failures": list(record.results.get("failures") or []),
        "evaluated": sum(int(s.get("evaluated", 0)) for s in sides.values() if isinstance(s, dict)),
        "docs": record.docs,
    }


def spec_detail(
    ctx: Context,
    name: str,
    spec: Spec | None = None,
    *,
    days: int = 7,
    now: datetime | None = None,
    thresholds: Thresholds = Thresholds(),
    runs_limit: int = 500,
    findings_limit: int = 500,
) -> SpecDetail | None:
    """The page of one spec over the last ``days``; None when neither a spec file nor the store
    knows ``name``. Drift over time counts whole-pair runs only (a --keys run or verify's
    re-check sees a slice); the run history lists every run."""
    store = ctx.store
    now = now or datetime.now(UTC)
    if spec is None and name not in store.spec_names():
        return None
    (status,) = _statuses(
        ctx, [name], {name: spec} if spec else {}, days=days, now=now, thresholds=thresholds
    )
    since = now - timedelta(days=days)
    runs = store.runs(name, since=since)
    resolution, series = drift_series(runs)
    records = store.finding_records(name, since=since)
    active = [r for r in records if r.finding.status.value in ("open", "correcting", "acknowledged")]
    active.sort(key=lambda r: (r.finding.first_seen or now, r.id))
    history = store.preflight_history(name, 1)
    return SpecDetail(
        status=status,
        checked_at=now,
        days=days,
        spec=_describe(spec) if spec else None,
        runs=[RunRow.of(r) for r in runs[:runs_limit]],
        resolution=resolution,
        series=series,
        findings=[FindingRow.of(r, now) for r in active[:findings_limit]],
        findings_total=len(active),
        funnel=_funnel(records),
        time_to_heal=heal_times(records),
        preflight=_preflight(history[0] if history else None),
        cut=next((r.cut for r in runs if r.cut), None),
    )


# -- one finding ---------------------------------------------------------------------------
@dataclass
class Episode:
    """One stretch of an entity's drift, open to resolved: the runs around it, its corrective
    events and a timeline."""

    finding: FindingRow
    first_run_id: str
    last_run_id: str
    runs: list[tuple[RunRow, str]]  # (run, what it did to this finding)
    corrections: list[dict[str, Any]]
    timeline: list[tuple[datetime, str]]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.finding.to_dict(),
            "first_run_id": self.first_run_id,
            "last_run_id": self.last_run_id,
            "runs": [{**r.to_dict(), "saw": saw} for r, saw in self.runs],
            "corrections": jsonable(self.corrections),
            "timeline": [{"at": _iso(t), "what": w} for t, w in self.timeline],
        }


@dataclass
class FindingDetail:
    """Every episode of one entity's drift, newest first."""

    spec: str
    key: dict[str, Any]
    key_text: str
    checked_at: datetime
    episodes: list[Episode]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "key": jsonable(self.key),
            "key_text": self.key_text,
            "checked_at": _iso(self.checked_at),
            "episodes": [e.to_dict() for e in self.episodes],
        }


def _variants(value: str) -> list[Any]:
    """A key part as typed in a URL, in each form the store may hold it (integer keys are ints)."""
    out: list[Any] = [value]
    try:
        out.append(int(value))
    except ValueError:
        pass
    return out


def _candidate_ids(key: str, names: Sequence[str]) -> list[str]:
    """Key ids an entity key typed as ``W1:A-1`` (or JSON) may be stored under."""
    if key.lstrip().startswith("{"):
        try:
            doc = json.loads(key)
        except json.JSONDecodeError:
            return []
        if not isinstance(doc, dict):
            return []
        parts = (
            [str(doc[n]) if n in doc else None for n in names] if names else [str(v) for v in doc.values()]
        )
        names = names or list(doc)
        if any(p is None for p in parts):
            return [key_id(doc)]
        return [key_id(doc), *_candidate_ids(":".join(str(p) for p in parts), names)]
    if not names:
        return []
    parts = key.split(":", len(names) - 1) if len(names) > 1 else [key]
    if len(parts) != len(names):
        return []
    return [
        key_id(dict(zip(names, combo, strict=True))) for combo in itertools.product(*map(_variants, parts))
    ]


def _key_names(ctx: Context, name: str, spec: Spec | None) -> list[str]:
    if spec is not None:
        return spec.key_truth
    any_one = ctx.store.finding_records(name, limit=1)
    return list(any_one[0].finding.key) if any_one else []


def _corrections(rows: Sequence[CorrectionRecord], rec: FindingRecord) -> list[dict[str, Any]]:
    """Each corrective event of an episode: written, relayed, and verified (the episode was
    resolved after the event was relayed) or escalated (verify found the projection still off)."""
    out = []
    escalated = (rec.finding.note or "").startswith(ESCALATED)
    for c in rows:
        e = c.event
        healed = rec.resolved_at is not None and e.sent_at is not None and rec.resolved_at >= e.sent_at
        out.append(
            {
                "event_id": e.event_id,
                "topic": e.topic,
                "transport": e.transport,
                "run_id": e.run_id,
                "created_at": e.created_at,
                "sent_at": e.sent_at,
                "attempts": c.attempts,
                "last_error": c.last_error,
                "tombstone": e.payload is None,
                "verified_at": rec.resolved_at if healed else None,
                "verified_by": rec.last_run_id if healed else None,
                "escalated": escalated and not healed,
            }
        )
    return out


def _episode(
    ctx: Context, name: str, rec: FindingRecord, rows: Sequence[CorrectionRecord], now: datetime
) -> Episode:
    f = rec.finding
    first = f.first_seen or rec.last_seen
    end = rec.resolved_at or now
    # The first run finished at first_seen; a run is listed when it started between it and the end.
    nearby = ctx.store.runs(name, since=first - timedelta(days=1), until=end)
    start_at = next((r.started_at for r in nearby if r.id == rec.first_run_id), first)
    runs: list[tuple[RunRow, str]] = []
    for r in sorted((r for r in nearby if r.started_at >= start_at), key=lambda r: r.started_at):
        if r.id == rec.first_run_id:
            saw = "first seen"
        elif rec.resolved_at is not None and r.id == rec.last_run_id:
            saw = "resolved it"
        elif r.finished_at > rec.last_seen:
            continue  # after the last sighting and not the resolving run
        elif not _whole(r):
            saw = "scoped run"
        else:
            saw = "seen" if r.finished_at < rec.last_seen else "last seen"
        runs.append((RunRow.of(r), saw))
    events = _corrections(rows, rec)
    timeline: list[tuple[datetime, str]] = [(first, f"first seen: {f.kind.value}")]
    for c, e in zip(rows, events, strict=True):
        timeline.append((c.event.created_at, f"corrective event {e['event_id'][:12]} written to the outbox"))
        if c.event.sent_at:
            timeline.append(
                (c.event.sent_at, f"corrective event relayed to {c.event.topic} ({c.event.transport})")
            )
    if f.note and f.note.startswith(ESCALATED):
        timeline.append((rec.last_seen, f.note))
    if f.status is FindingStatus.ACKNOWLEDGED:
        timeline.append((rec.last_seen, f.note or "acknowledged"))
    if rec.resolved_at is not None:
        timeline.append((rec.resolved_at, f"resolved by run {rec.last_run_id}"))
    timeline.sort(key=lambda t: t[0])
    return Episode(FindingRow.of(rec, now), rec.first_run_id, rec.last_run_id, runs, events, timeline)


def finding_detail(
    ctx: Context, name: str, key: str, spec: Spec | None = None, *, now: datetime | None = None
) -> FindingDetail | None:
    """Every episode of the entity ``key`` (``W1:A-1``, a single value, or JSON by truth names)
    of spec ``name``; None when the store holds no finding for it."""
    now = now or datetime.now(UTC)
    names = _key_names(ctx, name, spec)
    records = ctx.store.finding_records(name, key_ids=_candidate_ids(key, names))
    if not records:
        return None
    rows = ctx.store.corrections(name, [r.id for r in records])
    episodes = [_episode(ctx, name, r, [c for c in rows if c.finding_id == r.id], now) for r in records]
    entity = records[0].finding.key
    return FindingDetail(name, entity, key_text(entity), now, episodes)


# -- exports -------------------------------------------------------------------------------
def findings_frame(spec_name: str, findings: Sequence[Finding]) -> pd.DataFrame:
    """Findings as one flat table: key columns, kind, status, the differing columns and both
    sides' values as ``truth.<column>`` / ``projection.<column>``."""
    rows = []
    for f in findings:
        row: dict[str, Any] = {"spec": spec_name, "key": key_text(f.key)}
        row.update({f"key.{k}": jsonable(v) for k, v in f.key.items()})
        row.update(
            kind=f.kind.value,
            status=f.status.value,
            columns=";".join(f.columns),
            copies=f.copies,
            times_seen=f.times_seen,
            first_seen=_iso(f.first_seen),
            note=f.note,
        )
        row.update({f"truth.{k}": jsonable(v) for k, v in (f.truth or {}).items()})
        row.update({f"projection.{k}": jsonable(v) for k, v in (f.projection or {}).items()})
        rows.append(row)
    head = ["spec", "key", "kind", "status", "columns", "copies", "times_seen", "first_seen", "note"]
    df = pd.DataFrame(rows, dtype=object)  # as stored: no int column turned float by a missing side
    if df.empty:
        return pd.DataFrame(columns=head)
    keys = [c for c in df.columns if c.startswith("key.")]
    sides = sorted(c for c in df.columns if c.startswith(("truth.", "projection.")))
    if any(f.cause for f in findings):  # specs with a path: why each entity drifted
        df["cause"] = [f.cause for f in findings]
        head.append("cause")
    return df[["spec", "key", *keys, *head[2:], *sides]]


def findings_csv(spec_name: str, findings: Sequence[Finding]) -> str:
    """:func:`findings_frame` as CSV text (a header row even when there are no findings)."""
    return str(findings_frame(spec_name, findings).to_csv(index=False, lineterminator="\n"))


def check_days(days: int) -> int:
    """A dashboard window in days, validated (1 to 366)."""
    if not 1 <= days <= 366:
        raise SpecError(f"days: {days} is not between 1 and 366")
    return days
