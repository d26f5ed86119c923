"""One scheduled DAG per spec in the specs folder: preflight → audit → correct → relay → verify → report.

The folder is ``$RECONCILE_SPECS_DIR`` (or the Variable ``reconcile_specs_dir`` set as
``AIRFLOW_VAR_RECONCILE_SPECS_DIR``), else ``specs/`` in the repository. The schedule comes
from the spec (``schedule:``, hourly by default). A spec with ``fanout: N`` audits N key ranges
in parallel (dynamic task mapping) and merges them into one run. Parsing reads YAML only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


def _on_path() -> None:
    """Make the shared glue (``reconcile_dags/`` beside this file) importable wherever this file
    is parsed (scheduler, DAG processor, a task's process, a test)."""
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


_on_path()

DEFAULT_ARGS = {
    "owner": "reconcile",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(minutes=30),
}


def _specs() -> list:
    from reconcile_dags.discover import dag_id, list_specs

    return [(dag_id(e.name), e) for e in list_specs()]


def build(dag_id: str, entry) -> object:  # noqa: ANN001 - a discover.SpecEntry
    path = entry.path

    @dag(
        dag_id=dag_id,
        description=entry.description or f"reconcile spec {entry.name}",
        schedule=entry.schedule,
        start_date=datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        dagrun_timeout=timedelta(hours=2),
        tags=["reconcile", f"spec:{entry.name}"],
        doc_md=__doc__,
    )
    def spec_dag() -> None:
        @task(execution_timeout=timedelta(minutes=10))
        def preflight() -> dict:
            from reconcile_dags import runtime

            return runtime.preflight(path)

        @task
        def audit() -> dict:
            from reconcile_dags import runtime

            return runtime.audit(path)

        @task
        def plan_ranges() -> list:
            from reconcile_dags import runtime

            return runtime.plan_ranges(path)

        @task(max_active_tis_per_dagrun=8)
        def audit_range(rng: dict, started_at: str) -> dict:
            from reconcile_dags import runtime

            return runtime.audit_range(path, rng, started_at)

        @task
        def merge(parts: list, started_at: str) -> dict:
            from reconcile_dags import runtime

            return runtime.merge_ranges(path, list(parts), started_at)

        @task
        def started() -> str:
            from datetime import UTC
            from datetime import datetime as dt

            return dt.now(UTC).isoformat()

        @task
        def correct(run: dict) -> dict:
            from reconcile_dags import runtime

            return runtime.correct(path, run)

        @task(retries=5)
        def relay(corrected: dict) -> dict:
            from reconcile_dags import runtime

            return runtime.relay(path, corrected)

        @task(retries=1, execution_timeout=timedelta(minutes=10))
        def verify(run: dict, corrected: dict, relayed: dict) -> dict:
            from reconcile_dags import runtime

            return runtime.verify(path, run, corrected, relayed)

        @task(retries=0)
        def report(run: dict, corrected: dict, relayed: dict, verified: dict) -> dict:
            from reconcile_dags import runtime

            return runtime.report(path, run, corrected, relayed, verified)

        checked = preflight()
        if entry.fanout > 1:
            at = started()
            ranges = plan_ranges()
            checked >> [at, ranges]
            run = merge(audit_range.partial(started_at=at).expand(rng=ranges), at)
        else:
            run = audit()
            checked >> run
        corrected = correct(run)
        relayed = relay(corrected)
        verified = verify(run, corrected, relayed)
        report(run, corrected, relayed, verified)

    return spec_dag()


def build_invalid(dag_id: str, path: str, reason: str) -> object:
    """A spec that does not load gets a DAG that fails with the reason, so it cannot vanish."""

    @dag(
        dag_id=dag_id,
        description=f"INVALID spec {path}: {reason}"[:500],
        schedule="@hourly",
        start_date=datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "reconcile", "retries": 0},
        tags=["reconcile", "invalid-spec"],
        doc_md=f"**This spec does not load.** `{path}`: {reason}\n\n"
        "Fix the file; `reconcile validate` checks it.",
    )
    def invalid_spec_dag() -> None:
        @task
        def invalid_spec() -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"invalid spec {path}: {reason}")

        invalid_spec()

    return invalid_spec_dag()


def _invalid() -> list:
    from pathlib import Path

    from reconcile_dags.discover import dag_id, list_invalid

    return [(dag_id("invalid_" + Path(p).stem), p, why) for p, why in list_invalid()]


for _dag_id, _entry in _specs():
    globals()[_dag_id] = build(_dag_id, _entry)
for _dag_id, _path, _why in _invalid():
    globals()[_dag_id] = build_invalid(_dag_id, _path, _why)
