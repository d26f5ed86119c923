"""The `reconcile` command line: a thin shell over :mod:`reconcile.app`.

Each command parses its arguments, makes one :class:`~reconcile.app.Context`, calls one use
case and renders the result (:mod:`reconcile.render`).

Exit codes follow diff(1): 0 no drift, 1 drift found (or a refusal such as the blast-radius
guard), 2 trouble (bad input, unreachable database or broker). Errors are one line on stderr,
never a traceback (set RECONCILE_DEBUG=1 to see one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

# pydantic validates nothing here but reconcile's own spec models: skip its plugin discovery (a
# scan of every installed distribution's entry points, ~40 ms of each start) before the models
# load. Set PYDANTIC_DISABLE_PLUGINS= (empty) to have installed pydantic plugins see them.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer  # noqa: E402

from . import __version__  # noqa: E402
from .errors import ReconcileError, SpecError, mask_url  # noqa: E402
from .findings import Finding, RunResult  # noqa: E402
from .spec import Spec, load_spec  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .app import Context

if TYPE_CHECKING:
    from .schemacheck import CheckResult

app = typer.Typer(
    name="reconcile",
    help=(
        "Find and heal silent drift between source-of-truth tables and the projections other "
        "services build from events.\n\nExit codes: 0 no drift, 1 drift found (or refused), 2 trouble."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


class _LazyConsole:
    """A rich Console made on first use: a command that prints JSON never imports rich (rich is a
    good part of the start-up time of a small audit, issue 14)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


def _table(**options: Any) -> Table:
    from rich.table import Table

    return Table(**options)


out = _LazyConsole(highlight=False, soft_wrap=True)
err = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)

SpecArg = Annotated[str, typer.Argument(help="Path to the spec YAML file.", metavar="SPEC")]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Audit store URL (SQLAlchemy). Default: $RECONCILE_STORE_URL, else sqlite:///reconcile-store.db.",
        envvar="RECONCILE_STORE_URL",
        show_envvar=True,
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", "-f", help="table or json. Default: table on a terminal, json otherwise."),
]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"reconcile: error: {mask_url(message)}", markup=False, highlight=False)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every expected error into one line on stderr and its exit code."""
    try:
        yield
    except ReconcileError as e:
        if os.environ.get("RECONCILE_DEBUG"):
            raise
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        err.print("reconcile: interrupted")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:  # noqa: BLE001 - a bug, but the user still deserves one line
        if os.environ.get("RECONCILE_DEBUG"):
            raise
        _fail(f"unexpected {type(e).__name__}: {e} (set RECONCILE_DEBUG=1 for a traceback)")


def _format(fmt: str | None, allowed: tuple[str, ...] = ("table", "json")) -> str:
    if fmt is None:
        return "table" if sys.stdout.isatty() else "json"
    if fmt not in allowed:
        _fail(f"--format: {fmt!r} is not one of {', '.join(allowed)}")
    return fmt


def _spec(path: str) -> Spec:
    return load_spec(path)


def _context(store: str | None, bootstrap: str | None = None, timeout_s: float | None = None) -> Context:
    """The one place the CLI resolves where state and events live (flags over environment)."""
    from .app.context import Context, started_by_env

    # Airflow's BashOperator running this CLI on a schedule is the schedule, not a person.
    ctx = Context(store_url=store, started_by=started_by_env() or "cli")
    if bootstrap is not None:
        from .events.kafka import KafkaSettings

        ctx.kafka = KafkaSettings.from_env(bootstrap)
    if timeout_s is not None:
        ctx.kafka_timeout_s = timeout_s
    return ctx


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[], None] | None]:
    """A rows/s progress line on stderr while a long read runs (only on a terminal)."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,.0f} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err.console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, rate="")
        start = time.monotonic()
        state = {"n": 0, "last": start}

        def tick() -> None:
            state["n"] += 1
            now = time.monotonic()
            if now - state["last"] >= 0.2:
                state["last"] = now
                rate = state["n"] / max(now - start, 1e-9)
                bar.update(task, completed=state["n"], rate=f"{rate:,.0f} rows/s")

        yield tick


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


MAX_CELL = 80  # characters of one value shown in a table; --format json has them whole


def _cut(text: str, limit: int = MAX_CELL) -> str:
    """A long value cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text):,} chars)"


def _value(v: Any) -> str:
    return "NULL" if v is None else _cut(str(v))


_LOCATION = ("_partition", "_offset", "_timestamp", "_copies")  # where a topic side's message sits


def _at(f: Finding) -> str:
    """``p1@42`` (or every copy) for a finding on a topic side, else ""."""
    out = []
    for side in (f.truth, f.projection):
        if side and "_partition" in side:
            copies = side.get("_copies") or [{"partition": side["_partition"], "offset": side["_offset"]}]
            out.append(", ".join(f"p{c['partition']}@{c['offset']}" for c in copies))
    return "; ".join(out)


def _cause(f: Finding) -> str:
    """``lost (e-42 p0@17)``: the cause and its first piece of evidence."""
    if not f.cause:
        return ""
    if not f.evidence:
        return f.cause
    e = f.evidence[0]
    where = f" p{e['partition']}@{e['offset']}" if "partition" in e else ""
    more = f" +{len(f.evidence) - 1}" if len(f.evidence) > 1 else ""
    return f"{f.cause} ({_cut(str(e.get('event_id')), 40)}{where}{more})"


def _cut_lines(cut: dict[str, Any] | None, causes: dict[str, int] | None) -> list[str]:
    """The run's cut and cause breakdown (specs with a `path`)."""
    if not cut:
        return []
    truth = cut.get("truth") or {}
    at = f"truth at LSN {truth['lsn']}" if truth.get("lsn") else "truth position unknown (not PostgreSQL)"
    ends = ", ".join(f"p{p}:{o}" for p, o in (cut.get("end_offsets") or {}).items())
    done = ", ".join(f"p{p}:{o}" for p, o in (cut.get("committed") or {}).items())
    reached = "reached" if cut.get("reached") else "not reached"
    lines = [
        f"  cut: {at}; topic {cut.get('topic')} end offsets {ends or '-'}; group {cut.get('consumer_group')} "
        f"at {done or '-'}; waited {cut.get('waited_s', 0):.1f}s of {cut.get('settle_s', 0):g}s ({reached})"
    ]
    if causes:
        lines.append("  causes: " + "  ".join(f"{c} {n:,}" for c, n in causes.items()))
    return lines


