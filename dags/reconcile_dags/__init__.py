"""Airflow glue shared by the reconcile DAG files (not DAGs themselves: see ``.airflowignore``).

``discover`` runs at DAG-parse time and only reads small YAML files; ``runtime`` runs inside
tasks (connections, the audit store, Kafka settings, notifiers). All reconcile logic stays in
the ``reconcile`` package, which never imports Airflow.
"""
