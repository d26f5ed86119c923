"""The Great Expectations adapter of the preflight gate: suites run against both sides.

A broken read (a truncated projection, a truth table full of NULL keys) must never turn into a
flood of corrective events, so every run starts here. For each spec the gate validates, through
GX's SQL datasources (the databases do the counting; nothing is loaded into pandas):

* a **default suite** derived from the spec — truth keys not null and unique (compound keys with
  ``expect_compound_columns_to_be_unique``); every key, compared and freshness column present on
  its side; each side's row count at least ``checks.min_row_ratio`` of what the last full audit
  read (read from the audit store), and never 0 when that audit had rows;
* the spec's own ``checks.expectations`` (GX configurations with a ``side:``);
* GX suite JSON files: ``checks.suites.{truth,projection}`` in the spec (relative to the spec
  file), and ``checks/suites/<spec name>.truth.json`` / ``.projection.json`` when they exist.

Every result is stored in the audit store and rendered as GX Data Docs (HTML). GX is imported
only inside the functions that run it: importing it takes seconds, and ``reconcile --help``
must not.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import PreflightFailed, ReconcileError, SourceError, SpecError, mask_url
from ..spec import Side, Spec
from ..store import Store

__all__ = [
    "ExpectationResult",
    "SideResult",
    "PreflightResult",
    "ExpectationConfig",
    "default_expectations",
    "user_expectations",
    "run_suites",
    "SUITES_DIR",
    "DOCS_DIR",
]

SIDES = ("truth", "projection")
SUITES_DIR = Path("checks") / "suites"  # looked up in the working folder
DOCS_DIR = Path("gx-docs")  # Data Docs go to gx-docs/<spec>/ unless --docs says otherwise
_DOCS_SITE = "reconcile_docs"  # the ephemeral context already owns "local_site"
_ORIGIN = "reconcile_origin"  # meta key telling where an expectation came from
_BOUNDS = (("min_value", "min"), ("max_value", "max"), ("value_set", "in"), ("regex", "regex"))


@dataclass(frozen=True)
class ExpectationConfig:
    """One expectation for one side, in GX's configuration terms, and where it came from."""

    side: str
    type: str
    kwargs: Mapping[str, Any]
    origin: str  # "default", "spec checks.expectations[2]", or a suite file path
    meta: Mapping[str, Any] = field(default_factory=dict)


# -- the default suite (pure) -----------------------------------------------------------------
def default_expectations(spec: Spec, baseline: Mapping[str, Any] | None) -> list[ExpectationConfig]:
    """The suite every spec gets. ``baseline`` holds the last full audit's row counts
    (``truth_rows``, ``projection_rows``), or None when the spec was never audited."""
    out: list[ExpectationConfig] = []

    def add(side: str, type_: str, why: str, **kwargs: Any) -> None:
        out.append(ExpectationConfig(side, type_, kwargs, "default", {"reconcile": why}))

    tkeys = spec.key_truth
    for k in tkeys:
        add("truth", "expect_column_values_to_not_be_null", "truth key not null", column=k)
    if len(tkeys) == 1:
        add("truth", "expect_column_values_to_be_unique", "truth key unique", column=tkeys[0])
    else:
        add("truth", "expect_compound_columns_to_be_unique", "truth key unique", column_list=tkeys)
    present: dict[str, list[str]] = {
        "truth": [*tkeys, *spec.columns],
        "projection": [*spec.key_projection, *(spec.projection_name(c) for c in spec.columns)],
    }
    if spec.freshness.truth_column:
        present["truth"].append(spec.freshness.truth_column)
    if spec.freshness.projection_column:
        present["projection"].append(spec.freshness.projection_column)
    for side in SIDES:
        for col in dict.fromkeys(present[side]):
            add(side, "expect_column_to_exist", "column the audit reads", column=col)
    if baseline:
        ratio = spec.checks.min_row_ratio
        for side in SIDES:
            before = int(baseline.get(f"{side}_rows") or 0)
            if before <= 0:
                continue
            minimum = max(1, int(before * ratio))
            add(
                side,
                "expect_table_row_count_to_be_between",
                f"row count not collapsed: last full audit read {before} rows, ratio {ratio}",
                min_value=minimum,
            )
    return out