def _findings_table(findings: list[Finding], limit: int = 50) -> Table:
    t = _table(show_lines=False, pad_edge=False)
    located = any(_at(f) for f in findings[:limit])
    caused = any(f.cause for f in findings[:limit])
    for col in (
        "kind",
        *(["cause"] if caused else []),
        "key",
        "columns",
        "truth",
        "projection",
        *(["at"] if located else []),
        "status",
        "seen",
    ):
        t.add_column(col, overflow="fold")
    for f in findings[:limit]:
        key = ", ".join(f"{k}={_value(v)}" for k, v in f.key.items())
        cols = list(f.columns) or [c for c in (f.truth or f.projection or {}) if c not in _LOCATION]
        truth = "—" if f.truth is None else ", ".join(f"{c}={_value(f.truth.get(c))}" for c in cols)
        proj = "—" if f.projection is None else ", ".join(f"{c}={_value(f.projection.get(c))}" for c in cols)
        if f.copies > 1:
            proj += f" (x{f.copies})"
        at = [_at(f)] if located else []
        cause = [_cause(f)] if caused else []
        t.add_row(
            f.kind.value,
            *cause,
            key,
            ", ".join(f.columns),
            truth,
            proj,
            *at,
            f.status.value,
            str(f.times_seen),
        )
    return t


def _print_run_json(result: RunResult, store: Any = None, confirm_runs: int = 1) -> None:
    """The audit's JSON document; a huge run's findings are streamed from the store, page by
    page, so printing a million of them keeps memory flat."""
    doc = result.to_dict()
    if not result.truncated or store is None:
        _print_json(doc)
        return
    doc.pop("findings_truncated", None)
    head = json.dumps({**doc, "findings": []}, indent=2, default=str)
    before, _, after = head.partition('"findings": []')
    sys.stdout.write(before + '"findings": [')
    for i, f in enumerate(store.iter_run_findings(result.spec, result.run_id, confirm_runs)):
        sys.stdout.write(("," if i else "") + "\n    " + json.dumps(f.to_dict(), default=str))
    sys.stdout.write("\n  ]" + after + "\n")
    sys.stdout.flush()


def _topic_lines(topics: dict[str, Any]) -> list[str]:
    """One line per topic side: its recorded extent and what reading it met, then any problems."""
    lines = []
    for role, t in topics.items():
        parts = t.get("partitions") or {}
        window = f"since {t['since']}" if t.get("since") else "from the earliest offset"
        line = (
            f"  {role}: topic {t['topic']} ({t['where']}), {len(parts)} partition(s), {window}, "
            f"{t.get('offsets', 0):,} offsets up to the end offsets at {t['taken_at']}"
        )
        read = t.get("read")
        if read:
            rate = read["messages_per_second"]
            line += f"; read {read['messages']:,} messages ({rate:,}/s) into {read['rows']:,} rows"
        if t.get("consumer_group"):
            line += f"; group {t['consumer_group']}"
            if read:
                line += f": {read['in_flight']:,} in flight"
        lines.append(line)
        lines += [f"  warning: {p}" for p in t.get("problems") or []]
    return lines


def print_run(result: RunResult, fmt: str, store: Any = None, confirm_runs: int = 1) -> None:
    """Show one audit result as a table or as the JSON document of the contract."""
    if fmt == "json":
        _print_run_json(result, store, confirm_runs)
        return
    s = result.summary
    verdict = "drift found" if result.exit_code else "no drift"
    out.print(f"spec {result.spec}  run {result.run_id}  ({verdict})")
    out.print(
        f"  compared {s.compared:,}  pending {s.pending:,}  missing {s.missing:,}  orphan {s.orphan:,}  "
        f"mismatch {s.mismatch:,}  duplicate {s.duplicate:,}"
        + (f"  unconfirmed {s.unconfirmed:,}" if s.unconfirmed else "")
        + (f"  acknowledged {s.acknowledged:,}" if s.acknowledged else "")
    )
    for line in _topic_lines(result.scope.get("topics") or {}):
        out.print(line, markup=False)
    for line in _cut_lines(result.cut, result.causes):
        out.print(line, markup=False)
    if result.findings:
        out.print(_findings_table(result.findings))
        if len(result.findings) > 50:
            out.print(f"  ... and {len(result.findings) - 50:,} more (use --format json for all)")


WhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where",
        help="Only rows matching this filter, on both sides: one boolean expression over the spec's "
        "key and compared columns (by truth name), e.g. \"warehouse = 'W1' AND on_hand > 0\". "
        "Comparisons, IN, BETWEEN, LIKE, IS NULL, AND/OR/NOT and lower/upper/length/abs/coalesce/trim; "
        "no subqueries, casts or other functions (exit 2). On a topic side the names are its fields.",
    ),
]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="When another audit of this spec is running, wait for it (default: exit 2 at once).",
    ),
]


