"""The real ``airflow standalone`` (scheduler, DAG processor, triggerer, API server, LocalExecutor)
started by ``scripts/airflow.sh`` — what ``make airflow`` runs — on free, non-default ports, runs
a spec DAG to success.

A task runner reaches its task's state through the API server's execution API: when only the
API port moves, every task is killed before it starts (issue 16). So this test moves all three
ports Airflow opens (API, worker log server, triggerer log server) to ports picked at run time,
and needs nothing on 8080/8793/8794. The spec heals real drift with no services: SQLite truth,
projection and audit store, the embedded event log, and ``reconcile project`` consuming the
corrections while the DAG's verify task waits for them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .heal_cases import build_pair, expected_findings

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(330)]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "airflow.sh"
BIN = Path(os.environ.get("RECONCILE_VENV_BIN", REPO / ".venv" / "bin"))

# One budget for start-up and the run; each wait fails with what it saw well before pytest's
# timeout, which also covers the final audit and stopping the process group.
BUDGET_S = 240
BAD_TI_STATES = {"failed", "up_for_retry", "upstream_failed", "removed"}


def free_ports(n: int) -> list[int]:
    """n distinct ports the kernel says are free now (bound to port 0, then released)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("", 0))  # every address, as Airflow binds them
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Airflow or reconcile setting (another test may
    have set some in os.environ), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECONCILE_"))}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
    return env


def group_alive(pgid: int) -> list[int]:
    """Pids in the process group that are still running (zombies do not count: nothing here may
    reap orphans)."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


def stop_group(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGTERM the whole process group (standalone, its components, task runners), SIGKILL what
    is left after a grace period. Returns the pids that survived even SIGKILL (none expected)."""
    pgid = proc.pid  # start_new_session=True: the group is led by the script's process
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)
        if not group_alive(pgid):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return group_alive(pgid)


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(text[-lines:])