# -- user expectations ------------------------------------------------------------------------
def user_expectations(spec: Spec, suites_dir: Path | None = None) -> list[ExpectationConfig]:
    """The spec's ``checks.expectations`` and the GX suite files that belong to it."""
    out: list[ExpectationConfig] = []
    for i, e in enumerate(spec.checks.expectations):
        for side in SIDES if e.side == "both" else (e.side,):
            out.append(ExpectationConfig(side, e.type, dict(e.kwargs), f"checks.expectations[{i}]", e.meta))
    files: dict[str, Path] = {}
    base = Path(spec.source_path).parent if spec.source_path else Path.cwd()
    for side, raw in spec.checks.suites.items():
        path = Path(raw)
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise SpecError(f"spec {spec.label}: checks.suites.{side}: suite file {path} not found")
        files[side] = path
    folder = SUITES_DIR if suites_dir is None else suites_dir
    for side in SIDES:
        found = folder / f"{spec.name}.{side}.json"
        if side not in files and found.is_file():
            files[side] = found
    for side, path in files.items():
        out.extend(_suite_file(spec, side, path))
    return out


def _suite_file(spec: Spec, side: str, path: Path) -> list[ExpectationConfig]:
    where = f"spec {spec.label}: suite file {path}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SpecError(f"{where}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    items = doc.get("expectations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise SpecError(f"{where}: expected a GX suite: an object with an `expectations` list")
    out = []
    for i, item in enumerate(items):
        # GX 1.x writes `type`; suites saved by GX 0.x say `expectation_type`.
        kind = item.get("type") or item.get("expectation_type") if isinstance(item, dict) else None
        if not isinstance(kind, str) or not isinstance(item.get("kwargs", {}), dict):
            raise SpecError(f"{where}: expectations[{i}]: needs `type` and a `kwargs` object")
        out.append(
            ExpectationConfig(side, kind, dict(item.get("kwargs") or {}), str(path), item.get("meta") or {})
        )
    return out


# -- results (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectationResult:
    """One expectation's verdict on one side, with what GX observed."""

    side: str
    type: str
    kwargs: dict[str, Any]
    success: bool
    origin: str
    observed: Any = None  # GX's observed_value, when the expectation has one
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: list[Any] = field(default_factory=list)  # a few unexpected values
    error: str | None = None

    @classmethod
    def from_gx(cls, side: str, result: Mapping[str, Any]) -> ExpectationResult:
        """Build from one entry of GX's ``ValidationResult.to_json_dict()["results"]``."""
        cfg = result.get("expectation_config") or {}
        kwargs = {k: v for k, v in (cfg.get("kwargs") or {}).items() if k != "batch_id"}
        res = result.get("result") or {}
        return cls(
            side=side,
            type=str(cfg.get("type")),
            kwargs=kwargs,
            success=bool(result.get("success")),
            origin=str((cfg.get("meta") or {}).get(_ORIGIN, "user")),
            observed=res.get("observed_value"),
            unexpected_count=res.get("unexpected_count"),
            element_count=res.get("element_count"),
            examples=list(res.get("partial_unexpected_list") or [])[:5],
            error=_exception_message(result.get("exception_info")),
        )

    @property
    def columns(self) -> str:
        """The column(s) the expectation is about, or ""."""
        cols = self.kwargs.get("column") or self.kwargs.get("column_list") or ""
        return ",".join(map(str, cols)) if isinstance(cols, list) else str(cols)

    def detail(self) -> str:
        """What GX saw and the bounds asked for: ``observed 0, min 500``."""
        parts: list[str] = []
        if self.error:
            parts.append(f"error: {self.error}")
        elif self.observed is not None:
            parts.append(f"observed {_short(self.observed)}")
        elif self.unexpected_count is not None:
            seen = f"observed {self.unexpected_count} unexpected of {self.element_count}"
            if self.examples and self.unexpected_count:
                seen += f", e.g. {_short(self.examples[:3])}"
            parts.append(seen)
        elif self.type == "expect_column_to_exist" and not self.success:
            parts.append("column not found")
        for key, label in _BOUNDS:
            if self.kwargs.get(key) is not None:
                parts.append(f"{label} {_short(self.kwargs[key])}")
        return ", ".join(parts)

    def describe(self) -> str:
        """``projection: expect_table_row_count_to_be_between failed (observed 0, min 500)``."""
        on = f" on {self.columns}" if self.columns else ""
        detail = self.detail()
        return f"{self.side}: {self.type}{on} {'passed' if self.success else 'failed'}" + (
            f" ({detail})" if detail else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "type": self.type,
            "kwargs": self.kwargs,
            "success": self.success,
            "origin": self.origin,
            "observed": self.observed,
            "unexpected_count": self.unexpected_count,
            "element_count": self.element_count,
            "examples": self.examples,
            "error": self.error,
        }


@dataclass(frozen=True)
class SideResult:
    """One side's validation: where it was read and every expectation's outcome."""

    side: str
    source: str  # masked: "table stock_view at sqlite:///..."
    outcomes: tuple[ExpectationResult, ...]
    note: str | None = None  # why this side was not validated (a topic side)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failures(self) -> list[ExpectationResult]:
        return [o for o in self.outcomes if not o.success]

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "source": self.source,
            "success": self.success,
            "evaluated": len(self.outcomes),
            "failed": len(self.failures),
            "results": [o.to_dict() for o in self.outcomes],
            **({"skipped": self.note} if self.note else {}),
        }