ChunkTimeOpt = Annotated[
    str | None,
    typer.Option(
        "--chunk-time",
        help="Scan both sides in chunks sized to this time (0.5s, 2s ...), pausing between them "
        "when --max-active-sessions is busy (overrides the spec's `throttle:`).",
    ),
]
MaxActiveOpt = Annotated[
    int | None,
    typer.Option(
        "--max-active-sessions",
        min=1,
        help="Pause the scan while a side's database has more active sessions than this "
        "(PostgreSQL, MySQL/MariaDB; overrides the spec's `throttle:`).",
    ),
]
SettleOpt = Annotated[
    str | None,
    typer.Option(
        "--settle",
        help="With a `path:` in the spec: how long to wait for the projector's group to reach the "
        "cut before reading the projection (30s, 2m, 0s; default: the spec's path.settle).",
    ),
]


def _throttled(s: Spec, chunk_time: str | None, max_active: int | None) -> Spec:
    """The spec with ``--chunk-time`` / ``--max-active-sessions`` over its ``throttle:``."""
    if chunk_time is None and max_active is None:
        return s
    from pydantic import ValidationError

    from .spec import Throttle

    base = s.throttle.model_dump() if s.throttle else {}
    if chunk_time is not None:
        base["chunk_time"] = chunk_time
    if max_active is not None:
        base["max_active_sessions"] = max_active
    try:
        return s.model_copy(update={"throttle": Throttle.model_validate(base)})
    except ValidationError as e:
        raise SpecError(f"--chunk-time: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _settle(text: str | None) -> Any:
    from datetime import timedelta

    from .spec import parse_duration

    if text is None:
        return None
    try:
        value = parse_duration(text)
    except ValueError as e:
        raise SpecError(f"--settle: {e}") from None
    if value < timedelta(0):
        raise SpecError("--settle: must not be negative")
    return value


# -- commands ------------------------------------------------------------------------------
@app.command()
def audit(
    spec: SpecArg,
    fmt: FormatOpt = None,
    store: StoreOpt = None,
    keys: Annotated[
        str | None,
        typer.Option(
            "--keys",
            help="Only these entities: a file (one key per line) or a comma-separated list; "
            "composite keys as W1:A-1 or JSON objects.",
        ),
    ] = None,
    where: WhereOpt = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress on stderr (default: on a terminal)."),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="auto, stream or checksum. checksum pushes bucket checksums down to both databases "
            "(PostgreSQL, MariaDB or MySQL) and reads only the buckets that differ; auto uses it "
            "where it helps.",
        ),
    ] = "auto",
    wait: WaitOpt = False,
    chunk_time: ChunkTimeOpt = None,
    max_active: MaxActiveOpt = None,
    settle: SettleOpt = None,
) -> None:
    """Compare truth with projection and report drift (exit 0 none, 1 drift, 2 trouble).

    Either side may be a Kafka topic (`topic:` in the spec): it is read from the end offsets
    taken when the run starts back to `since:` (or the earliest offset), every partition, and
    that extent is recorded with the run.

    With a `path:` in the spec every finding has a cause (not_published, lost, not_applied,
    misapplied, unexplained) and the run records its cut: truth's position, the topic's end
    offsets and the projector group's offsets; it waits up to `path.settle` (--settle) for the
    group to reach them, and entities with an event still in flight are pending.
    """
    from .app import audit as do_audit
    from .keys import parse_keys

    with _errors():
        fmt = _format(fmt)
        s = _throttled(_spec(spec), chunk_time, max_active)
        key_list = parse_keys(keys, s)
        ctx = _context(store)
        show = sys.stderr.isatty() if progress is None else progress
        with _progress(f"auditing {s.name}", show) as tick:
            result = do_audit(
                ctx,
                s,
                keys=key_list,
                where=where,
                on_row=tick,
                strategy=strategy,
                wait=wait,
                settle=_settle(settle),
            )
        print_run(result, fmt, ctx.store, s.freshness.confirm_runs)
    raise typer.Exit(result.exit_code)


@app.command()
def validate(spec: SpecArg, fmt: FormatOpt = None) -> None:
    """Check a spec, and that both sides exist (tables, columns; topics, consumer group), without auditing."""
    from .app import validate as do_validate

    with _errors():
        fmt = _format(fmt)
        info = do_validate(_context(None), _spec(spec))
        if fmt == "json":
            _print_json({"valid": True, **info})
        else:
            out.print(f"spec {info['spec']}: valid")
            out.print(f"  truth       {info['truth']}")
            out.print(f"  projection  {info['projection']}")
            keys = ", ".join(
                k["truth"] if k["truth"] == k["projection"] else f"{k['truth']}->{k['projection']}"
                for k in info["key"]
            )
            out.print(f"  key         {keys}")
            cols = ", ".join(t if t == p else f"{t}->{p}" for t, p in info["columns"].items())
            out.print(f"  columns     {cols or '(none: presence only)'}")
            for line in _topic_lines(info.get("topics") or {}):
                out.print(line, markup=False)
            if p := info.get("path"):
                where = ", ".join(f"{k} {p[k]}" for k in ("source", "applied") if k in p)
                out.print(
                    f"  path        topic {p['topic']} ({p['partitions']} partition(s)), group "
                    f"{p['consumer_group']}" + (f"; {where}" if where else ""),
                    markup=False,
                )


