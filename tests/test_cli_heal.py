"""The CLI contract of the healing loop: `correct`, `relay`, `project`, `verify`, `run`, `health`,
`demo`, by exit codes and output, on the embedded default (SQLite + the embedded log)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .builders import execute
from .heal_cases import build_pair, expected_findings, heal_spec, write_spec_file

RECONCILE = [sys.executable, "-m", "reconcile"]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECONCILE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{cwd / 'store.db'}", **(env or {})},
    )


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, str]:
    t, p = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build_pair(t, p)
    spec = heal_spec(t, p, topic="stock.reconciled", group="stock-projector", transport="embedded")
    return write_spec_file(tmp_path / "stock.yaml", spec), p


def test_correct_relay_project_verify_step_by_step(tmp_path: Path, pair: tuple[Path, str]) -> None:
    spec, _ = pair
    n = expected_findings()
    assert cli("audit", str(spec), cwd=tmp_path).returncode == 1

    dry = cli("correct", str(spec), "--dry-run", "--format", "json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["events"] == n and json.loads(dry.stdout)["written"] == 0

    done = cli("correct", str(spec), "--format", "table", cwd=tmp_path)
    assert done.returncode == 0 and f"wrote {n} corrective event(s)" in done.stdout, done.stdout

    sent = cli("relay", "--spec", str(spec), "--format", "json", cwd=tmp_path)
    assert sent.returncode == 0 and json.loads(sent.stdout)["sent"] == n, sent.stderr

    proj = cli("project", str(spec), "--idle", "1s", cwd=tmp_path)
    assert proj.returncode == 0, proj.stderr
    assert f"{n} applied" in proj.stdout and "consuming stock.reconciled" in proj.stderr

    ok = cli("verify", str(spec), "--timeout", "20s", "--format", "json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    v = json.loads(ok.stdout)
    assert (v["checked"], v["resolved"], v["escalated"], v["lag"]) == (n, n, 0, 0)
    assert cli("audit", str(spec), cwd=tmp_path).returncode == 0  # healed


def test_correct_refused_by_the_guard_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    t, p = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build_pair(t, p)
    spec = write_spec_file(
        tmp_path / "s.yaml",
        heal_spec(t, p, topic="t", group="g", transport="embedded", max_ratio=0.01),
    )
    cli("audit", str(spec), cwd=tmp_path)
    r = cli("correct", str(spec), cwd=tmp_path)
    assert r.returncode == 1 and "blast-radius guard" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(cli("relay", "--format", "json", cwd=tmp_path).stdout)["sent"] == 0


def test_run_gates_first_then_audits_corrects_and_relays(tmp_path: Path, pair: tuple[Path, str]) -> None:
    spec, _ = pair
    r = cli("run", str(spec), "--format", "json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr  # drift found (and corrected, not yet verified)
    doc = json.loads(r.stdout)
    assert doc["preflight"]["success"] is True
    assert doc["correction"]["written"] == expected_findings() == doc["relay"]["sent"]
    assert "preflight skipped" not in r.stderr

    skipped = cli("run", str(spec), "--skip-preflight", "--format", "json", cwd=tmp_path)
    assert "preflight skipped for stock-stock-projector (--skip-preflight)" in skipped.stderr
    assert json.loads(skipped.stdout)["preflight"] is None


def test_run_stops_at_a_failed_gate_with_exit_2_and_writes_nothing(
    tmp_path: Path, pair: tuple[Path, str]
) -> None:
    spec, proj = pair
    assert cli("audit", str(spec), cwd=tmp_path).returncode == 1  # a full audit: the row-count baseline
    execute(proj, "DELETE FROM stock_view")  # a truncated projection looks like total drift
    r = cli("run", str(spec), "--format", "json", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.startswith("reconcile: error: preflight") and r.stderr.count("\n") == 1, r.stderr
    assert json.loads(cli("relay", "--format", "json", cwd=tmp_path).stdout)["sent"] == 0
    # the same run without the gate is what the guard is for
    forced = cli("run", str(spec), "--skip-preflight", cwd=tmp_path)
    assert forced.returncode == 1 and "blast-radius guard" in forced.stderr


def test_health_exit_codes_and_json(tmp_path: Path, pair: tuple[Path, str]) -> None:
    spec, _ = pair
    never = cli("health", str(spec), "--format", "json", cwd=tmp_path)
    assert never.returncode == 1  # a scheduled spec never audited is a problem, not a note
    assert any("never audited" in p for p in json.loads(never.stdout)["specs"][0]["problems"])
    cli("audit", str(spec), cwd=tmp_path)
    healthy = cli("health", str(spec), "--format", "json", cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    doc = json.loads(healthy.stdout)
    (h,) = doc["specs"]
    assert h["status"] == "healthy" and h["lag"] == 0  # the embedded log's lag is measured too

    cli("correct", str(spec), cwd=tmp_path)  # written, never relayed: a stuck outbox
    stuck = cli("health", str(spec), "--outbox-max-age", "0s", "--format", "json", cwd=tmp_path)
    assert stuck.returncode == 1
    assert any("is the relay running" in p for p in json.loads(stuck.stdout)["specs"][0]["problems"])

    cli("relay", cwd=tmp_path)  # published, not consumed: the projector lags
    lagging = cli("health", str(spec), "--max-lag", "5", "--format", "table", cwd=tmp_path)
    assert lagging.returncode == 1 and "behind on stock.reconciled" in lagging.stdout, lagging.stdout

    (tmp_path / "broken.yaml").write_text("name: broken\ntruth: {url: sqlite://}\n")
    unknown = cli("health", str(spec), str(tmp_path / "broken.yaml"), "--format", "json", cwd=tmp_path)
    assert unknown.returncode == 2
    assert any(s["status"] == "unknown" for s in json.loads(unknown.stdout)["specs"])


def test_health_without_specs_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = cli("health", str(tmp_path / "empty"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no spec files" in r.stderr


def test_conn_id_sides_resolve_from_airflow_conn_variables(tmp_path: Path, pair: tuple[Path, str]) -> None:
    spec, proj = pair
    text = spec.read_text().replace(f"url: {proj}", "conn_id: proj_db")
    spec.write_text(text)
    missing = cli("audit", str(spec), cwd=tmp_path)
    assert missing.returncode == 2 and "AIRFLOW_CONN_PROJ_DB" in missing.stderr
    as_json = json.dumps({"conn_type": "sqlite", "host": proj.removeprefix("sqlite:///")})
    for value in (proj, as_json):
        r = cli("audit", str(spec), "--format", "json", cwd=tmp_path, env={"AIRFLOW_CONN_PROJ_DB": value})
        assert r.returncode == 1, r.stderr
        assert len(json.loads(r.stdout)["findings"]) == expected_findings()


def test_demo_finds_exactly_the_lost_entities_and_heals_them(tmp_path: Path) -> None:
    r = cli("demo", "--workdir", str(tmp_path / "demo"), "--seconds", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "precision 1.00, recall 1.00" in r.stdout and "Final audit: no drift" in r.stdout


def test_verify_tells_lag_from_drift(tmp_path: Path, pair: tuple[Path, str]) -> None:
    spec, _ = pair
    cli("audit", str(spec), cwd=tmp_path)
    cli("correct", str(spec), cwd=tmp_path)
    cli("relay", cwd=tmp_path)
    stuck = cli("verify", str(spec), "--timeout", "1s", cwd=tmp_path)  # no projector runs
    assert stuck.returncode == 2, stuck.stdout + stuck.stderr
    assert "cannot tell" in stuck.stderr and "'stock-projector'" in stuck.stderr and "behind" in stuck.stderr
    listed = json.loads(cli("findings", str(spec), "--format", "json", cwd=tmp_path).stdout)["findings"]
    assert {f["status"] for f in listed} == {"correcting"}  # nothing escalated on a guess
    cli("project", str(spec), "--idle", "1s", cwd=tmp_path)
    assert cli("verify", str(spec), cwd=tmp_path).returncode == 0


def test_a_keyed_run_is_guarded_against_the_whole_pair(tmp_path: Path) -> None:
    t, p = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build_pair(t, p)
    spec = write_spec_file(
        tmp_path / "s.yaml", heal_spec(t, p, topic="t", group="g", transport="embedded", max_ratio=0.1)
    )
    keyed = ["run", str(spec), "--keys", "S00003,S00013", "--skip-preflight", "--format", "json"]
    first = cli(*keyed, cwd=tmp_path)  # no full audit yet: 2 of 2 compared is all of it
    assert first.returncode == 1 and "2 corrections of 2 compared" in first.stderr
    cli("audit", str(spec), cwd=tmp_path)  # the whole pair: 200 entities
    again = cli(*keyed, cwd=tmp_path)
    assert json.loads(again.stdout)["correction"]["written"] == 2, again.stderr


def test_project_runs_until_stopped_and_logs_what_it_applies(tmp_path: Path, pair: tuple[Path, str]) -> None:
    import signal
    import time

    spec, _ = pair
    cli("audit", str(spec), cwd=tmp_path)
    cli("correct", str(spec), cwd=tmp_path)
    cli("relay", cwd=tmp_path)
    proc = subprocess.Popen(
        [*RECONCILE, "project", str(spec)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}"},
    )
    try:
        time.sleep(12)  # well past the old 5 s idle stop
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Ctrl-C stops" in err and f"{expected_findings()} applied" in err + out
