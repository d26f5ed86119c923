"""Event-schema compatibility (`reconcile check-schemas`) and corrective-event validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.errors import SchemaIncompatible, SpecError
from reconcile.findings import FindingKind
from reconcile.schemacheck import Direction, Mode, check_dir
from reconcile.schemas import CORRECTIVE_EVENT, schemas_dir, validate_datum

REPO_SCHEMAS = Path(__file__).resolve().parent.parent / "checks" / "schemas"
BASE = [{"name": "order_id", "type": "long"}, {"name": "warehouse", "type": "string"}]


def record(*fields: dict[str, Any], name: str = "OrderPlaced") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "shop.events", "fields": [*BASE, *fields]}


def subject(root: Path, mode: str | None, *versions: dict[str, Any], name: str = "shop.Order") -> Path:
    """Write one subject's versions (v1, v2, ...) and, when given, its mode."""
    folder = root / name
    folder.mkdir(parents=True)
    for n, schema in enumerate(versions, start=1):
        (folder / f"v{n}.avsc").write_text(json.dumps(schema), encoding="utf-8")
    if mode is not None:
        (root / "compatibility.yaml").write_text(f"subjects:\n  {name}: {mode}\n", encoding="utf-8")
    return root


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconcile", "check-schemas", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_SCHEMAS.parent.parent)},
    )


# -- what each mode rejects ------------------------------------------------------------------
ADDED_NO_DEFAULT = (record(), record({"name": "channel", "type": "string"}))
REMOVED_NO_DEFAULT = (record({"name": "channel", "type": "string"}), record())
TYPE_CHANGE = (record({"name": "channel", "type": "string"}), record({"name": "channel", "type": "int"}))


def test_added_field_without_default_breaks_backward_only(tmp_path: Path) -> None:
    (v,) = check_dir(subject(tmp_path / "b", "BACKWARD", *ADDED_NO_DEFAULT)).violations
    assert (v.rule, v.field, v.old_type, v.new_type) == (
        "BACKWARD: new reader cannot read old data",
        "channel",
        "(absent)",
        "string",
    )
    assert (v.old_version, v.new_version, v.kind) == (1, 2, "reader_field_missing_default_value")
    assert "added without a default" in v.problem
    assert check_dir(subject(tmp_path / "f", "FORWARD", *ADDED_NO_DEFAULT)).compatible


def test_removed_field_without_default_breaks_forward_only(tmp_path: Path) -> None:
    (v,) = check_dir(subject(tmp_path / "f", "FORWARD", *REMOVED_NO_DEFAULT)).violations
    assert (v.rule, v.field, v.old_type, v.new_type) == (
        "FORWARD: old reader cannot read new data",
        "channel",
        "string",
        "(absent)",
    )
    assert "removed" in v.problem
    assert check_dir(subject(tmp_path / "b", "BACKWARD", *REMOVED_NO_DEFAULT)).compatible


def test_type_change_breaks_both_directions(tmp_path: Path) -> None:
    for mode in ("BACKWARD", "FORWARD"):
        (v,) = check_dir(subject(tmp_path / mode, mode, *TYPE_CHANGE)).violations
        assert v.direction is Direction(mode)
        assert (v.field, v.old_type, v.new_type, v.kind) == ("channel", "string", "int", "type_mismatch")
    full = check_dir(subject(tmp_path / "full", "FULL", *TYPE_CHANGE)).violations
    assert [v.rule for v in full] == [
        "BACKWARD: new reader cannot read old data",
        "FORWARD: old reader cannot read new data",
    ]
    assert all(v.mode is Mode.FULL for v in full)


def test_compatible_evolutions_are_accepted(tmp_path: Path) -> None:
    with_default = record({"name": "channel", "type": "string", "default": "web"})
    assert check_dir(subject(tmp_path / "full", "FULL", record(), with_default)).compatible
    promoted = (record({"name": "qty", "type": "int"}), record({"name": "qty", "type": "long"}))
    assert check_dir(subject(tmp_path / "promo", "BACKWARD", *promoted)).compatible
    # ... but a promotion is one-way: an int reader cannot read long data.
    (v,) = check_dir(subject(tmp_path / "promo-fwd", "FORWARD", *promoted)).violations
    assert (v.field, v.old_type, v.new_type) == ("qty", "int", "long")


