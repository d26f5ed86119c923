"""Issue 15, case 7's output half and case 2's CLI: `run --format json` prints its document when
the guard trips, tables cut huge values, a second audit of a spec exits 2 unless --wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reconcile.store import AuditStore

from .builders import execute
from .heal_cases import build_pair, heal_spec, write_spec_file


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconcile", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{cwd / 'store.db'}", "COLUMNS": "400"},
    )


def _spec(tmp_path: Path, **correction: object) -> tuple[Path, str]:
    t, p = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build_pair(t, p)
    spec = heal_spec(t, p, topic="stock.reconciled", group="g", transport="embedded", **correction)
    return write_spec_file(tmp_path / "s.yaml", spec), p


def test_run_json_prints_the_document_when_the_guard_trips(tmp_path: Path) -> None:
    spec, _ = _spec(tmp_path, max_ratio=0.01)
    r = cli("run", str(spec), "--skip-preflight", "--format", "json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 1 and doc["error"]["type"] == "GuardTripped"
    assert "blast-radius guard" in doc["error"]["message"] and doc["audit"]["findings"]
    assert doc["correction"] is None and doc["relay"] is None
    assert "blast-radius guard" in r.stderr and "Traceback" not in r.stderr


def test_tables_cut_huge_values(tmp_path: Path) -> None:
    spec, proj = _spec(tmp_path)
    execute(proj, "UPDATE stock_view SET title = :big WHERE product_id = 'S00005'", big="x" * 1_000_000)
    r = cli("audit", str(spec), "--format", "table", cwd=tmp_path)
    assert r.returncode == 1
    assert len(r.stdout.splitlines()) < 200 and len(r.stdout) < 60_000
    assert "(1,000,000 chars)" in r.stdout
    whole = json.loads(cli("audit", str(spec), "--format", "json", cwd=tmp_path).stdout)
    big = next(f for f in whole["findings"] if f["key"]["sku"] == "S00005")
    assert len(big["projection"]["title"]) == 1_000_000  # JSON keeps every value whole


def test_a_second_audit_of_a_spec_exits_2_unless_it_waits(tmp_path: Path) -> None:
    spec, _ = _spec(tmp_path)
    store = AuditStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with store.audit_lock("stock-g"):
            r = cli("audit", str(spec), cwd=tmp_path)
            assert r.returncode == 2 and "Traceback" not in r.stderr
            assert r.stderr.count("\n") == 1
            assert "spec stock-g: another audit is running (pid " in r.stderr and "--wait" in r.stderr
            waiting = subprocess.Popen(
                [sys.executable, "-m", "reconcile", "audit", str(spec), "--wait", "--format", "json"],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}"},
            )
            try:
                waiting.wait(3)
                raise AssertionError("--wait did not wait")
            except subprocess.TimeoutExpired:
                pass
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 1, err
        assert json.loads(out)["summary"]["compared"] > 0
    finally:
        store.dispose()
