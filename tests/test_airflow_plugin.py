"""The Airflow plugin in dags/plugins/: Airflow loads it from its plugins folder and serves the
link to the dashboard through its plugins API (what its UI reads to draw the menu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.airflow]

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, runpy
from airflow import plugins_manager
from airflow.api_fastapi.core_api.datamodels.plugins import PluginResponse
info = [i for i in plugins_manager.get_plugin_info() if i["name"] == "reconcile_dashboard"]
views = [v for i in info for v in PluginResponse.model_validate(i).external_views]
del os.environ["RECONCILE_DASHBOARD_URL"]
plugin = runpy.run_path(os.path.join(os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"], "reconcile_dashboard.py"))
print(json.dumps({
    "views": [v.model_dump(mode="json") for v in views],
    "errors": {str(k): str(v) for k, v in plugins_manager._get_plugins()[1].items()},
    "default": plugin["ReconcileDashboardPlugin"].external_views[0]["href"],
}))
"""


def test_airflow_loads_the_plugin_and_serves_its_link(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECONCILE_DASHBOARD"))},
        "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "dags" / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "RECONCILE_DASHBOARD_URL": "http://dash.example:9999/",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["errors"] == {}
    (view,) = got["views"]
    assert view["href"] == "http://dash.example:9999/" and view["destination"] == "nav"
    assert view["name"] == "Reconcile dashboard" and view["category"] == "browse"
    assert got["default"] == "http://127.0.0.1:8765/"  # where `reconcile serve` listens by default


def test_the_dag_processor_skips_the_plugins_folder() -> None:
    assert "plugins/" in (REPO / "dags" / ".airflowignore").read_text().split()