def test_nested_field_and_union_are_located(tmp_path: Path) -> None:
    line = {"type": "record", "name": "OrderLine", "fields": [{"name": "quantity", "type": "int"}]}
    line2 = {**line, "fields": [{"name": "quantity", "type": "string"}]}
    old = record(
        {"name": "lines", "type": {"type": "array", "items": line}},
        {"name": "note", "type": ["null", "string"]},
    )
    new = record(
        {"name": "lines", "type": {"type": "array", "items": line2}}, {"name": "note", "type": "string"}
    )
    found = check_dir(subject(tmp_path, "BACKWARD", old, new)).violations
    assert [(v.field, v.old_type, v.new_type) for v in found] == [
        ("lines[].quantity", "int", "string"),
        ("note", "union[null, string]", "string"),
    ]


def test_transitive_checks_every_earlier_version(tmp_path: Path) -> None:
    v1 = record({"name": "channel", "type": "string"})
    v2 = record()  # drops channel: a new reader ignores it, fine under BACKWARD
    v3 = record({"name": "channel", "type": "int", "default": 0})  # can read v2, not v1
    assert check_dir(subject(tmp_path / "plain", "BACKWARD", v1, v2, v3)).compatible
    (v,) = check_dir(subject(tmp_path / "trans", "BACKWARD_TRANSITIVE", v1, v2, v3)).violations
    assert (v.old_version, v.new_version, v.old_type, v.new_type) == (1, 3, "string", "int")
    assert check_dir(subject(tmp_path / "none", "NONE", v1, v2, v3)).subjects[0].pairs_checked == 0


def test_default_mode_is_backward(tmp_path: Path) -> None:
    result = check_dir(subject(tmp_path, None, *ADDED_NO_DEFAULT))
    assert result.subjects[0].mode is Mode.BACKWARD and not result.compatible


# -- invalid input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("subjects:\n  shop.Order: SIDEWAYS\n", "'SIDEWAYS' is not a compatibility mode"),
        ("subjects:\n  shop.Ordr: FULL\n", "subjects.shop.Ordr: no folder"),
        ("defaults: FULL\n", "unknown key 'defaults'"),
        ("subjects: [\n", "cannot read"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, config: str, message: str) -> None:
    subject(tmp_path, None, record())
    (tmp_path / "compatibility.yaml").write_text(config, encoding="utf-8")
    with pytest.raises(SpecError, match="compatibility.yaml") as e:
        check_dir(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_schema_files_name_the_file(tmp_path: Path) -> None:
    subject(tmp_path / "a", None, {"type": "record", "name": "X", "fields": [{"name": "a", "type": "strin"}]})
    with pytest.raises(SpecError, match=r"shop.Order/v1.avsc: cannot parse"):
        check_dir(tmp_path / "a")
    bad_default = record({"name": "channel", "type": "string", "default": 5})
    subject(tmp_path / "b", None, bad_default)
    with pytest.raises(SpecError, match=r"v1.avsc: field OrderPlaced.channel: default 5 does not fit"):
        check_dir(tmp_path / "b")
    subject(tmp_path / "c", None, record())
    (tmp_path / "c" / "shop.Order" / "v2-draft.avsc").write_text("{}", encoding="utf-8")
    with pytest.raises(SpecError, match="v2-draft.avsc: name it v<N>.avsc"):
        check_dir(tmp_path / "c")


# -- the command -----------------------------------------------------------------------------
def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    ok = cli(
        str(subject(tmp_path / "ok", "FULL", record(), record({"name": "c", "type": "int", "default": 1})))
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["compatible"] is True

    bad = cli(str(subject(tmp_path / "bad", "FULL", *TYPE_CHANGE)), "--format", "json")
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)
    assert (doc["compatible"], doc["violation_count"]) == (False, 2)
    (s,) = doc["subjects"]
    assert (s["subject"], s["mode"], s["versions"], s["compatible"]) == ("shop.Order", "FULL", [1, 2], False)
    assert set(s["violations"][0]) == {
        "subject", "mode", "rule", "direction", "old_version", "new_version",
        "field", "location", "kind", "old_type", "new_type", "problem",
    }  # fmt: skip
    assert s["violations"][0]["location"] == "/fields/2/type"

    table = cli(str(tmp_path / "bad"), "--format", "table")
    assert table.returncode == 1
    for text in (
        "shop.Order",
        "FULL",
        "channel",
        "string",
        "int",
        "new reader cannot read old data",
        "[type_mismatch",
    ):
        assert text in table.stdout

    (tmp_path / "broken" / "s").mkdir(parents=True)
    (tmp_path / "broken" / "s" / "v1.avsc").write_text("{not json", encoding="utf-8")
    broken = cli(str(tmp_path / "broken"))
    assert broken.returncode == 2
    assert broken.stderr.count("\n") == 1 and "s/v1.avsc" in broken.stderr and not broken.stdout


def test_repo_schemas_are_compatible() -> None:
    # checks/schemas is a link to the package's event_schemas/ (package data): the same folder.
    assert schemas_dir().resolve() == REPO_SCHEMAS.resolve() or os.environ.get("RECONCILE_SCHEMAS_DIR")
    result = check_dir(REPO_SCHEMAS)
    assert result.compatible, [v.to_dict() for v in result.violations]
    modes = {s.subject: (s.mode, s.versions) for s in result.subjects}
    assert modes["shop.OrderPlaced"] == (Mode.FULL, (1, 2))
    assert modes[CORRECTIVE_EVENT][0] is Mode.BACKWARD


# -- corrective events fit their schema ------------------------------------------------------
scalar = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text()
fields = st.dictionaries(st.text(min_size=1, max_size=12), scalar, max_size=5)


@given(kind=st.sampled_from(list(FindingKind)), key=fields, state=fields, tombstone=st.booleans())
def test_every_corrective_event_shape_validates(
    kind: FindingKind, key: dict[str, Any], state: dict[str, Any], tombstone: bool
) -> None:
    datum = {
        "spec": "inventory",
        "kind": kind.value,
        "key": key,
        "state": None if tombstone else state,
        "tombstone": tombstone,
    }
    assert validate_datum(CORRECTIVE_EVENT, datum, REPO_SCHEMAS) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "drifted"},  # not a finding kind
        {"spec": None},
        {"key": {"sku": ["A-1"]}},  # key values are scalars
        {"state": "W1:A-1"},
        {"tombstone": "yes"},
    ],
)
def test_malformed_corrective_event_is_refused(change: dict[str, Any]) -> None:
    datum = {"spec": "inventory", "kind": "missing", "key": {"sku": "A-1"}, "state": None, "tombstone": True}
    with pytest.raises(SchemaIncompatible, match="reconcile.CorrectiveEvent v1"):
        validate_datum(CORRECTIVE_EVENT, {**datum, **change}, REPO_SCHEMAS)


