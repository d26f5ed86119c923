"""Issue 14, start-up: an audit imports only what it needs.

A small SQLite audit spends most of its time importing; Great Expectations, Airflow, pandas,
avro and the Kafka client take seconds between them and an audit of two SQL tables uses none of
them. This runs the real command (``python -m reconcile audit``, what the ``reconcile`` script
runs) in a fresh interpreter and looks at ``sys.modules`` when it exits. Timing is measured by
bench/startup.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .audit_cases import build, spec_file

HEAVY = ("great_expectations", "airflow", "pandas", "numpy", "avro", "fastavro", "confluent_kafka")

PROBE = """
import json, runpy, sys
sys.argv = ["reconcile", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("reconcile", run_name="__main__")
except SystemExit as e:
    code = e.code
top = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"exit": code, "modules": top}), file=sys.stderr)
"""


def _probe(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}"},
    )
    return r, json.loads(r.stderr.strip().splitlines()[-1])


def test_audit_imports_nothing_heavy(tmp_path: Path) -> None:
    t, p = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build(t, p)
    spec = spec_file(tmp_path, t, p)
    for fmt in ("json", "table"):
        r, probe = _probe(tmp_path, "audit", str(spec), "--format", fmt)
        assert probe["exit"] == 1, r.stderr  # the scenario has drift: the audit really ran
        if fmt == "json":
            assert json.loads(r.stdout)["summary"]["missing"] == 1
        loaded = set(probe["modules"])  # type: ignore[call-overload]
        assert "sqlalchemy" in loaded  # the probe sees the audit's own imports
        assert not loaded & set(HEAVY), f"--format {fmt} imported {sorted(loaded & set(HEAVY))}"