@dataclass(frozen=True)
class PreflightResult:
    """What one preflight gate found: per-side results, the baseline used, where the docs are."""

    id: str
    spec: str
    checked_at: datetime
    sides: tuple[SideResult, ...]
    baseline: dict[str, Any] | None
    docs: str | None
    seconds: float

    @property
    def success(self) -> bool:
        return all(s.success for s in self.sides)

    @property
    def exit_code(self) -> int:
        return 0 if self.success else PreflightFailed.exit_code

    @property
    def failures(self) -> list[ExpectationResult]:
        return [o for s in self.sides for o in s.failures]

    def side(self, name: str) -> SideResult:
        return next(s for s in self.sides if s.side == name)

    @property
    def message(self) -> str:
        """One line: ``preflight inventory: projection: expect_... failed (observed 0, min 500); ...``."""
        if self.success:
            n = sum(len(s.outcomes) for s in self.sides)
            return f"preflight {self.spec}: passed ({n} expectations)"
        failed = self.failures
        shown = "; ".join(o.describe() for o in failed[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        return f"preflight {self.spec}: {shown}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec,
            "checked_at": self.checked_at.isoformat(),
            "success": self.success,
            "seconds": round(self.seconds, 3),
            "baseline": self.baseline,
            "docs": self.docs,
            "sides": {s.side: s.to_dict() for s in self.sides},
            "failures": [o.describe() for o in self.failures],
        }


def _exception_message(info: Any) -> str | None:
    """GX puts either one {raised_exception, exception_message} or one per failed metric."""
    if not isinstance(info, Mapping):
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, Mapping)]
    for e in entries:
        if e.get("raised_exception"):
            msg = str(e.get("exception_message") or "exception").strip().splitlines()
            return mask_url(msg[0] if msg else "exception")[:300]
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Mapping):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


# -- running GX (the adapter) -----------------------------------------------------------------
def run_suites(
    spec: Spec,
    store: Store,
    *,
    truth_url: str | None = None,
    projection_url: str | None = None,
    docs_dir: str | Path | None = None,
    build_docs: bool = True,
    suites_dir: Path | None = None,
) -> PreflightResult:
    """Run the default suite and the user's expectations on both sides; store and return the result.

    Raises SpecError for a bad expectation or suite file and SourceError when a side cannot be
    read at all; a failed expectation is a result (``success`` False), not an exception.
    """
    started = time.monotonic()
    checked_at = datetime.now(UTC)
    base = store.baseline_run(spec.name)
    baseline = (
        {
            "run_id": base.id,
            "finished_at": base.finished_at.isoformat(),
            "truth_rows": base.summary.get("truth_rows"),
            "projection_rows": base.summary.get("projection_rows"),
            "min_row_ratio": spec.checks.min_row_ratio,
        }
        if base is not None
        else None
    )
    expectations = default_expectations(spec, baseline) + user_expectations(spec, suites_dir)
    # GX validates databases; a topic side is read whole by the audit, which counts and reports
    # what it could not read (invalid JSON, unreadable keys), so its suite is skipped here.
    topics = {side: getattr(spec, side) for side in SIDES if getattr(spec, side).is_topic}
    expectations = [e for e in expectations if e.side not in topics]
    urls = {
        side: url
        for side, url in (
            ("truth", truth_url or spec.truth.url),
            ("projection", projection_url or spec.projection.url),
        )
        if side not in topics
    }
    for side, url in urls.items():
        if not url:
            raise SpecError(
                f"spec {spec.label}: {side}: no URL (conn_id {getattr(spec, side).conn_id!r} "
                "must be resolved by the caller)"
            )
    docs = Path(docs_dir) if docs_dir is not None else DOCS_DIR / spec.name
    raw, docs_index = (
        _run_gx(spec, urls, expectations, docs.resolve() if build_docs else None) if urls else ({}, None)
    )
    sides = tuple(
        SideResult(
            side,
            topics[side].display,
            (),
            note="preflight (Great Expectations) does not apply to a topic side: skipped; the audit "
            "reports messages it cannot read",
        )
        if side in topics
        else SideResult(
            side,
            _display(getattr(spec, side), str(urls[side])),
            tuple(ExpectationResult.from_gx(side, r) for r in raw[side]),
        )
        for side in SIDES
    )
    result = PreflightResult(
        id=str(uuid.uuid4()),
        spec=spec.name,
        checked_at=checked_at,
        sides=sides,
        baseline=baseline,
        docs=str(docs_index) if docs_index else None,
        seconds=time.monotonic() - started,
    )
    store.record_preflight(
        check_id=result.id,
        spec=spec.name,
        checked_at=checked_at,
        success=result.success,
        results=_masked(result.to_dict()),
        docs=result.docs,
    )
    return result