@app.command()
def trace(
    spec: SpecArg,
    key: Annotated[
        str,
        typer.Argument(
            help="The entity, as --keys takes one: W1:A-1 (key parts in key order) or a JSON object "
            'by truth names ({"warehouse": "W1", "sku": "A-1"}).',
            show_default=False,
            metavar="KEY",
        ),
    ],
    store: StoreOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """One entity's story along the spec's event path (exit 0 consistent or pending, 1 drifted).

    Its truth row and projection row, then every event touching it in `path.window` with each
    stage — written (the source row), published, on the topic (partition/offset), consumed by the
    projector's group or not, applied (in its journal) or not — and the verdict with its cause.
    Reads only: records nothing, joins no group.
    """
    from .app.trace import trace as do_trace

    with _errors():
        fmt = _format(fmt)
        s = _spec(spec)
        result = do_trace(_context(store), s, key)
        if fmt == "json":
            _print_json(result.to_dict())
        else:
            _print_trace(result)
    raise typer.Exit(result.exit_code)


def _print_trace(result: Any) -> None:
    key = ", ".join(f"{k}={_value(v)}" for k, v in result.key.items())
    out.print(f"spec {result.spec}  entity {key}", markup=False)
    for side in ("truth", "projection"):
        row = getattr(result, side)
        shown = "— (no row)" if row is None else ", ".join(f"{c}={_value(v)}" for c, v in row.items())
        out.print(f"  {side:<11}{shown}", markup=False)
    if result.events:
        t = _table(show_lines=False, pad_edge=False)
        for col in ("event id", "written", "published", "on topic", "consumed", "applied", "stage"):
            t.add_column(col, overflow="fold")

        def yes(v: Any) -> str:
            return "—" if v is None else ("yes" if v else "no")

        for e in result.events:
            written = str(e["written"]["at"] or "yes") if e["written"] else "—"
            topic = f"p{e['topic']['partition']}@{e['topic']['offset']}" if e["topic"] else "—"
            t.add_row(
                _cut(str(e["event_id"]), 40),
                written,
                yes(e["published"]),
                topic,
                yes(e["consumed"]),
                yes(e["applied"]),
                e["stage"],
            )
        out.print(t)
    elif result.note is None:
        out.print("  no event in the window touches this entity", markup=False)
    for line in _cut_lines(result.cut, None):
        out.print(line, markup=False)
    verdict = result.state
    if result.state == "drift":
        verdict = f"drift ({result.kind}), cause {result.cause or 'unknown'}"
    elif result.state == "pending":
        verdict = "pending: an event touching it is still in flight"
    out.print(f"  verdict: {verdict}", markup=False)
    if result.finding:
        f = result.finding
        out.print(f"  stored finding: {f['status']}, seen {f['times_seen']}x", markup=False)
    if result.note:
        out.print(f"  note: {result.note}", markup=False)


@app.command()
def findings(
    spec: SpecArg,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="table, json or csv (one row per finding: key columns, kind, status, both sides' "
            "values as truth.<column> / projection.<column>). Default: table on a terminal, json otherwise.",
        ),
    ] = None,
    store: StoreOpt = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", help="Statuses to list (repeatable). Default: open, correcting, acknowledged."
        ),
    ] = None,
    acknowledge: Annotated[
        str | None,
        typer.Option("--acknowledge", help="Mark the finding with this key as known; needs --reason."),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why the finding is acknowledged.")] = None,
) -> None:
    """List the open findings of a spec, or acknowledge one (--acknowledge KEY --reason TEXT)."""
    from .app import acknowledge as do_acknowledge
    from .app import list_findings

    with _errors():
        fmt = _format(fmt, ("table", "json", "csv"))
        s = _spec(spec)
        ctx = _context(store)
        if acknowledge is not None:
            if not reason:
                _fail("--acknowledge needs --reason TEXT")
            f = do_acknowledge(ctx, s, acknowledge, reason or "")
            if fmt == "json":
                _print_json(f.to_dict())
            else:
                out.print(f"acknowledged {f.kind.value} {f.key_id}: {reason}")
            return
        items = list_findings(ctx, s, status)
        if fmt == "csv":
            from .app.dashboard import findings_csv

            sys.stdout.write(findings_csv(s.name, items))
            sys.stdout.flush()
        elif fmt == "json":
            _print_json({"spec": s.name, "findings": [f.to_dict() for f in items]})
        else:
            out.print(f"spec {s.name}: {len(items)} finding(s)")
            if items:
                out.print(_findings_table(items, limit=200))


KafkaOpt = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        help="Kafka bootstrap servers. Default: $KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092.",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        show_envvar=True,
    ),
]
TimeoutOpt = Annotated[str, typer.Option("--timeout", help="How long to wait: 30s, 5m, 1h ...")]
VerifyTimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--timeout",
        help="How long verify waits for the projector's lag to reach 0: 30s, 5m ... "
        "Default: the spec's correction.verify_timeout (5m).",
    ),
]


def _seconds(text: str, option: str) -> float:
    from .spec import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as e:
        _fail(f"{option}: {e}")
        raise  # unreachable


def _timeout(text: str | None) -> Any:
    from datetime import timedelta

    return None if text is None else timedelta(seconds=_seconds(text, "--timeout"))


def _print_events(result: Any) -> None:
    from .compare import jsonable

    t = _table(pad_edge=False)
    for col in ("event id", "kind", "key", "state"):
        t.add_column(col, overflow="fold")
    for e in result.events[:50]:
        state = "tombstone" if e.tombstone else json.dumps(jsonable(e.data["state"]), sort_keys=True)
        t.add_row(e.id, e.kind.value, _cut(json.dumps(e.data["key"], sort_keys=True)), _cut(state, 200))
    out.print(t)
    if result.count > 50:
        listed = "" if not result.truncated else f", the first {len(result.events):,}"
        out.print(f"  ... and {result.count - 50:,} more (use --format json{listed})")


