"""Spec loading: the YAML contract, ${VAR} expansion, one-line errors naming file and field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from reconcile.errors import SpecError
from reconcile.spec import load_spec, parse_duration

FULL = """
name: inventory
truth:
  url: ${ORDERS_DB_URL}
  table: stock_levels
projection:
  url: sqlite:///inventory.db
  table: stock_view
key: [warehouse, {sku: product_id}]
columns:
  on_hand: {}
  price: {projection: unit_price, tolerance: 0.005}
  title: {normalize: [strip, casefold]}
freshness:
  truth_column: updated_at
  grace: 5m
"""


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_the_issue_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_DB_URL", "postgresql://u:p@h/db")
    s = load_spec(write(tmp_path, FULL))
    assert s.name == "inventory"
    assert s.truth.url == "postgresql://u:p@h/db"
    assert [(k.truth, k.projection) for k in s.key] == [("warehouse", "warehouse"), ("sku", "product_id")]
    assert s.projection_name("price") == "unit_price" and s.projection_name("on_hand") == "on_hand"
    assert s.columns["price"].tolerance == 0.005
    assert s.columns["title"].normalize == ("strip", "casefold")
    assert s.freshness.grace == timedelta(minutes=5)
    assert s.freshness.confirm_runs == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (FULL.replace("name: inventory", "name: inventory\nnmae: x"), r"inventory.yaml: nmae: unknown key"),
        (FULL.replace("  table: stock_view\n", ""), r"projection: .*exactly one of `table:` or `query:`"),
        (
            FULL.replace("key: [warehouse, {sku: product_id}]\n", ""),
            r"inventory.yaml: key: required key is missing",
        ),
        (FULL.replace("grace: 5m", "grace: soon"), r"freshness.grace: not a duration: 'soon'"),
        (
            FULL.replace("tolerance: 0.005", "tolerance: -1"),
            r"columns.price.tolerance: .*greater than or equal to 0",
        ),
        (FULL.replace("[strip, casefold]", "[strip, shout]"), r"columns.title.normalize\[1\]: "),
        ("name: [unclosed", r"inventory.yaml: YAML error at line 1"),
        ("- just\n- a list\n", r"expected a mapping at the top level"),
    ],
)
def test_bad_specs_name_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setenv("ORDERS_DB_URL", "sqlite://")
    with pytest.raises(SpecError, match=message) as e:
        load_spec(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_unset_variable_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_DB_URL", raising=False)
    with pytest.raises(SpecError, match=r"truth.url: environment variable ORDERS_DB_URL is not set"):
        load_spec(write(tmp_path, FULL))


def test_variable_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_DB_URL", raising=False)
    s = load_spec(write(tmp_path, FULL.replace("${ORDERS_DB_URL}", "${ORDERS_DB_URL:-sqlite:///t.db}")))
    assert s.truth.url == "sqlite:///t.db"


def test_missing_file() -> None:
    with pytest.raises(SpecError, match=r"spec nope.yaml: file not found"):
        load_spec("nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), (90, 90)]
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
