"""One entity's story along the event path: ``reconcile trace SPEC KEY``.

Its truth row and projection row; every event touching it in the path's window with each stage
(written, published, on the topic at partition/offset, consumed or not, applied or not); and the
verdict: consistent, pending (an event still in flight), or drifted with its cause. Read-only:
nothing is recorded, no group is joined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..causes import EventTrace, Positions, Stage, stage, verdict
from ..compare import jsonable
from ..diff import diff_rows
from ..errors import SpecError
from ..findings import Finding, key_id
from ..keys import canonical_keys, parse_keys
from ..sources.path import collect, take_cut
from ..spec import Spec
from .audit import open_pair
from .context import Context
from .path import collector_for

__all__ = ["TraceResult", "trace"]


@dataclass
class TraceResult:
    """What :func:`trace` found for one entity."""

    spec: str
    key: dict[str, Any]
    truth: dict[str, Any] | None
    projection: dict[str, Any] | None
    state: str  # consistent | pending | drift
    kind: str | None = None  # the finding kind when drifted
    cause: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    cut: dict[str, Any] | None = None
    finding: dict[str, Any] | None = None  # the stored active finding of this entity, if any
    note: str | None = None

    @property
    def exit_code(self) -> int:
        """Like an audit: 0 consistent (or pending), 1 drifted."""
        return 1 if self.state == "drift" else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "key": jsonable(self.key),
            "truth": jsonable(self.truth),
            "projection": jsonable(self.projection),
            "verdict": {"state": self.state, "kind": self.kind, "cause": self.cause},
            "events": self.events,
            "cut": self.cut,
            "finding": self.finding,
            **({"note": self.note} if self.note else {}),
        }


def _row(src: Any, plan: Any, key: tuple[Any, ...], names: list[str]) -> dict[str, Any] | None:
    rows = list(src.stream(plan, keys=[key]))  # read to the end: the cursor closes with it
    for r in rows[:1]:
        out = dict(zip(plan.key, r.key, strict=True))
        out.update(dict(zip(plan.values, r.values, strict=True)))
        if plan.changed_at:
            out[plan.changed_at] = r.changed_at
        return out
    return None


def _event(ev: EventTrace, st: Stage, pos: Positions) -> dict[str, Any]:
    consumed = None
    if ev.on_topic:
        assert ev.partition is not None and ev.offset is not None
        consumed = ev.offset < pos.committed.get(ev.partition, -1)
    return {
        "event_id": ev.event_id,
        "stage": st.value,
        "written": (
            {"at": jsonable(ev.written_at), "source_row": jsonable(ev.source_row)} if ev.in_source else None
        ),
        "published": ev.published if ev.in_source else (True if ev.on_topic else None),
        "topic": (
            {"partition": ev.partition, "offset": ev.offset, "timestamp": jsonable(ev.timestamp)}
            if ev.on_topic
            else None
        ),
        "consumed": consumed,
        "applied": ev.applied if consumed else None,
    }


def trace(ctx: Context, spec: Spec, key: str) -> TraceResult:
    """Follow one entity (``KEY`` as ``--keys`` takes it: ``W1:A-1`` or a JSON object) along the path."""
    keys = parse_keys(key, spec) or []
    if len(keys) != 1:
        raise SpecError(f"KEY: {key!r} names {len(keys)} entities; trace follows exactly one")
    pair = open_pair(ctx, spec)
    try:
        (canon,) = canonical_keys(keys, pair.kinds)
        names = spec.key_truth
        tplan, pplan = pair.plans()
        truth = _row(pair.truth, tplan, canon, names)
        projection = _row(pair.projection, pplan, canon, names)
        outcome = diff_rows(
            pair.truth.stream(tplan, keys=[canon]),
            pair.projection.stream(pplan, keys=[canon]),
            pair.rules,
            names,
            now=datetime.now(UTC),
            grace=timedelta(0),
        )
        found: Finding | None = outcome.findings[0] if outcome.findings else None
        ent = dict(zip(names, canon, strict=True))
        result = TraceResult(
            spec.name,
            ent,
            truth,
            projection,
            "drift" if found else "consistent",
            kind=found.kind.value if found else None,
        )
        stored = [f for f in ctx.store.active_findings(spec.name) if f.key_id == key_id(ent)]
        if stored:
            result.finding = {**stored[0].to_dict(), "key_id": stored[0].key_id}
        if spec.path is None:
            result.note = "the spec has no `path:`; add one to see the events and the cause"
            return result
        path = spec.path
        reader = ctx.topic_reader(path.topic_side())
        try:
            cut = take_cut(path, reader, ctx.side_url(spec.truth))
            cut.projection_committed = dict(cut.committed)
            collector = collector_for(ctx, spec, pair.kinds, {canon})
            urls = ctx.urls(spec)
            pos, stats = collect(
                path,
                collector,
                reader,
                truth_url=urls["truth_url"],
                projection_url=urls["projection_url"],
                resolve_conn=ctx.conn_url,
                now=datetime.now(UTC),
                committed=cut.committed,
            )
        finally:
            reader.close()
        result.cut = {**cut.to_dict(), "read": stats.to_dict()}
        events = sorted(
            collector.by_key().get(canon, []),
            key=lambda e: (e.time or datetime.min.replace(tzinfo=UTC), e.partition or 0, e.offset or 0),
        )
        result.events = [_event(ev, stage(ev, pos), pos) for ev in events]
        if found is not None:
            changed = (truth or {}).get(spec.freshness.truth_column) if spec.freshness.truth_column else None
            v = verdict(events, pos, changed)
            if v.pending:
                result.state = "pending"
            else:
                result.cause = v.cause.value if v.cause else None
        return result
    finally:
        pair.close()
