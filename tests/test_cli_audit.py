"""The CLI contract of `reconcile audit` / `validate` / `findings`: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .audit_cases import build, spec_file

RECONCILE = [sys.executable, "-m", "reconcile"]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECONCILE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {}), "RECONCILE_STORE_URL": f"sqlite:///{cwd / 'store.db'}"},
    )


@pytest.fixture
def sqlite_pair(tmp_path: Path) -> Path:
    t, p = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build(t, p)
    return spec_file(tmp_path, t, p)


def test_json_contract_and_exit_codes(tmp_path: Path, sqlite_pair: Path) -> None:
    r = cli("audit", str(sqlite_pair), "--format", "json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {"run_id", "spec", "summary", "findings"}
    assert doc["spec"] == "inventory"
    assert {
        k: doc["summary"][k] for k in ("compared", "pending", "missing", "orphan", "mismatch", "duplicate")
    } == {"compared": 22, "pending": 1, "missing": 1, "orphan": 1, "mismatch": 1, "duplicate": 1}
    mm = next(f for f in doc["findings"] if f["kind"] == "mismatch")
    assert mm["key"] == {"warehouse": "W1", "sku": "A-7"}
    assert mm["columns"] == ["on_hand"]
    assert mm["truth"] == {"on_hand": 7, "price": 7.5, "title": "Item 7"}
    assert mm["projection"]["on_hand"] == 70

    clean = cli("audit", str(sqlite_pair), "--format", "json", "--keys", "W1:A-1,W1:A-2", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["summary"]["compared"] == 2

    table = cli("audit", str(sqlite_pair), "--format", "table", cwd=tmp_path)
    assert table.returncode == 1 and "mismatch" in table.stdout and "A-7" in table.stdout

    listed = cli("findings", str(sqlite_pair), "--format", "json", cwd=tmp_path)
    assert listed.returncode == 0
    assert len(json.loads(listed.stdout)["findings"]) == 4

    ack = cli(
        "findings", str(sqlite_pair), "--acknowledge", "W1:A-99", "--reason", "test fixture", cwd=tmp_path
    )
    assert ack.returncode == 0, ack.stderr
    again = json.loads(cli("audit", str(sqlite_pair), "--format", "json", cwd=tmp_path).stdout)
    assert {f["key"]["sku"]: f["status"] for f in again["findings"]}["A-99"] == "acknowledged"


def _assert_one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


BAD_CASES = {
    "unknown key": (
        lambda s: s.replace("name: inventory", "name: inventory\ncolour: red"),
        ["inventory.yaml", "colour", "unknown key"],
    ),
    "missing key": (lambda s: s.replace("  table: stock_view\n", ""), ["inventory.yaml", "projection"]),
    "yaml error": (lambda s: s + "\n  : : [\n", ["inventory.yaml", "YAML error"]),
    "no table": (
        lambda s: s.replace("table: stock_view", "table: stock_vue"),
        ["projection.table", "stock_vue", "does not exist"],
    ),
    "no column": (
        lambda s: s.replace("projection: unit_price", "projection: unit_prce"),
        ["columns.price.projection", "unit_prce", "did you mean 'unit_price'"],
    ),
    "no truth column": (lambda s: s.replace("title: {", "titel: {"), ["columns.titel", "'titel' not found"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, sqlite_pair: Path, case: str
) -> None:
    edit, needles = BAD_CASES[case]
    sqlite_pair.write_text(edit(sqlite_pair.read_text()))
    for cmd in ("audit", "validate"):
        r = cli(cmd, str(sqlite_pair), "--format", "json", cwd=tmp_path)
        _assert_one_line_error(r, *needles)
        assert r.stdout == ""
    assert not (tmp_path / "store.db").exists()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql", "mariadb"])
def test_unreachable_database_masks_password(tmp_path: Path, sqlite_pair: Path, scheme: str) -> None:
    text = sqlite_pair.read_text().replace(
        f"sqlite:///{tmp_path / 'truth.db'}", f"{scheme}://auditor:hunter2@127.0.0.1:1/orders"
    )
    sqlite_pair.write_text(text)
    r = cli("audit", str(sqlite_pair), cwd=tmp_path)
    _assert_one_line_error(r, f"truth: database {scheme}://auditor:***@127.0.0.1:1/orders")
    assert "hunter2" not in r.stderr
    assert not (tmp_path / "store.db").exists()


def test_bad_format_and_missing_spec(tmp_path: Path) -> None:
    _assert_one_line_error(
        cli("audit", "nope.yaml", "--format", "json", cwd=tmp_path), "nope.yaml", "not found"
    )
    r = cli("audit", "nope.yaml", "--format", "xml", cwd=tmp_path)
    assert r.returncode == 2


def test_validate_ok(tmp_path: Path, sqlite_pair: Path) -> None:
    r = cli("validate", str(sqlite_pair), "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid"] is True and doc["columns"]["price"] == "unit_price"
    assert not (tmp_path / "store.db").exists()
