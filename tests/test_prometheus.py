"""/metrics as a monitoring stack sees it: the alert rules under promtool, and a real Prometheus
(Debian's) scraping a live `reconcile serve` over a store with drift — the series, their values,
the drift alert firing, and every PromQL expression of the Grafana dashboard."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconcile.serve import ServeSettings

from .conftest import free_port
from .dashboard_cases import HEALED, World, build_world
from .serve_support import REPO, get, live_server, program

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(180)]

RULES = REPO / "docker" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "docker" / "prometheus" / "alerts.test.yml"
GRAFANA = REPO / "docker" / "grafana" / "reconcile.json"
TOKEN = "prom-t0ken"


def test_the_alert_rules_pass_promtool() -> None:
    promtool = program("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {
        t["alertname"] for c in yaml.safe_load(RULE_TESTS.read_text())["tests"] for t in c["alert_rule_test"]
    }
    assert names == tested  # every rule has a unit test
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert set(rule["annotations"]) == {"summary", "runbook"}, rule["alert"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("prom") / "w")


class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def api(self, path: str, **params: str) -> Any:
        status, body = get(f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (path, params, doc)
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


@pytest.fixture(scope="module")
def prometheus(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = program("prometheus")
    settings = ServeSettings(store_url=world.store_url, specs=(str(world.specs_dir),), token=TOKEN)
    with live_server(settings) as dashboard:
        target = dashboard.removeprefix("http://")
        home = tmp_path_factory.mktemp("prometheus")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "reconcile",
                    "authorization": {"credentials": TOKEN},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (home / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            prom = Prometheus(f"http://127.0.0.1:{port}")
            _wait_for(
                lambda: prom.query('up{job="reconcile"} == 1'),
                "scrape",
                proc=proc,
                log=home / "prometheus.log",
            )
            yield prom
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_for(
    check: Any,
    what: str,
    timeout: float = 60,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and Prometheus'
    log, when it died or never got there)."""
    tail = lambda: log.read_text()[-3000:] if log else ""  # noqa: E731
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"prometheus exited {proc.returncode}:\n{tail()}")
        try:
            last = check()
        except (OSError, AssertionError, json.JSONDecodeError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.3)
    raise AssertionError(f"prometheus: no {what} within {timeout:.0f}s (last: {last})\n{tail()}")


def test_prometheus_scrapes_the_numbers_of_the_store(prometheus: Prometheus) -> None:
    p = prometheus
    assert p.value('reconcile_findings{spec="stock",kind="mismatch",status="open"}') == 1
    assert p.value('reconcile_findings{spec="stock",kind="missing",status="correcting"}') == 2
    assert p.value('reconcile_findings{spec="stock",kind="mismatch",status="acknowledged"}') == 1
    assert p.value('sum(reconcile_findings{spec="clean"})') == 0
    assert p.value('reconcile_entities_compared{spec="stock"}') == 60
    assert p.value('reconcile_pending_entities{spec="stock"}') == 0
    assert p.value('reconcile_runs_total{spec="stock",status="drift"}') == 3
    assert p.value('reconcile_outbox_unsent{spec="stock"}') == 2
    assert p.value('reconcile_projector_lag{spec="stock",consumer_group="stock-projector"}') == 0
    assert p.value('reconcile_time_to_heal_seconds_count{spec="stock"}') == HEALED
    assert 0 < p.value('histogram_quantile(0.5, reconcile_time_to_heal_seconds_bucket{spec="stock"})') <= 60
    assert p.value('time() - reconcile_last_audit_timestamp_seconds{spec="stock"}') < 600
    assert {s["metric"]["spec"] for s in p.query("reconcile_findings")} == {"stock", "clean", "gated"}


def test_the_drift_alert_fires_for_the_spec_that_drifted(prometheus: Prometheus, world: World) -> None:
    def firing() -> list[dict[str, Any]]:
        alerts = prometheus.api("alerts")["alerts"]
        return [
            a for a in alerts if a["labels"]["alertname"] == "ReconcileDriftFound" and a["state"] == "firing"
        ]

    (alert,) = _wait_for(firing, "firing drift alert", timeout=30)
    assert alert["labels"]["spec"] == "stock" and alert["labels"]["severity"] == "warning"
    assert (
        alert["annotations"]["summary"] == "stock: 2 open finding(s): the projection drifted from its truth"
    )
    assert "/specs/stock" in alert["annotations"]["runbook"]
    states = {(a["labels"]["alertname"], a["state"]) for a in prometheus.api("alerts")["alerts"]}
    # Nothing else fires; the two findings being corrected start the 30 minutes of "not healing".
    assert states == {("ReconcileDriftFound", "firing"), ("ReconcileDriftNotHealing", "pending")}


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_grafana_expression_parses_and_returns_series(prometheus: Prometheus) -> None:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = _expressions(dashboard)
    assert len(exprs) >= 10
    for var in dashboard["templating"]["list"]:  # the template query must find the specs too
        q = var["query"]["query"]
        assert q.startswith("label_values(reconcile_findings, spec)")
    # Expressions over a range need two samples in it; a few scrapes after the first are enough.
    _wait_for(lambda: prometheus.query("count_over_time(up[1m]) >= 3"), "3 scrapes")
    for title, expr in exprs:
        concrete = expr.replace("$spec", ".*")
        result = prometheus.query(concrete)
        assert result, f"{title}: {concrete} returned no series"
