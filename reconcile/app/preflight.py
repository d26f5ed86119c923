"""Use case: the preflight gate — Great Expectations suites on both sides before any diff.

A broken read (a truncated projection, a truth table full of NULL keys) must never turn into a
flood of corrective events, so a run starts here (``reconcile run`` and the scheduled DAG alike).
The suites and how they run live in :mod:`reconcile.gates.expectations`; results go to the
audit store and to GX Data Docs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PreflightFailed
from ..spec import Spec
from .context import Context

if TYPE_CHECKING:
    from ..gates.expectations import PreflightResult

__all__ = ["preflight", "gate"]


def preflight(
    ctx: Context,
    spec: Spec,
    *,
    docs_dir: str | Path | None = None,
    build_docs: bool = True,
    suites_dir: Path | None = None,
) -> PreflightResult:
    """Run the default suite and the user's expectations on both sides; store and return the result.

    Raises SpecError for a bad expectation or suite file and SourceError when a side cannot be
    read at all; a failed expectation is a result (``success`` False), not an exception.
    """
    from ..gates.expectations import run_suites

    urls = ctx.urls(spec)
    return run_suites(
        spec,
        ctx.store,
        truth_url=urls["truth_url"],
        projection_url=urls["projection_url"],
        docs_dir=docs_dir,
        build_docs=build_docs,
        suites_dir=suites_dir,
    )


def gate(
    ctx: Context,
    spec: Spec,
    *,
    docs_dir: str | Path | None = None,
    build_docs: bool = True,
    suites_dir: Path | None = None,
) -> PreflightResult:
    """:func:`preflight`, raising PreflightFailed (exit 2) when any expectation failed."""
    result = preflight(ctx, spec, docs_dir=docs_dir, build_docs=build_docs, suites_dir=suites_dir)
    if not result.success:
        raise PreflightFailed(result.message, result=result)
    return result
