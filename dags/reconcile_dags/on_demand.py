"""The on-demand DAG's tasks: the same use cases as a scheduled run, narrowed by the params."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from reconcile_dags import runtime
from reconcile_dags.discover import list_specs

XCOM_FINDINGS = 1000  # an incident audit is usually narrow: keep (almost) everything in XCom


def spec_path(params: dict[str, Any]) -> str:
    name = params.get("spec")
    entries = {e.name: e.path for e in list_specs()}
    if name not in entries:
        raise AirflowFailException(f"spec {name!r} is not in the specs folder (known: {sorted(entries)})")
    return entries[name]


def audit(params: dict[str, Any]) -> dict[str, Any]:
    settle = params.get("settle_s")
    return runtime.audit(
        spec_path(params),
        keys=params.get("keys") or None,
        where=params.get("where"),
        limit=XCOM_FINDINGS,
        settle_s=float(settle) if settle is not None else None,
    )


def trace(params: dict[str, Any]) -> dict[str, Any]:
    key = params.get("trace")
    if not key:
        return {"skipped": "no trace key"}
    return runtime.trace(spec_path(params), str(key))


def correct(run: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return runtime.correct(
        spec_path(params), run, dry_run=bool(params.get("dry_run", True)), force=bool(params.get("force"))
    )


def relay(corrected: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return runtime.relay(spec_path(params), corrected)


def verify(
    run: dict[str, Any], corrected: dict[str, Any], relayed: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    if not params.get("verify", True):
        return {"skipped": "verify=false"}
    timeout = params.get("verify_timeout_s")
    return runtime.verify(
        spec_path(params), run, corrected, relayed, timeout_s=float(timeout) if timeout else None
    )