def test_recursive_schema_with_union_change_terminates(tmp_path: Path) -> None:
    def node(note: Any) -> dict[str, Any]:
        return {
            "type": "record",
            "name": "Node",
            "fields": [{"name": "note", "type": note}, {"name": "next", "type": ["null", "Node"]}],
        }

    found = check_dir(subject(tmp_path, "BACKWARD", node(["null", "string"]), node("string"))).violations
    assert [(v.field, v.kind, v.old_type, v.new_type) for v in found] == [
        ("note", "type_mismatch", "union[null, string]", "string"),
        # the checker also flags the recursive reference, whose Node now reads differently
        ("next", "missing_union_branch", "record Node", "union[null, record Node]"),
    ]


# -- datum_validator: avro's verdict, once per shape (a correction of 100k events) -------------
any_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=6,
)


@given(
    data=st.lists(
        st.fixed_dictionaries(
            {"spec": st.text(max_size=3) | st.none(), "kind": st.sampled_from(["missing", "orphan", "x"])},
            optional={
                "key": st.dictionaries(st.text(max_size=3), any_value, max_size=3),
                "state": st.none() | st.dictionaries(st.text(max_size=3), any_value, max_size=3),
                "tombstone": st.booleans() | st.integers(0, 1),
                "extra": any_value,
            },
        ),
        max_size=8,
    )
)
def test_datum_validator_agrees_with_avro_datum_by_datum(data: list[dict[str, Any]]) -> None:
    from reconcile.schemas import datum_validator

    check = datum_validator(CORRECTIVE_EVENT, REPO_SCHEMAS)
    for datum in data:  # one validator for the whole list: later data hit the shapes seen before
        try:
            expected: Any = validate_datum(CORRECTIVE_EVENT, datum, REPO_SCHEMAS)
        except SchemaIncompatible as e:
            expected = str(e)
        try:
            got: Any = check(datum)
        except SchemaIncompatible as e:
            got = str(e)
        assert got == expected


def test_datum_validator_checks_every_datum_when_values_decide(tmp_path: Path) -> None:
    """An enum inside a map is decided by the value, not the type: no shortcut then."""
    from reconcile.schemas import datum_validator

    folder = tmp_path / "s.Enum"
    folder.mkdir()
    inner = {"type": "enum", "name": "Colour", "symbols": ["red"]}
    field = {"name": "m", "type": {"type": "map", "values": inner}}
    schema = {"type": "record", "name": "E", "fields": [field]}
    (folder / "v1.avsc").write_text(json.dumps(schema))
    check = datum_validator("s.Enum", tmp_path)
    assert check({"m": {"a": "red"}}) == 1
    with pytest.raises(SchemaIncompatible):
        check({"m": {"a": "blue"}})  # same shape as the one accepted, another value