def _display(side: Side, url: str) -> str:
    what = f"table {side.schema_ + '.' if side.schema_ else ''}{side.table}" if side.table else "query"
    return f"{what} at {mask_url(url)}"


@contextmanager
def _gx_errors(what: str, url: str | None = None) -> Iterator[None]:
    """Translate whatever GX raises while setting up a side into one SourceError line."""
    try:
        yield
    except ReconcileError:
        raise
    except Exception as e:  # noqa: BLE001 - GX wraps driver errors in many classes of its own
        cause: BaseException = e
        while cause.__cause__ is not None and not str(cause).strip():
            cause = cause.__cause__
        lines = (str(cause).strip() or type(cause).__name__).splitlines()
        first = next((ln.strip() for ln in lines if ln.strip()), type(cause).__name__)
        at = f" at {mask_url(url)}" if url else ""
        raise SourceError(f"{what}{at}: {mask_url(first)}") from None


def _select_sql(side: Side, url: str) -> str:
    """The query a side is validated through: its table or query, and its ``where:``.

    Built by SQLAlchemy for the side's dialect, so the table name is quoted as an identifier
    (a ``table:`` can never smuggle SQL in) and the filter is the checked expression of
    :mod:`reconcile.filters` with its literals escaped by the dialect.
    """
    import sqlalchemy as sa

    from ..db import normalize_url
    from ..filters import parse_filter

    cols: list[Any] = []
    flt = parse_filter(side.where, origin="spec: where") if side.where else None
    if flt is not None:
        cols = [sa.column(n) for n in sorted(flt.columns)]
    if side.table:
        src: Any = sa.table(side.table, *cols, schema=side.schema_)
    else:
        src = sa.text(side.query or "").columns(*cols).subquery("q")
    stmt = sa.select(sa.text("*")).select_from(src)
    if flt is not None:
        stmt = stmt.where(flt.to_sql(lambda n: src.c[n], literal=True))
    dialect = sa.make_url(normalize_url(url)).get_dialect()()
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _read_only_engines(ds: Any) -> None:
    """Make every connection GX opens on a side read-only (what the SQL readers do)."""
    import sqlalchemy as sa

    engines: list[Any] = []
    for get in (lambda: ds.get_execution_engine().engine, ds.get_engine):
        try:
            engine = get()
        except Exception:  # noqa: BLE001 - a datasource without that accessor
            continue
        if engine is not None and all(engine is not e for e in engines):
            engines.append(engine)
    for engine in engines:
        backend = engine.dialect.name
        if backend == "sqlite":
            statements = ["PRAGMA query_only=ON"]
        elif backend in ("mysql", "mariadb"):
            statements = ["SET SESSION TRANSACTION READ ONLY"]
        elif backend == "postgresql":
            statements = ["SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"]
        else:
            continue

        def on_connect(dbapi_conn: Any, _record: Any, statements: list[str] = statements) -> None:
            cur = dbapi_conn.cursor()
            for sql in statements:
                cur.execute(sql)
            cur.close()
            commit = getattr(dbapi_conn, "commit", None)
            if commit is not None:
                commit()

        engine.dispose()  # connections made before the listener would not be read-only
        sa.event.listen(engine, "connect", on_connect)


