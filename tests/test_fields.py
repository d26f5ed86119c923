"""The field-path parser of topic sides: the JSONPath subset, message parts, CloudEvents modes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.fields import FieldError, lookup, parse_field
from reconcile.jsonpath import MISSING, JsonPathError, compile_path

DOC = {
    "id": "e-1",
    "data": {
        "order_id": 42,
        "lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}],
        "odd key": {"with.dot": True, "it's": "quoted"},
        "empty": [],
        "nothing": None,
    },
}


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("$", DOC),
        ("$.id", "e-1"),
        ("$.data.order_id", 42),
        ("$['data']['order_id']", 42),
        ('$["data"].order_id', 42),
        ("$.data.lines[0].sku", "A"),
        ("$.data.lines[-1].qty", 2),
        ("$.data.lines[ 1 ].sku", "B"),
        ("$.data['odd key']['with.dot']", True),
        ("$.data['odd key']['it\\'s']", "quoted"),
        ("$.data.nothing", None),  # JSON null is a value, not MISSING
        ("  $.id  ", "e-1"),
    ],
)
def test_paths_name_one_value(path: str, want: object) -> None:
    assert compile_path(path).first(DOC) == want


@pytest.mark.parametrize(
    "path",
    [
        "$.nope",
        "$.data.order_id.deeper",
        "$.data.lines[2]",
        "$.data.lines[-3]",
        "$.id[0]",
        "$.data.lines.sku",
    ],
)
def test_paths_that_name_nothing_are_missing(path: str) -> None:
    assert compile_path(path).first(DOC) is MISSING
    assert compile_path(path).find(DOC) == []


def test_wildcards_name_every_element_in_document_order() -> None:
    assert compile_path("$.data.lines[*].sku").find(DOC) == ["A", "B"]
    assert compile_path("$.data.lines.*.qty").first(DOC) == [1, 2]  # first() of a wildcard: the list
    assert compile_path("$.data.empty[*]").find(DOC) == []
    assert compile_path("$.data.*").wildcard and not compile_path("$.data").wildcard
    assert compile_path("$.data.lines[*]").find(DOC) == DOC["data"]["lines"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("data.order_id", "starts with $"),
        ("$..sku", "recursive descent"),
        ("$.data.lines[?(@.qty > 1)]", "filters"),
        ("$.data.lines[0:2]", "slices"),
        ("$.data.lines[0,1]", "filters"),
        ("$.data.", "member name"),
        ("$.data['unterminated]", "unterminated"),
        ("$.data['x'", "missing ']'"),
        ("$ data", "unexpected"),
        ("", "starts with $"),
    ],
)
def test_paths_outside_the_subset_are_refused_with_a_reason(path: str, why: str) -> None:
    with pytest.raises(JsonPathError, match=why.replace("$", r"\$").replace("[", r"\[")):
        compile_path(path)


@given(st.dictionaries(st.text(min_size=1), st.integers() | st.text() | st.none(), max_size=5))
def test_any_member_name_round_trips_through_bracket_quoting(doc: dict[str, object]) -> None:
    for name, value in doc.items():
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        assert compile_path(f"$['{quoted}']").first(doc) == value


@pytest.mark.parametrize(
    ("text", "part", "extra"),
    [
        ("key", "key", None),
        ("partition", "partition", None),
        ("offset", "offset", None),
        ("timestamp", "timestamp", None),
        ("header:ce_id", "header", "ce_id"),
        ("header:content-type", "header", "content-type"),
        ("$.data.order_id", "json", "$.data.order_id"),
    ],
)
def test_fields_name_message_parts(text: str, part: str, extra: str | None) -> None:
    f = parse_field(text)
    assert f.part == part
    assert (f.header if part == "header" else (str(f.path) if part == "json" else None)) == extra
    assert f.uses_value is (part == "json")


@pytest.mark.parametrize("text", ["", "value", "header:", "Key", "data.order_id", "$..x", 3])
def test_bad_fields_say_what_is_accepted(text: object) -> None:
    with pytest.raises(FieldError):
        parse_field(text)


def test_cloudevents_binary_and_structured_read_the_same() -> None:
    data = {"order_id": 7, "warehouse": "W1"}
    binary_headers = {"ce_specversion": "1.0", "ce_id": "ev-7", "ce_type": "OrderPlaced"}
    structured = {"specversion": "1.0", "id": "ev-7", "type": "OrderPlaced", "data": data}
    for path, want in [
        ("$.data.order_id", 7),
        ("$.order_id", 7),
        ("$.id", "ev-7"),
        ("$.type", "OrderPlaced"),
    ]:
        p = compile_path(path)
        assert lookup(p, data, binary_headers) == want, f"binary {path}"
        assert lookup(p, structured, {}) == want, f"structured {path}"
    # A plain JSON value (no CloudEvent) has no other view.
    assert lookup(compile_path("$.data.order_id"), data, {}) is MISSING
    # The value wins when it has the path itself.
    assert lookup(compile_path("$.data"), {"data": 1}, binary_headers) == 1
    assert json.dumps(lookup(compile_path("$"), data, binary_headers)) == json.dumps(data)