@app.command()
def correct(
    spec: SpecArg,
    fmt: FormatOpt = None,
    store: StoreOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the corrective events; write nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Correct even when the blast-radius guard trips.")
    ] = False,
) -> None:
    """Turn the confirmed open findings of the latest run into corrective events in the outbox.

    One transaction: outbox rows are written and the findings marked `correcting` together; a
    repeated correct writes nothing new. Exit 1 when the blast-radius guard refuses.
    """
    from .app import correct as do_correct

    with _errors():
        fmt = _format(fmt)
        s = _spec(spec)
        result = do_correct(_context(store), s, dry_run=dry_run, force=force)
        for r in result.refused[:20]:
            err.print(
                f"reconcile: refused: {s.name} {_cut(json.dumps(r['key'], sort_keys=True))}: its event is "
                f"{r['bytes']:,} bytes, over correction.max_event_bytes; the finding stays open",
                markup=False,
            )
        if fmt == "json":
            _print_json(result.to_dict())
            raise typer.Exit(result.exit_code)
        verb = "would write" if dry_run else "wrote"
        new = result.count if dry_run else result.written
        out.print(
            f"spec {s.name}: {verb} {new:,} corrective event(s) to the outbox"
            + ("" if dry_run else f" ({result.count - result.written:,} already there)")
        )
        if result.events:
            _print_events(result)
    raise typer.Exit(result.exit_code)


@app.command()
def relay(
    spec: Annotated[
        str | None, typer.Option("--spec", help="Only this spec's events (a spec file or name).")
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once/--follow", help="Stop when the outbox is empty (default), or keep polling."),
    ] = True,
    store: StoreOpt = None,
    bootstrap: KafkaOpt = None,
    timeout: TimeoutOpt = "30s",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows per batch.")] = 20000,
    fmt: FormatOpt = None,
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Refused attempts before a row is parked (dead)."),
    ] = 3,
) -> None:
    """Publish unsent outbox rows to Kafka (or the embedded log); mark each sent only when confirmed.

    Broker unreachable: retries with backoff up to --timeout, then exits 2; the rows stay unsent.
    A row the broker refuses for good (too large, invalid) is parked after --max-attempts with
    its reason and its finding reopened, and never blocks the others: exit 1 when this pass
    parked rows. Two relays never publish the same row (rows are claimed).
    """
    from .app import relay as do_relay

    with _errors():
        fmt = _format(fmt)
        name = None
        if spec is not None:
            name = _spec(spec).name if spec.endswith((".yaml", ".yml")) else spec
        show = sys.stderr.isatty()

        def progress(sent: int) -> None:
            if show:
                err.print(f"relay: {sent:,} sent", end="\r")

        ctx = _context(store, bootstrap, _seconds(timeout, "--timeout"))
        try:
            result = do_relay(
                ctx,
                spec_name=name,
                once=once,
                batch_size=batch_size,
                on_batch=progress,
                max_attempts=max_attempts,
            )
        finally:
            ctx.close()
        for d in result.dead[:20]:
            err.print(
                f"reconcile: parked: outbox row {d['id']} (event {d['event_id']}, key {_cut(d['key'])}) "
                f"after {max_attempts} refused attempts: {_cut(d['error'], 200)}",
                markup=False,
            )
        if fmt == "json":
            _print_json(result.to_dict())
        else:
            d = result.to_dict()
            out.print(f"relay: sent {d['sent']:,} event(s) in {d['seconds']}s ({d['events_per_second']:,}/s)")
            if result.dead:
                out.print(
                    f"relay: parked {len(result.dead):,} event(s) the broker refused (see `reconcile health`)"
                )
    raise typer.Exit(result.exit_code)


@app.command()
def verify(
    spec: SpecArg,
    fmt: FormatOpt = None,
    store: StoreOpt = None,
    bootstrap: KafkaOpt = None,
    timeout: VerifyTimeoutOpt = None,
) -> None:
    """Wait until the projector consumed the corrections (lag 0), re-audit those keys, resolve or escalate.

    Exit 0 when every correction healed, 1 when some did not (escalated to open), 2 when it
    cannot tell: the projector still lags after --timeout (the message names its consumer group
    and lag; the findings stay `correcting`), or the broker cannot be read.
    """

    from .app import verify as do_verify

    with _errors():
        fmt = _format(fmt)
        s = _spec(spec)
        with _context(store, bootstrap) as ctx:
            result = do_verify(ctx, s, timeout=_timeout(timeout))
        if fmt == "json":
            _print_json(result.to_dict())
        else:
            out.print(
                f"spec {s.name}: verified {result.checked:,} correction(s): {result.resolved:,} resolved, "
                f"{result.escalated:,} escalated, {result.pending:,} changed since (lag {result.lag:,}, "
                f"waited {result.waited_s:.1f}s)"
            )
    raise typer.Exit(result.exit_code)


