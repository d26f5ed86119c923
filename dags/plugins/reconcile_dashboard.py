"""Airflow plugin: a link to reconcile's drift dashboard (`reconcile serve`) in Airflow's menu.

Airflow loads it from its plugins folder (`AIRFLOW__CORE__PLUGINS_FOLDER`; `make airflow` and
docker/docker-compose.yml point it here). The link goes to ``$RECONCILE_DASHBOARD_URL``
(default ``http://127.0.0.1:8765``, where `reconcile serve` listens by default), so the person
on call goes from a red DAG run to the spec's drift, findings and pipe health in one click.
The dashboard opens in its own tab: it forbids being framed.
"""

from __future__ import annotations

import os

from airflow.plugins_manager import AirflowPlugin

DEFAULT_URL = "http://127.0.0.1:8765"


def dashboard_url() -> str:
    """Where the dashboard is, without a trailing slash."""
    return (os.environ.get("RECONCILE_DASHBOARD_URL") or DEFAULT_URL).strip().rstrip("/")


class ReconcileDashboardPlugin(AirflowPlugin):
    """Adds "Reconcile dashboard" under Browse in the Airflow UI."""

    name = "reconcile_dashboard"
    external_views = [
        {
            "name": "Reconcile dashboard",
            "href": dashboard_url() + "/",
            "destination": "nav",
            "category": "browse",
        }
    ]
