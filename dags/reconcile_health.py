"""``reconcile_health``: are the pipes that cause drift healthy?

For every spec: the outbox backlog (unsent corrective events and the age of the oldest), the
consumer-group lag of the spec's projector, and when the spec was last audited. A crossed
threshold alerts through the spec's ``alerts:`` channels and fails the ``verdict`` task.
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


@dag(
    dag_id="reconcile_health",
    schedule=timedelta(minutes=15),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "reconcile", "retries": 1, "retry_delay": timedelta(minutes=1)},
    dagrun_timeout=timedelta(minutes=10),
    tags=["reconcile", "health"],
    doc_md=__doc__,
    params={
        "outbox_max_age_s": Param(600, type="number", minimum=0, description="oldest unsent event, seconds"),
        "outbox_max_rows": Param(10_000, type="integer", minimum=0, description="unsent events"),
        "max_lag": Param(1_000, type="integer", minimum=0, description="projector lag, messages"),
        "stale_after_s": Param(3 * 3600, type="number", minimum=0, description="no audit for this long"),
    },
)
def reconcile_health() -> None:
    @task(execution_timeout=timedelta(minutes=5))
    def measure(params: dict | None = None) -> dict:
        from reconcile_dags import runtime

        return runtime.health(params or {})

    @task(retries=0)
    def verdict(report: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if report["problems"]:
            raise AirflowFailException(f"{report['problems']} health problem(s); see the measure task")

    verdict(measure())


reconcile_health()