@app.command()
def run(
    spec: SpecArg,
    fmt: FormatOpt = None,
    store: StoreOpt = None,
    bootstrap: KafkaOpt = None,
    do_verify: Annotated[
        bool, typer.Option("--verify", help="Wait for the projector and verify the healing.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Audit and show the corrections; write none.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Correct even when the blast-radius guard trips.")
    ] = False,
    timeout: VerifyTimeoutOpt = None,
    keys: Annotated[
        str | None, typer.Option("--keys", help="Only these entities (see `audit --keys`).")
    ] = None,
    where: WhereOpt = None,
    skip_preflight: Annotated[
        bool,
        typer.Option(
            "--skip-preflight", help="Do not run the preflight gate first (said on stderr when used)."
        ),
    ] = False,
    wait: WaitOpt = False,
    chunk_time: ChunkTimeOpt = None,
    max_active: MaxActiveOpt = None,
    settle: SettleOpt = None,
) -> None:
    """preflight → audit → correct → relay (→ verify): one command for cron, as the scheduled DAG runs it.

    The preflight gate (Great Expectations on both sides, `reconcile check`) runs first; when it
    fails, nothing is audited or corrected and the exit is 2. A spec without `correction:` is
    audited only.

    Exit 0 no drift (or all of it verified healed), 1 drift found / not healed / guard refused, 2 trouble.
    """

    from .app import heal
    from .keys import parse_keys

    with _errors():
        fmt = _format(fmt)
        s = _throttled(_spec(spec), chunk_time, max_active)
        if skip_preflight:
            err.print(f"reconcile: preflight skipped for {s.name} (--skip-preflight)", markup=False)
        with _context(store, bootstrap) as ctx, _progress(f"auditing {s.name}", sys.stderr.isatty()) as tick:
            outcome = heal(
                ctx,
                s,
                verify=do_verify,
                dry_run=dry_run,
                force=force,
                preflight=not skip_preflight,
                timeout=_timeout(timeout),
                keys=parse_keys(keys, s),
                where=where,
                on_row=tick,
                wait=wait,
                settle=_settle(settle),
            )
        if fmt == "json":
            # The whole document, whatever stopped the loop after the audit (a tripped guard, a
            # broker down): its `error` says what, and the exit code is the error's.
            _print_json(outcome.to_dict())
        else:
            if outcome.preflight is not None:
                out.print(f"preflight: passed ({outcome.preflight['seconds']:.1f} s)")
            print_run(outcome.audit, "table")
            if outcome.correction is not None:
                c = outcome.correction
                verb = "would write" if c.dry_run else "wrote"
                out.print(f"correct: {verb} {c.count if c.dry_run else c.written:,} corrective event(s)")
            if outcome.relay is not None:
                out.print(f"relay: sent {outcome.relay.sent:,} event(s)")
            if outcome.verify is not None:
                v = outcome.verify
                out.print(
                    f"verify: {v.resolved:,} resolved, {v.escalated:,} escalated, {v.pending:,} changed since"
                )
        if outcome.error is not None:
            _fail(str(outcome.error), outcome.exit_code)
    raise typer.Exit(outcome.exit_code)


@app.command()
def project(
    spec: SpecArg,
    store: StoreOpt = None,
    bootstrap: KafkaOpt = None,
    idle: Annotated[
        str | None,
        typer.Option("--idle", help="Stop after this long without events (default: run until stopped)."),
    ] = None,
    version_field: Annotated[
        str | None,
        typer.Option("--version-field", help="Skip events older than the row's version in this field."),
    ] = None,
) -> None:
    """Run the reference projector: apply the spec's corrective events to its projection table.

    A template and a test aid: applies each event id once (ids are recorded with the writes),
    commits the consumer group's position after each batch, logs each batch on stderr, and runs
    until stopped (Ctrl-C) unless --idle is given.
    """
    from .app import Projector

    with _errors():
        s = _spec(spec)
        idle_s = _seconds(idle, "--idle") if idle is not None else None
        with _context(store, bootstrap) as ctx:
            p = Projector(ctx, s, version_field=version_field)
            err.print(
                f"projector {p.group}: consuming {p.topic} into {s.projection.display}"
                + (f" (stops after {idle} idle)" if idle else " (Ctrl-C stops)"),
                markup=False,
            )

            def logged(stats: Any) -> None:
                err.print(
                    f"projector {p.group}: {stats.applied:,} applied, {stats.duplicates:,} duplicate(s)",
                    markup=False,
                )

            try:
                stats = p.run(idle_timeout_s=idle_s, max_seconds=float("inf"), on_batch=logged)
            except KeyboardInterrupt:
                stats = p.stats
            finally:
                p.close()
        out.print(
            f"projector {p.group}: {stats.applied:,} applied, {stats.duplicates:,} duplicate(s) skipped, "
            f"{stats.stale:,} stale"
        )


@app.command()
def health(
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Spec files or folders. Default: $RECONCILE_SPECS_DIR, else ./specs.",
            metavar="[SPEC]...",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = None,
    store: StoreOpt = None,
    bootstrap: KafkaOpt = None,
    outbox_max_age: Annotated[
        str, typer.Option("--outbox-max-age", help="Oldest unsent corrective event allowed.")
    ] = "10m",
    outbox_max_rows: Annotated[
        int, typer.Option("--outbox-max-rows", min=0, help="Unsent corrective events allowed.")
    ] = 10_000,
    max_lag: Annotated[
        int, typer.Option("--max-lag", min=0, help="Projector consumer-group lag allowed, in messages.")
    ] = 1_000,
    stale_after: Annotated[
        str,
        typer.Option(
            "--stale-after",
            help="A scheduled spec not audited for this long is stale (spec's alerts.stale_after wins).",
        ),
    ] = "3h",
) -> None:
    """Health of the pipe behind each spec: outbox backlog, projector lag (Kafka or the embedded
    log), how long since the last audit.

    Exit 0 healthy, 1 a threshold crossed, 2 cannot tell (a spec that does not load, a store or
    broker that cannot be read).
    """
    from datetime import timedelta

    from .app import Thresholds
    from .app import health as do_health
    from .spec import load_specs

    with _errors():
        fmt = _format(fmt)
        loaded, invalid = load_specs(specs or [])
        if not loaded and not invalid:
            _fail(f"health: no spec files in {', '.join(specs or []) or 'the specs folder'}")
        th = Thresholds(
            outbox_max_age=timedelta(seconds=_seconds(outbox_max_age, "--outbox-max-age")),
            outbox_max_rows=outbox_max_rows,
            max_lag=max_lag,
            stale_after=timedelta(seconds=_seconds(stale_after, "--stale-after")),
        )
        with _context(store, bootstrap, 15.0) as ctx:
            report = do_health(ctx, loaded, th, invalid=invalid)
        if fmt == "json":
            _print_json(report.to_dict())
        else:
            _print_health(report)
    raise typer.Exit(report.exit_code)