@dataclass
class Standalone:
    home: Path
    port: int
    worker_log_port: int
    trigger_log_port: int
    dashboard_port: int
    env: dict[str, str]
    output: Path
    proc: subprocess.Popen[bytes]
    deadline: float
    more_logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def diagnostics(self, dag_id: str | None = None) -> str:
        """The tail of every task log of the DAG (or all), then of standalone's own output."""
        parts = []
        logs = sorted((self.home / "logs").glob(f"dag_id={dag_id or '*'}/**/*.log"))
        for log in logs[-8:]:
            parts.append(f"--- {log.relative_to(self.home)} (tail)\n{tail(log, 30)}")
        for log in self.more_logs:
            parts.append(f"--- {log.name} (tail)\n{tail(log, 20)}")
        parts.append(f"--- airflow standalone output (tail)\n{tail(self.output, 60)}")
        return "\n".join(parts)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    """``scripts/airflow.sh standalone`` in its own session on three free ports; the whole
    process group is stopped afterwards, whatever happened."""
    home = tmp_path / "airflow-home"
    specs = tmp_path / "specs"
    specs.mkdir()
    port, worker_log_port, trigger_log_port, dashboard_port = free_ports(4)
    env = clean_env(
        AIRFLOW_HOME=str(home),
        AIRFLOW_PORT=str(port),
        AIRFLOW_WORKER_LOG_PORT=str(worker_log_port),
        AIRFLOW_TRIGGER_LOG_PORT=str(trigger_log_port),
        RECONCILE_DASHBOARD_PORT=str(dashboard_port),
        RECONCILE_SPECS_DIR=str(specs),
        RECONCILE_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
    )
    output = tmp_path / "standalone.log"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [str(SCRIPT), "standalone"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    af = Standalone(
        home, port, worker_log_port, trigger_log_port, dashboard_port, env, output, proc, started + BUDGET_S
    )
    try:
        yield af
    finally:
        survivors = stop_group(proc)
        print(f"\nairflow standalone: {time.monotonic() - started:.0f} s from start to stopped")
    assert survivors == [], f"processes of the standalone group survived SIGKILL: {survivors}"
    assert not listening(port), f"port {port} still answers after the standalone stopped"
    assert not listening(dashboard_port), f"the dashboard on {dashboard_port} outlived the standalone"


class Api:
    """Airflow 3's REST API v2 with a token from the simple auth manager (the admin user and
    the password standalone generated into AIRFLOW_HOME)."""

    def __init__(self, af: Standalone) -> None:
        import httpx

        self.af = af
        self.http = httpx.Client(base_url=af.url, timeout=60)

    def wait_up(self) -> None:
        import httpx

        password_file = self.af.home / "simple_auth_manager_passwords.json.generated"
        last: object = None
        while self.af.left() > 0:
            if self.af.proc.poll() is not None:
                pytest.fail(
                    f"airflow standalone exited with {self.af.proc.returncode}\n{self.af.diagnostics()}"
                )
            try:
                health = self.http.get("/api/v2/monitor/health")
                if health.status_code == 200 and password_file.exists():
                    password = json.loads(password_file.read_text())["admin"]
                    r = self.http.post("/auth/token", json={"username": "admin", "password": password})
                    r.raise_for_status()
                    self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
                    return
                last = health.status_code
            except (httpx.HTTPError, OSError, ValueError, KeyError) as e:
                last = e
            time.sleep(1)
        pytest.fail(f"the API on port {self.af.port} did not answer: {last!r}\n{self.af.diagnostics()}")

    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def wait_dag(self, dag_id: str) -> None:
        """A DAG exists for the API only once the DAG processor parsed and serialized it."""
        while self.af.left() > 0:
            if self.http.get(f"/api/v2/dags/{dag_id}").status_code == 200:
                return
            time.sleep(1)
        errors = self.get("/api/v2/importErrors")
        pytest.fail(f"{dag_id} never appeared; import errors: {errors}\n{self.af.diagnostics()}")

    def trigger(self, dag_id: str) -> str:
        r = self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        r.raise_for_status()
        assert r.json()["is_paused"] is False
        r = self.http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        r.raise_for_status()
        return str(r.json()["dag_run_id"])

    def wait_run(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Task states once the run succeeded; fails at the first failed or retried task (with
        the task logs) instead of sitting through the DAG's retry delays."""
        base = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        states: dict[str, str] = {}
        state = None
        import httpx

        while self.af.left() > 0:
            try:
                state = self.get(base)["state"]
                tis = self.get(f"{base}/taskInstances")["task_instances"]
            except httpx.TransportError:  # a busy API server (a loaded machine): ask again
                time.sleep(2)
                continue
            states = {ti["task_id"]: str(ti["state"]) for ti in tis}
            bad = {t: s for t, s in states.items() if s in BAD_TI_STATES}
            if state == "failed" or bad:
                pytest.fail(f"run {run_id} is {state}, tasks {states}\n{self.af.diagnostics(dag_id)}")
            if state == "success":
                return states
            time.sleep(2)
        pytest.fail(
            f"run {run_id} still {state} after the budget, tasks {states}\n{self.af.diagnostics(dag_id)}"
        )


@pytest.fixture
def api(standalone: Standalone) -> Iterator[Api]:
    client = Api(standalone)
    try:
        yield client
    finally:
        client.http.close()


def test_standalone_on_free_ports_runs_a_spec_dag_to_success(
    standalone: Standalone, api: Api, tmp_path: Path
) -> None:
    af = standalone
    assert not {8080, 8793, 8794} & {af.port, af.worker_log_port, af.trigger_log_port}
    truth, proj = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build_pair(truth, proj, n=40)
    name = f"standalone-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "specs" / f"{name}.yaml"
    spec.write_text(
        f"""
name: {name}
schedule: null            # runs only when triggered
truth: {{url: "{truth}", table: stock}}
projection: {{url: "{proj}", table: stock_view}}
key: [{{sku: product_id}}]
columns: {{on_hand: {{}}, title: {{}}}}
correction:
  topic: stock.reconciled
  event_type: StockLevelReconciled
  consumer_group: stock-projector
  transport: embedded
  max_ratio: 0.5
  max_count: 1000
"""
    )
    dag_id = f"reconcile_{name}"

    api.wait_up()
    up = time.monotonic()
    for port in (af.worker_log_port, af.trigger_log_port):
        assert listening(port), f"no log server on the configured port {port}\n{af.diagnostics()}"
    api.wait_dag(dag_id)

    # The projector the corrections are for, as README runs it; verify waits for it to catch up.
    projector_log = tmp_path / "projector.log"
    af.more_logs.append(projector_log)
    with projector_log.open("wb") as out:
        projector = subprocess.Popen(
            [str(BIN / "reconcile"), "project", str(spec), "--idle", "10m"],
            cwd=tmp_path,
            env=clean_env(RECONCILE_STORE_URL=af.env["RECONCILE_STORE_URL"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        run_id = api.trigger(dag_id)
        states = api.wait_run(dag_id, run_id)
    finally:
        os.killpg(projector.pid, signal.SIGTERM)
        try:
            projector.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(projector.pid, signal.SIGKILL)
            projector.wait(timeout=10)
    print(f"\n{dag_id}: run {run_id} succeeded {time.monotonic() - up:.0f} s after the API answered")

    assert set(states) >= {"preflight", "audit", "correct", "relay", "verify", "report"}, states
    assert set(states.values()) == {"success"}, states
    audit = api.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/audit/xcomEntries/return_value",
        deserialize=True,
        stringify=False,
    )["value"]
    assert len(audit["findings"]) == expected_findings(40), audit.get("summary")

    # The drift the DAG found is gone: corrected, relayed, projected, verified.
    final = subprocess.run(
        [str(BIN / "reconcile"), "audit", str(spec), "--format", "json"],
        cwd=tmp_path,
        env=clean_env(RECONCILE_STORE_URL=af.env["RECONCILE_STORE_URL"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert final.returncode == 0, f"drift remains after the DAG run:\n{final.stdout[-3000:]}{final.stderr}"

    # make airflow starts the dashboard beside Airflow, over the same store, linked from its menu.
    import httpx

    dashboard = f"http://127.0.0.1:{af.dashboard_port}"
    runs = httpx.get(f"{dashboard}/api/specs/{name}/runs", timeout=20).json()["runs"]
    assert runs and runs[-1]["started_by"] == "on demand", runs  # a triggered run, not a schedule
    plugins = api.get("/api/v2/plugins")["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "reconcile_dashboard"]
    assert [v["href"] for v in plugin["external_views"]] == [f"{dashboard}/"]
