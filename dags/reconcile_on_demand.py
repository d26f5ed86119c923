"""``reconcile_on_demand``: audit (and optionally heal) one spec now, by hand, during an incident.

Trigger with params: ``spec`` (one of the known specs), ``keys`` (comma-separated, ``W1:A-1`` for
composite keys, or a JSON list), ``where`` (a SQL filter on both sides), ``dry_run`` (default
true: show the corrections, write nothing), ``force`` (correct past the blast-radius guard) and
``verify``. The result (summary and findings) is in the task logs and in XCom.

``trace`` (one entity key, ``W1:A-1`` or a JSON object): the ``trace`` task follows that entity
along the spec's event path — truth and projection rows, every event with its stage, the verdict
and its cause — into the logs and XCom (it changes nothing). ``settle_s`` overrides the spec's
``path.settle`` for the audit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


def _on_path() -> None:
    """Make the shared glue (``reconcile_dags/`` beside this file) importable wherever this file
    is parsed (scheduler, DAG processor, a task's process, a test)."""
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


_on_path()


def _names() -> list[str]:
    from reconcile_dags.discover import list_specs

    return [e.name for e in list_specs()]


_NAMES = _names()
_SPEC_PARAM = (
    Param(_NAMES[0], type="string", enum=_NAMES, description="the spec to reconcile")
    if _NAMES
    else Param("", type="string", description="no specs found in the specs folder")
)


@dag(
    dag_id="reconcile_on_demand",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=4,
    default_args={"owner": "reconcile", "retries": 0, "execution_timeout": timedelta(minutes=30)},
    tags=["reconcile", "on-demand"],
    doc_md=__doc__,
    params={
        "spec": _SPEC_PARAM,
        "keys": Param(None, type=["null", "string"], description="entity keys: K1,K2 or W1:A-1,... or JSON"),
        "where": Param(None, type=["null", "string"], description="SQL filter applied to both sides"),
        "dry_run": Param(True, type="boolean", description="show corrections without writing them"),
        "force": Param(False, type="boolean", description="correct even past the blast-radius guard"),
        "verify": Param(True, type="boolean", description="wait for the projector and re-check the keys"),
        "trace": Param(
            None,
            type=["null", "string"],
            description="one entity key (W1:A-1 or JSON) to follow along the event path: its events, "
            "their stages and the cause",
        ),
        "settle_s": Param(
            None,
            type=["null", "number"],
            minimum=0,
            description="with a path: how long the audit waits for the projector to reach the cut, "
            "seconds (default: the spec's path.settle)",
        ),
        "verify_timeout_s": Param(
            None,
            type=["null", "number"],
            minimum=1,
            description="how long verify waits for the projector, seconds "
            "(default: the spec's correction.verify_timeout)",
        ),
    },
)
def reconcile_on_demand() -> None:
    @task
    def audit(params: dict | None = None) -> dict:
        from reconcile_dags import on_demand

        return on_demand.audit(params or {})

    @task
    def correct(run: dict, params: dict | None = None) -> dict:
        from reconcile_dags import on_demand

        return on_demand.correct(run, params or {})

    @task(retries=3, retry_delay=timedelta(seconds=30))
    def relay(corrected: dict, params: dict | None = None) -> dict:
        from reconcile_dags import on_demand

        return on_demand.relay(corrected, params or {})

    @task(execution_timeout=timedelta(minutes=10))
    def verify(run: dict, corrected: dict, relayed: dict, params: dict | None = None) -> dict:
        from reconcile_dags import on_demand

        return on_demand.verify(run, corrected, relayed, params or {})

    @task
    def trace(params: dict | None = None) -> dict:
        from reconcile_dags import on_demand

        return on_demand.trace(params or {})

    trace()
    run = audit()
    corrected = correct(run)
    relayed = relay(corrected)
    verify(run, corrected, relayed)


reconcile_on_demand()