def _print_health(report: Any) -> None:
    t = _table(pad_edge=False)
    for col in ("spec", "status", "outbox", "oldest", "parked", "lag", "last audit"):
        t.add_column(col, overflow="fold")
    for h in report.specs:
        oldest = "—" if h.outbox_oldest_age_s is None else f"{h.outbox_oldest_age_s:,.0f}s"
        last = h.last_run_at.strftime("%Y-%m-%d %H:%M:%SZ") if h.last_run_at else "never"
        lag = "—" if h.lag is None else f"{h.lag:,}"
        t.add_row(h.spec, h.status, f"{h.outbox_unsent:,}", oldest, f"{h.outbox_dead:,}", lag, last)
    out.print(t)
    # One line per problem, below the table: they are sentences, and CI logs are 80 columns.
    for h in report.specs:
        for line in [*h.unknown, *h.problems, *(f"note: {n}" for n in h.notes)]:
            out.print(f"{h.spec}: {line}", markup=False)
    verdict = {0: "healthy", 1: "unhealthy", 2: "cannot tell"}[report.exit_code]
    out.print(f"{len(report.specs)} spec(s): {verdict}")


@app.command()
def demo(
    real: Annotated[
        bool, typer.Option("--real", help="Run on the local PostgreSQL and Kafka (`make services`) instead.")
    ] = False,
    workdir: Annotated[
        str, typer.Option("--workdir", help="Where the embedded demo keeps its files.")
    ] = ".demo",
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="How long orders flow.")] = 5.0,
    rate: Annotated[float, typer.Option("--rate", min=1, help="Orders per second.")] = 80.0,
    bootstrap: KafkaOpt = None,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Then keep the dashboard open over the demo's store (Ctrl-C stops)."),
    ] = False,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="The dashboard's port (--serve).")
    ] = 8765,
) -> None:
    """The inventory-desync incident: events lost in a broker blip, the drift found and healed.

    Runs on the embedded default (SQLite + reconcile's table-backed event log; no services).
    Exit 0 when the audit found exactly the lost entities and the run healed them all. With
    --serve, the dashboard (`reconcile serve`) then shows the story on http://127.0.0.1:PORT/.
    """
    from pathlib import Path

    from .app.demo import DemoSettings, run_demo

    with _errors():
        settings = DemoSettings(
            real=real, workdir=Path(workdir), seconds=seconds, rate=rate, bootstrap=bootstrap
        )
        settings.blip_at = min(settings.blip_at, seconds / 3)
        code = run_demo(settings, lambda line: out.print(line, markup=False, highlight=False))
        if serve and settings.store_url:
            from .serve import ServeSettings, run, token_from_env
            from .shop import spec_path

            out.print(f"dashboard: http://127.0.0.1:{port}/  (Ctrl-C stops)", markup=False)
            run(
                ServeSettings(store_url=settings.store_url, specs=(spec_path(),), token=token_from_env()),
                port=port,
                log_level="warning",
            )
    raise typer.Exit(code)