def _quiet_gx() -> None:
    """Great Expectations logs hundreds of INFO lines per validation: keep them at WARNING (in
    the CLI and in Airflow task logs alike) unless RECONCILE_VERBOSE asks for everything."""
    import logging
    import os

    if os.environ.get("RECONCILE_VERBOSE"):
        return
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_gx(
    spec: Spec,
    urls: Mapping[str, str | None],
    expectations: Sequence[ExpectationConfig],
    docs: Path | None,
) -> tuple[dict[str, list[dict[str, Any]]], Path | None]:
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    from ..db import normalize_url

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs is not None:
        site: Any = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        ctx.add_data_docs_site(_DOCS_SITE, site)
    definitions = []
    datasources: list[Any] = []
    try:
        for side in (s for s in SIDES if s in urls):
            s: Side = getattr(spec, side)
            url = normalize_url(str(urls[side]))
            ds: Any
            asset: Any
            with _gx_errors(f"{side}: database", url):
                backend = url.split(":", 1)[0].split("+", 1)[0]
                if backend == "postgresql":
                    ds = ctx.data_sources.add_postgres(side, connection_string=_with_timeout(url))
                elif backend == "sqlite":
                    ds = ctx.data_sources.add_sqlite(side, connection_string=url)
                else:
                    ds = ctx.data_sources.add_sql(side, connection_string=url)
                datasources.append(ds)
                _read_only_engines(ds)
            with _gx_errors(f"spec {spec.label}: {side}: cannot read {_display(s, url)}"):
                # Always a query asset: GX pastes a table asset's name into its SQL as is.
                asset = ds.add_query_asset(side, query=_select_sql(s, url))
                batch = asset.add_batch_definition_whole_table("whole")
            suite = gx.ExpectationSuite(name=f"{spec.name}.{side}")
            for e in (e for e in expectations if e.side == side):
                cfg = ExpectationConfiguration(
                    type=e.type, kwargs=dict(e.kwargs), meta={**e.meta, _ORIGIN: e.origin}
                )
                try:
                    expectation = cfg.to_domain_obj()  # GX validates the kwargs here
                except Exception as err:  # noqa: BLE001 - GX raises its own and pydantic v1 errors
                    raise SpecError(
                        f"spec {spec.label}: {e.origin} ({side}: {e.type}): {_gx_reason(err)}"
                    ) from None
                # add_expectation drops only exact duplicates (add_expectation_configuration
                # would merge every expect_column_to_exist into one).
                suite.add_expectation(expectation)
            suite = ctx.suites.add(suite)
            definitions.append(
                ctx.validation_definitions.add(
                    gx.ValidationDefinition(name=f"{spec.name}.{side}", data=batch, suite=suite)
                )
            )
        actions: list[Any] = [UpdateDataDocsAction(name="data_docs", site_names=[_DOCS_SITE])] if docs else []
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"reconcile.{spec.name}",
                validation_definitions=definitions,
                actions=actions,
                result_format="SUMMARY",
            )
        )
        with _gx_errors(f"preflight {spec.name}: validation"):
            result = checkpoint.run()
        raw: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES if side in urls}
        for vr in result.run_results.values():
            doc = vr.to_json_dict()
            side = str(doc.get("suite_name", "")).rsplit(".", 1)[-1]
            raw[side].extend(doc.get("results") or [])
        return raw, (docs / "index.html" if docs is not None else None)
    finally:
        for ds in datasources:
            try:
                ds.get_execution_engine().engine.dispose()
                ds.get_engine().dispose()
            except Exception:  # noqa: BLE001,S110 - closing pools is best effort
                pass


def _with_timeout(url: str) -> str:
    """Fail fast on a dead PostgreSQL host instead of hanging (as the SQL readers do), and read
    in read-only transactions with the readers' statement timeout."""
    import sqlalchemy as sa

    from ..sources.sql import statement_timeout_s

    u = sa.make_url(url)
    query: dict[str, str] = {}
    if "connect_timeout" not in u.query:
        query["connect_timeout"] = "10"
    if "options" not in u.query:
        options = "-c default_transaction_read_only=on"
        timeout = statement_timeout_s()
        if timeout:
            options += f" -c statement_timeout={int(timeout * 1000)}"
        query["options"] = options
    return u.update_query_dict(query).render_as_string(hide_password=False)


def _gx_reason(err: BaseException) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
            return f"kwargs.{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
        except Exception:  # noqa: BLE001
            pass
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
