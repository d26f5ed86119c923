"""The `reconcile` command line: a thin shell over :mod:`reconcile.app` and :mod:`reconcile.heal`.

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
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import ReconcileError, mask_url
from .findings import Finding, RunResult
from .spec import Spec, load_spec
from .store import AuditStore

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
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

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


def _format(fmt: str | None) -> str:
    if fmt is None:
        return "table" if sys.stdout.isatty() else "json"
    if fmt not in ("table", "json"):
        _fail(f"--format: {fmt!r} is not one of table, json")
    return fmt


def _spec(path: str) -> Spec:
    return load_spec(path)


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
        console=err,
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


def _value(v: Any) -> str:
    return "NULL" if v is None else str(v)


def _findings_table(findings: list[Finding], limit: int = 50) -> Table:
    t = Table(show_lines=False, pad_edge=False)
    for col in ("kind", "key", "columns", "truth", "projection", "status", "seen"):
        t.add_column(col, overflow="fold")
    for f in findings[:limit]:
        key = ", ".join(f"{k}={_value(v)}" for k, v in f.key.items())
        cols = list(f.columns) or list((f.truth or f.projection or {}).keys())
        truth = "—" if f.truth is None else ", ".join(f"{c}={_value(f.truth.get(c))}" for c in cols)
        proj = "—" if f.projection is None else ", ".join(f"{c}={_value(f.projection.get(c))}" for c in cols)
        if f.copies > 1:
            proj += f" (x{f.copies})"
        t.add_row(f.kind.value, key, ", ".join(f.columns), truth, proj, f.status.value, str(f.times_seen))
    return t


def print_run(result: RunResult, fmt: str) -> None:
    """Show one audit result as a table or as the JSON document of the contract."""
    if fmt == "json":
        _print_json(result.to_dict())
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
    if result.findings:
        out.print(_findings_table(result.findings))
        if len(result.findings) > 50:
            out.print(f"  ... and {len(result.findings) - 50:,} more (use --format json for all)")


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
    where: Annotated[
        str | None, typer.Option("--where", help="SQL filter applied to both truth and projection.")
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress on stderr (default: on a terminal)."),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="auto, stream or checksum. checksum pushes bucket checksums down to PostgreSQL on "
            "both sides and reads only the buckets that differ; auto uses it where it helps.",
        ),
    ] = "auto",
) -> None:
    """Compare truth with projection and report drift (exit 0 none, 1 drift, 2 trouble)."""
    from .app import audit as do_audit
    from .app import parse_keys

    with _errors():
        fmt = _format(fmt)
        s = _spec(spec)
        key_list = parse_keys(keys, s)
        st = AuditStore(store)
        show = sys.stderr.isatty() if progress is None else progress
        with _progress(f"auditing {s.name}", show) as tick:
            result = do_audit(s, st, keys=key_list, where=where, on_row=tick, strategy=strategy)
        print_run(result, fmt)
    raise typer.Exit(result.exit_code)


@app.command()
def validate(spec: SpecArg, fmt: FormatOpt = None) -> None:
    """Check a spec, and that both tables and every named column exist, without auditing."""
    from .app import validate as do_validate

    with _errors():
        fmt = _format(fmt)
        info = do_validate(_spec(spec))
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


@app.command()
def findings(
    spec: SpecArg,
    fmt: FormatOpt = None,
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
    from .app import parse_keys
    from .findings import key_id
    from .store import ACTIVE

    with _errors():
        fmt = _format(fmt)
        s = _spec(spec)
        st = AuditStore(store)
        if acknowledge is not None:
            if not reason:
                _fail("--acknowledge needs --reason TEXT")
            (raw,) = parse_keys([acknowledge] if not acknowledge.startswith("{") else acknowledge, s) or [()]
            matches = [f for f in st.active_findings(s.name) if _same_key(f.key, raw, s.key_truth)]
            if not matches:
                _fail(f"spec {s.name}: no open finding with key {acknowledge}")
            f = st.acknowledge(s.name, key_id(matches[0].key), reason or "")
            if fmt == "json":
                _print_json(f.to_dict())
            else:
                out.print(f"acknowledged {f.kind.value} {f.key_id}: {reason}")
            return
        items = st.findings(s.name, status or list(ACTIVE), s.freshness.confirm_runs)
        if fmt == "json":
            _print_json({"spec": s.name, "findings": [f.to_dict() for f in items]})
        else:
            out.print(f"spec {s.name}: {len(items)} finding(s)")
            if items:
                out.print(_findings_table(items, limit=200))


def _same_key(key: dict[str, Any], raw: tuple[Any, ...], names: list[str]) -> bool:
    return all(str(key.get(n)) == str(v) for n, v in zip(names, raw, strict=True))


def _version(value: bool) -> None:
    if value:
        out.print(f"reconcile {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """reconcile: a consistency auditor for event-driven systems."""


def main() -> None:
    """Console-script entry point."""
    app()
