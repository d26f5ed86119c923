"""The event path inside an audit: the cut before truth is read, the wait for the projector, and
the cause of every finding after the diff (one pass over the window, whatever the findings).

Used by :func:`reconcile.app.audit.audit` and :func:`reconcile.app.trace.trace`; the logic is
:mod:`reconcile.causes` (pure) over :mod:`reconcile.sources.path` (the reads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ..causes import Attribution, Cause, Collector, EntityExtractor, Verdict, verdict
from ..compare import key_part
from ..errors import SpecError
from ..events.reader import TopicReader
from ..findings import Finding
from ..sources.path import Cut, PathStats, check_path, collect, settle, take_cut
from ..sources.sql import ReadPlan
from ..spec import Spec
from .context import Context

__all__ = ["PathRun", "Judge", "begin", "prepare", "finish", "finish_stream", "canon_for", "extractor_for"]


@dataclass
class PathRun:
    """One audit's view of the path: its reader and cut, then what attribution read."""

    spec: Spec
    reader: TopicReader
    cut: Cut
    stats: PathStats | None = None
    causes: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        self.reader.close()

    def to_dict(self) -> dict[str, Any]:
        out = self.cut.to_dict()
        if self.stats is not None:
            out["read"] = self.stats.to_dict()
        return out


def begin(ctx: Context, spec: Spec, settle_for: timedelta | None = None) -> PathRun:
    """Take the cut (before truth is read) and wait, up to ``settle`` (the spec's unless given),
    for the projector's group to consume everything that was on the topic then."""
    path = spec.path
    assert path is not None
    reader = ctx.topic_reader(path.topic_side())
    try:
        check(ctx, spec, reader)
        cut = take_cut(path, reader, ctx.side_url(spec.truth))
        limit = (settle_for if settle_for is not None else path.settle).total_seconds()
        settle(cut, reader, limit)
        return PathRun(spec, reader, cut)
    except BaseException:
        reader.close()
        raise


def check(ctx: Context, spec: Spec, reader: TopicReader) -> dict[str, Any]:
    """Everything the spec's path names exists (raises SpecError naming the field); its description."""
    assert spec.path is not None
    urls = ctx.urls(spec)
    try:
        return check_path(
            spec.path,
            reader,
            truth_url=urls["truth_url"],
            projection_url=urls["projection_url"],
            resolve_conn=ctx.conn_url,
        )
    except SpecError as e:
        raise SpecError(str(e).replace("spec:", f"spec {spec.label}:", 1)) from None


def canon_for(kinds: Sequence[str]) -> Any:
    """A function from raw key parts to the canonical key tuple (the diff's identity)."""
    kinds = list(kinds)
    plain = {"text": str, "int": int}  # kinds whose canonical form is the Python value itself
    simple = [plain.get(k) for k in kinds]

    def canon(parts: Sequence[Any]) -> tuple[Any, ...]:
        # Called once per event of the window: values already canonical take no call at all.
        if all(t is not None and v.__class__ is t for v, t in zip(parts, simple, strict=True)):
            return tuple(parts)
        return tuple(key_part(v, k) for v, k in zip(parts, kinds, strict=True))

    return canon


def extractor_for(spec: Spec, kinds: Sequence[str]) -> EntityExtractor:
    assert spec.path is not None
    ent = spec.path.entities
    simple = [{"text": str, "int": int}.get(k) for k in kinds]
    texts = [k == "text" for k in kinds]  # canon_for makes these parts str(v) (a str as it is)
    return EntityExtractor(
        ent.key, spec.key_truth, each=ent.each, canon=canon_for(kinds), simple=simple, texts=texts
    )


def collector_for(ctx: Context, spec: Spec, kinds: Sequence[str], keys: set[tuple[Any, ...]]) -> Collector:
    return Collector(keys, extractor_for(spec, kinds))


@dataclass
class Judge:
    """What one pass over the path found, ready to judge each finding (see :func:`prepare`)."""

    run: PathRun
    events: dict[tuple[Any, ...], list[Any]]
    pos: Any
    canon: Any
    changed: dict[tuple[Any, ...], datetime | None]

    def __call__(self, f: Finding) -> Verdict:
        key = self.canon([f.key[n] for n in self.run.spec.key_truth])
        return verdict(self.events.get(key, ()), self.pos, self.changed.get(key))


def prepare(
    ctx: Context, run: PathRun, keys: set[tuple[Any, ...]], kinds: Sequence[str], truth: Any = None
) -> Judge:
    """One pass over the source table, the topic window and the journal for the events touching
    these (canonical) keys. ``truth`` (the truth side's reader) supplies, when the spec has
    ``freshness.truth_column``, when truth last changed each entity (a change after its last event
    bypassed the events: ``unexplained``)."""
    spec = run.spec
    assert spec.path is not None
    collector = collector_for(ctx, spec, kinds, keys)
    urls = ctx.urls(spec)
    pos, stats = collect(
        spec.path,
        collector,
        run.reader,
        truth_url=urls["truth_url"],
        projection_url=urls["projection_url"],
        resolve_conn=ctx.conn_url,
        now=datetime.now(UTC),
        committed=run.cut.projection_committed or run.cut.committed,
    )
    run.stats = stats
    changed = _truth_times(spec, truth, kinds, keys) if truth is not None else {}
    return Judge(run, collector.by_key(), pos, canon_for(kinds), changed)


def finish(
    ctx: Context,
    run: PathRun,
    findings: Sequence[Finding],
    kinds: Sequence[str],
    truth: Any = None,
) -> Attribution:
    """Every finding's cause, from one pass over the path (:func:`prepare`); the findings with an
    event still in flight are pending instead."""
    canon = canon_for(kinds)
    names = run.spec.key_truth
    judge = prepare(ctx, run, {canon([f.key[n] for n in names]) for f in findings}, kinds, truth)
    out = Attribution([], [])
    for f in findings:
        v = judge(f)
        if v.pending:
            out.pending.append(f)
        else:
            assert v.cause is not None
            out.findings.append(replace(f, cause=v.cause.value, evidence=tuple(v.evidence())))
    run.causes = out.counts()
    return out


def finish_stream(
    ctx: Context,
    run: PathRun,
    findings: Iterable[Finding],
    keys: set[tuple[Any, ...]],
    kinds: Sequence[str],
    on_pending: Callable[[Finding], None],
    truth: Any = None,
) -> Iterator[Finding]:
    """:func:`finish` for a run too large to hold its findings (they stream from a spill into the
    store): the pass over the path is made now, for ``keys``; each finding is judged as it streams
    by, the pending ones handed to ``on_pending``. ``run.causes`` fills as the stream is read."""
    judge = prepare(ctx, run, keys, kinds, truth)
    counts = {c.value: 0 for c in Cause}
    run.causes = counts

    def stream() -> Iterator[Finding]:
        for f in findings:
            v = judge(f)
            if v.pending:
                on_pending(f)
                continue
            assert v.cause is not None
            counts[v.cause.value] += 1
            yield replace(f, cause=v.cause.value, evidence=tuple(v.evidence()))

    return stream()


def _truth_times(
    spec: Spec, truth: Any, kinds: Sequence[str], keys: set[tuple[Any, ...]]
) -> dict[tuple[Any, ...], datetime | None]:
    column = spec.freshness.truth_column
    if not column or not keys:
        return {}
    plan = ReadPlan(spec.key_truth, list(kinds), [], column)
    return {row.key: row.changed_at for row in truth.stream(plan, keys=sorted(keys))}