@app.command("check-schemas")
def check_schemas(
    directory: Annotated[
        str | None,
        typer.Argument(
            help="Schema directory: one folder per subject holding v1.avsc, v2.avsc, ... and an optional "
            "compatibility.yaml. Default: $RECONCILE_SCHEMAS_DIR, else the schemas shipped with "
            "reconcile (checks/schemas in a checkout).",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = None,
) -> None:
    """Check that each event-schema subject's versions keep its compatibility mode.

    Modes (compatibility.yaml: `default:` and `subjects: {SUBJECT: MODE}`; default BACKWARD) are
    the schema registries' ones: BACKWARD (the new version reads old data), FORWARD (the old
    version reads new data), FULL (both), each with a _TRANSITIVE variant (against every earlier
    version, not just the previous one), and NONE. The rules are Avro's, applied by the avro
    package's checker. Each violation names the versions, field, old and new type, and rule.

    Exit codes: 0 all compatible, 1 violations found, 2 unreadable or invalid schema or config.
    """
    from pathlib import Path

    from .schemacheck import check_dir
    from .schemas import schemas_dir

    with _errors():
        fmt = _format(fmt)
        result = check_dir(Path(directory) if directory else schemas_dir())
        if fmt == "json":
            _print_json(result.to_dict())
        else:
            _print_schema_check(result)
    raise typer.Exit(result.exit_code)


def _print_schema_check(result: CheckResult) -> None:
    subjects = _table(pad_edge=False)
    for col in ("subject", "mode", "versions", "result"):
        subjects.add_column(col)
    for s in result.subjects:
        verdict = "compatible" if s.compatible else f"{len(s.violations)} violation(s)"
        subjects.add_row(s.subject, s.mode.value, ", ".join(f"v{n}" for n in s.versions), verdict)
    out.print(f"schemas {result.root}", markup=False)
    out.print(subjects)
    # One block per violation rather than a wide table: CI logs are 80 columns.
    for v in result.violations:
        head = f"{v.subject} v{v.old_version} -> v{v.new_version} ({v.mode.value})  {v.rule}"
        where = f"field {v.field or '(record)'}: {v.old_type} -> {v.new_type}  [{v.kind} at {v.location}]"
        out.print(f"{head}\n  {where}\n  {v.problem}", markup=False)
    n = len(result.violations)
    out.print("all subjects compatible" if not n else f"{n} violation(s): incompatible schema change")


@app.command()
def check(
    spec: SpecArg,
    fmt: FormatOpt = None,
    store: StoreOpt = None,
    docs: Annotated[
        str | None,
        typer.Option(
            "--docs", metavar="DIR", help="Where to build the GX Data Docs (HTML). Default: gx-docs/<spec>/."
        ),
    ] = None,
) -> None:
    """Run the preflight gates alone (Great Expectations on both sides; exit 0 pass, 2 failed).

    A topic side is skipped, with a note in the result: GX validates databases, and the audit
    counts and reports the messages of a topic it cannot read.

    The default suite: truth keys not null and unique, every key/compared/freshness column
    present on its side, each side's row count at least checks.min_row_ratio (default 0.5) of
    the last full audit's and never 0 when that audit had rows. Add your own expectations under
    `checks:` in the spec or in checks/suites/<spec name>.<truth|projection>.json. Results go to
    the audit store; Data Docs to --docs.
    """
    from .app import preflight

    with _errors():
        fmt = _format(fmt)
        s = _spec(spec)
        result = preflight(_context(store), s, docs_dir=docs)
        if fmt == "json":
            _print_json(result.to_dict())
        else:
            verdict = "passed" if result.success else "FAILED"
            out.print(f"preflight {result.spec}: {verdict}  ({result.seconds:.1f} s)")
            from rich.markup import escape

            t = _table(show_lines=False, pad_edge=False)
            for col in ("side", "expectation", "on", "result", "observed / error"):
                t.add_column(col, overflow="fold")
            for side in result.sides:
                for o in side.outcomes:
                    t.add_row(o.side, o.type, o.columns, "ok" if o.success else "FAILED", escape(o.detail()))
            out.print(t)
            for side in result.sides:
                if side.note:
                    out.print(f"{side.side}: {side.source}: {side.note}", markup=False)
            if result.baseline is None:
                out.print("row counts: no full audit stored yet, so no baseline to compare with")
        if result.docs:  # on stderr with --format json, so stdout stays one JSON document
            (out if fmt == "table" else err).print(f"Data Docs: {result.docs}", markup=False)
        if not result.success:
            _fail(result.message, result.exit_code)


# Aliases in the product's own words (DESIGN.md): the whole loop is "heal", the GX gate is the
# "preflight". The older names stay, so nobody's cron line breaks.
app.command("heal", short_help="Alias of `run`: preflight → audit → correct → relay (→ verify).")(run)
app.command("preflight", short_help="Alias of `check`: the preflight gate alone.")(check)


@app.command()
def serve(
    store: StoreOpt = None,
    specs: Annotated[
        list[str] | None,
        typer.Option(
            "--specs",
            metavar="DIR",
            help="Spec folder or file (repeatable). Default: $RECONCILE_SPECS_DIR, else ./specs.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface; set a token).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8765,
    days: Annotated[
        int, typer.Option("--days", min=1, max=366, help="Default window of the charts and run history.")
    ] = 7,
) -> None:
    """Serve the drift dashboard, its JSON API (/api/...) and Prometheus metrics (/metrics).

    Read-only, from the audit store and the spec files: every spec's state, drift over time,
    open findings with both sides' values, runs, the healing funnel, each finding's lifecycle and
    its corrective events. Times are UTC. Binds 127.0.0.1 unless told otherwise. When
    RECONCILE_SERVE_TOKEN is set, every route (/metrics too) needs `Authorization: Bearer <token>`
    (browsers get a form that sets a cookie). Stop with Ctrl-C.
    """
    from pathlib import Path

    import sqlalchemy as sa

    from .serve import ServeSettings, is_loopback, run, token_from_env
    from .store import default_store_url

    with _errors():
        url = default_store_url(store)
        if url.startswith("sqlite:"):
            db = sa.make_url(url).database
            if db and db != ":memory:" and not Path(db).exists():
                _fail(f"serve: no audit store at {db} (give --store or RECONCILE_STORE_URL)")
        token = token_from_env()
        if not is_loopback(host) and not token:
            err.print(
                f"reconcile serve: warning: listening on {host} with no token: anyone who can reach it "
                "reads the findings; set RECONCILE_SERVE_TOKEN",
                markup=False,
            )
        settings = ServeSettings(store_url=url, specs=tuple(specs or ()), token=token, days=days)
        shown = f"[{host}]" if ":" in host else host
        err.print(
            f"reconcile serve: http://{shown}:{port}/  store {mask_url(url)}, specs "
            f"{', '.join(specs or []) or 'the default folder'}" + (", token required" if token else ""),
            markup=False,
        )
        run(settings, host=host, port=port)


def _version(value: bool) -> None:
    if value:
        out.print(f"reconcile {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Log every library's messages (Great Expectations, Kafka) on stderr."
        ),
    ] = False,
) -> None:
    """reconcile: a consistency auditor for event-driven systems."""
    if verbose:
        import logging

        os.environ["RECONCILE_VERBOSE"] = "1"
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )


def main() -> None:
    """Console-script entry point."""
    app()
