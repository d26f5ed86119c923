"""Preflight gates: the default suite, user expectations, results and Data Docs (SQLite files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.app import Context, audit, gate, preflight
from reconcile.errors import PreflightFailed, SpecError
from reconcile.gates.expectations import ExpectationResult, default_expectations
from reconcile.spec import Spec, load_spec, spec_from_dict
from reconcile.store import AuditStore
from reconcile.store.preflight import preflight_history

from .audit_cases import SPEC, build
from .builders import execute, write_spec

CHECKS = """
checks:
  min_row_ratio: 0.5
  expectations:
    - side: projection
      type: expect_column_values_to_be_between
      kwargs: {column: on_hand, min_value: 0, max_value: 1000}
"""


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    t, p = f"sqlite:///{tmp_path / 'truth.db'}", f"sqlite:///{tmp_path / 'proj.db'}"
    build(t, p)
    return t, p


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    return AuditStore(f"sqlite:///{tmp_path / 'store.db'}")


def spec_at(tmp_path: Path, t: str, p: str, extra: str = CHECKS) -> Path:
    return write_spec(tmp_path / "inventory.yaml", SPEC.format(truth=t, proj=p) + extra)


def by_type(result, side: str, type_: str) -> list[ExpectationResult]:  # type: ignore[no-untyped-def]
    return [o for o in result.side(side).outcomes if o.type == type_]


# -- the default suite, without a database ---------------------------------------------------
def _spec(**extra: object) -> Spec:
    return spec_from_dict(
        {
            "name": "inv",
            "truth": {"url": "sqlite://", "table": "t"},
            "projection": {"url": "sqlite://", "table": "p"},
            "key": ["w", {"sku": "product_id"}],
            "columns": {"qty": {"projection": "on_hand"}},
            **extra,
        }
    )


def test_default_suite_from_the_spec() -> None:
    spec = _spec()
    got = {
        (e.side, e.type, json.dumps(dict(e.kwargs), sort_keys=True)) for e in default_expectations(spec, None)
    }
    assert ("truth", "expect_compound_columns_to_be_unique", '{"column_list": ["w", "sku"]}') in got
    assert ("truth", "expect_column_values_to_not_be_null", '{"column": "sku"}') in got
    assert ("projection", "expect_column_to_exist", '{"column": "on_hand"}') in got
    assert ("projection", "expect_column_to_exist", '{"column": "product_id"}') in got
    assert not any(t == "expect_table_row_count_to_be_between" for _, t, _ in got)  # no baseline yet

    single = spec_from_dict(
        {
            "name": "one",
            "truth": {"url": "sqlite://", "table": "t"},
            "projection": {"url": "sqlite://", "table": "p"},
            "key": ["id"],
        }
    )
    types = [e.type for e in default_expectations(single, None)]
    assert (
        "expect_column_values_to_be_unique" in types and "expect_compound_columns_to_be_unique" not in types
    )


def test_row_count_floor_from_the_baseline() -> None:
    rows = {"truth_rows": 1000, "projection_rows": 999}
    floors = {
        e.side: e.kwargs["min_value"]
        for e in default_expectations(_spec(), rows)
        if e.type == "expect_table_row_count_to_be_between"
    }
    assert floors == {"truth": 500, "projection": 499}
    zero = _spec(checks={"min_row_ratio": 0})
    floors0 = [e.kwargs["min_value"] for e in default_expectations(zero, rows) if "row_count" in e.type]
    assert floors0 == [1, 1]  # ratio 0 still refuses an empty side that used to have rows
    assert not [
        e
        for e in default_expectations(_spec(), {"truth_rows": 0, "projection_rows": 0})
        if "row_count" in e.type
    ]


def test_failure_line_names_side_expectation_observed_and_bound() -> None:
    o = ExpectationResult(
        "projection",
        "expect_table_row_count_to_be_between",
        {"min_value": 500},
        False,
        "default",
        observed=0,
    )
    assert o.describe() == "projection: expect_table_row_count_to_be_between failed (observed 0, min 500)"


@pytest.mark.parametrize(
    ("checks", "field"),
    [
        ({"expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "x"}}]}, "side"),
        ({"expectations": [{"side": "left", "type": "expect_column_to_exist"}]}, "side"),
        ({"expectations": [{"side": "truth", "type": "check_it"}]}, "type"),
        ({"min_row_ratio": 2}, "min_row_ratio"),
        ({"suite": "x.json"}, "suite"),
    ],
)
def test_checks_section_is_validated(checks: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError, match=rf"checks\.(expectations\[0\]\.)?{field}"):
        _spec(checks=checks)


# -- against SQLite files --------------------------------------------------------------------
def test_healthy_pair_passes_stores_results_and_writes_docs(
    tmp_path: Path, pair: tuple[str, str], store: AuditStore
) -> None:
    spec = load_spec(spec_at(tmp_path, *pair))
    result = gate(Context.of(store), spec, docs_dir=tmp_path / "docs")
    assert result.success and result.exit_code == 0
    assert by_type(result, "truth", "expect_compound_columns_to_be_unique")[0].success
    assert by_type(result, "projection", "expect_column_values_to_be_between")[0].origin == (
        "checks.expectations[0]"
    )
    index = tmp_path / "docs" / "index.html"
    assert result.docs == str(index.resolve()) and index.is_file()
    assert "inventory.projection" in index.read_text()
    (stored,) = preflight_history(store, "inventory")
    assert stored.id == result.id and stored.success
    assert stored.results["sides"]["truth"]["evaluated"] == len(result.side("truth").outcomes)


def test_truth_null_and_duplicate_keys_fail(tmp_path: Path, pair: tuple[str, str], store: AuditStore) -> None:
    t, p = pair
    execute(t, "CREATE TABLE tmp AS SELECT * FROM stock_levels")
    execute(t, "DROP TABLE stock_levels")
    execute(t, "CREATE TABLE stock_levels AS SELECT * FROM tmp")  # same rows, no primary key
    execute(t, "INSERT INTO stock_levels (warehouse, sku, on_hand) VALUES ('W1', 'A-4', 1), (NULL, 'A-4', 2)")
    spec = load_spec(spec_at(tmp_path, t, p))
    with pytest.raises(PreflightFailed) as err:
        gate(Context.of(store), spec, build_docs=False)
    msg = str(err.value)
    assert (
        "truth: expect_column_values_to_not_be_null on warehouse failed (observed 1 unexpected of 23" in msg
    )
    assert "truth: expect_compound_columns_to_be_unique on warehouse,sku failed (observed 2 unexpected" in msg
    assert "projection" not in msg  # the projection's planted duplicate is drift, not a broken read
    result = err.value.result
    assert result is not None and not result.success  # type: ignore[attr-defined]
    assert preflight_history(store, "inventory")[0].success is False


def test_user_expectation_fails_with_its_observed_value(
    tmp_path: Path, pair: tuple[str, str], store: AuditStore
) -> None:
    t, p = pair
    execute(p, "UPDATE stock_view SET on_hand = -5 WHERE product_id = 'A-2'")
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "inventory.truth.json").write_text(
        json.dumps(
            {
                "name": "inventory.truth",
                "expectations": [
                    {
                        "type": "expect_column_max_to_be_between",
                        "kwargs": {"column": "on_hand", "max_value": 100},
                    }
                ],
            }
        )
    )
    spec = load_spec(spec_at(tmp_path, t, p))
    result = preflight(Context.of(store), spec, build_docs=False, suites_dir=suites)
    assert not result.success
    lines = [o.describe() for o in result.failures]
    assert lines == [
        "truth: expect_column_max_to_be_between on on_hand failed (observed 999, max 100.0)",
        "projection: expect_column_values_to_be_between on on_hand failed "
        "(observed 1 unexpected of 22, e.g. [-5], min 0.0, max 1000.0)",
    ]
    assert result.side("truth").failures[0].origin == str(suites / "inventory.truth.json")


def test_missing_compared_column_is_a_failed_gate(
    tmp_path: Path, pair: tuple[str, str], store: AuditStore
) -> None:
    t, p = pair
    execute(p, "ALTER TABLE stock_view RENAME COLUMN unit_price TO unit_prce")
    spec = load_spec(spec_at(tmp_path, t, p))
    result = preflight(Context.of(store), spec, build_docs=False)
    assert [o.describe() for o in result.failures] == [
        "projection: expect_column_to_exist on unit_price failed (column not found)"
    ]


def test_bad_expectation_kwargs_name_the_spec_field(
    tmp_path: Path, pair: tuple[str, str], store: AuditStore
) -> None:
    bad = (
        "\nchecks:\n  expectations:\n"
        "    - {side: truth, type: expect_column_values_to_be_between, kwargs: {min_value: 1}}\n"
    )
    spec = load_spec(spec_at(tmp_path, *pair, extra=bad))
    with pytest.raises(
        SpecError, match=r"checks\.expectations\[0\] \(truth: .*kwargs\.column: field required"
    ):
        preflight(Context.of(store), spec, build_docs=False)
    unknown = "\nchecks:\n  expectations:\n    - {side: truth, type: expect_it_to_be_fine}\n"
    spec = load_spec(spec_at(tmp_path, *pair, extra=unknown))
    with pytest.raises(SpecError, match="expect_it_to_be_fine not found"):
        preflight(Context.of(store), spec, build_docs=False)


def test_gate_stops_on_an_emptied_projection_sqlite(
    tmp_path: Path, pair: tuple[str, str], store: AuditStore
) -> None:
    t, p = pair
    spec = load_spec(spec_at(tmp_path, t, p))
    audit(Context.of(store), spec)  # a full audit records 21 truth rows and 22 projection rows
    execute(p, "DELETE FROM stock_view")
    with pytest.raises(
        PreflightFailed,
        match=r"^preflight inventory: projection: expect_table_row_count_to_be_between "
        r"failed \(observed 0, min 11\)$",
    ):
        gate(Context.of(store), spec, build_docs=False)


def test_cli_check(tmp_path: Path, pair: tuple[str, str]) -> None:
    spec = spec_at(tmp_path, *pair)
    env = {**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{tmp_path / 's.db'}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconcile", "check", str(spec), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    ok = run("--format", "json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["success"] is True and doc["docs"] == str(tmp_path / "gx-docs" / "inventory" / "index.html")
    assert (tmp_path / "gx-docs" / "inventory" / "index.html").is_file()
    assert "Data Docs: " in ok.stderr

    execute(pair[1], "UPDATE stock_view SET on_hand = 5000 WHERE product_id = 'A-1'")
    bad = run("--format", "table", "--docs", str(tmp_path / "d2"))
    assert bad.returncode == 2
    assert "FAILED" in bad.stdout and f"Data Docs: {tmp_path / 'd2' / 'index.html'}" in bad.stdout
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith(
        "reconcile: error: preflight inventory: projection: expect_column_values_to_be_between"
    )
    assert "e.g. [5000]" in line

    missing = subprocess.run(
        [sys.executable, "-m", "reconcile", "check", str(tmp_path / "nope.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert missing.returncode == 2 and "nope.yaml: file not found" in missing.stderr
    h = subprocess.run([sys.executable, "-m", "reconcile", "check", "--help"], capture_output=True, text=True)
    assert "--docs" in h.stdout and "checks:" in h.stdout


def test_a_store_made_before_the_gates_migrates_to_hold_them(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from reconcile.store import schema

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a store as migration 1 left it
        schema.schema_version.create(conn)
        schema.MIGRATIONS[0](conn)
        conn.execute(schema.schema_version.insert().values(version=1))
    engine.dispose()
    store = AuditStore(url)
    assert store.migrate() == len(schema.MIGRATIONS) >= 2
    assert preflight_history(store, "anything") == []
    assert "reconcile_preflight" in sa.inspect(store.engine).get_table_names()
