"""The generated per-spec extractor of a topic side gives exactly the general extractor's rows.

:meth:`TopicSource._extractor` returns a function generated for the spec's fields (one
inlined body, as ``dataclasses`` generates ``__init__``) that hands every message it does not
handle itself to the general loop. Both are run here on the same messages — binary and
structured CloudEvents, plain JSON, missing paths, JSON null, containers, huge integers,
invalid JSON, tombstones, headers as lists, dicts or absent, keys as bytes or text — and
must agree on every row and on every count the read reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.events.reader import Extent
from reconcile.sources.topic import TopicSource
from reconcile.spec import spec_from_dict


class _NoReader:
    where = "test"

    def extent(self, topic: str, since: Any) -> Extent:
        return Extent(topic, {0: 0}, {0: 0}, datetime.now(UTC))

    def close(self) -> None:
        pass


def _source(fields: dict[str, str], key: str) -> TopicSource:
    spec = spec_from_dict(
        {
            "name": "x",
            "truth": {"url": "sqlite:///unused.db", "table": "t"},
            "projection": {"topic": "t", "transport": "kafka", "fields": fields},
            "key": [key],
            "columns": [n for n in fields if n != key],
        }
    )
    return TopicSource(spec.projection, "projection", _NoReader())


def _both(
    fields: dict[str, str], key: str, kind: str, messages: list[tuple[Any, ...]]
) -> Iterator[tuple[Any, Any, Any, Any]]:
    """(rows, stats, blobs, generated?) of the general and then the generated extractor."""
    for generated in (False, True):
        src = _source(fields, key)
        try:
            src.generated_extractor = generated
            stored = list(fields)
            extract = src._extractor(stored, {key: kind})
            rows = [extract(m) for m in messages]
            yield rows, src.stats.to_dict(), set(src._blobs), extract.__doc__
        finally:
            src.dispose()


def _agree(fields: dict[str, str], key: str, kind: str, messages: list[tuple[Any, ...]]) -> bool:
    (rows_g, stats_g, blobs_g, _), (rows_f, stats_f, blobs_f, doc) = _both(fields, key, kind, messages)
    assert rows_f == rows_g
    assert [tuple(map(type, r)) if r else r for r in rows_f] == [
        tuple(map(type, r)) if r else r for r in rows_g
    ]
    assert stats_f == stats_g
    assert blobs_f == blobs_g
    return bool(doc and doc.startswith("def extract"))


_NAMES = st.sampled_from(["data", "order_id", "amount", "specversion", "id", "x"])
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=4),
    max_leaves=8,
)
_VALUES = st.one_of(
    st.dictionaries(_NAMES, _JSON, max_size=5).map(lambda d: json.dumps(d).encode()),
    _JSON.map(lambda d: json.dumps(d).encode()),  # not an object, maybe
    st.sampled_from([b"{not json", b'{"data": {"order_id": 1', b"\xff\xfe", b"", b'{"x": 1e999}']),
    st.just(None),  # a tombstone
    st.dictionaries(_NAMES, _JSON, max_size=3).map(json.dumps),  # text, as the embedded log hands it
)
_HEADER_VALUES = st.sampled_from([b"ev-1", b"ev-2", "ev-3", b"1.0", b"\xff"])
_HEADERS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.just([]),
    st.lists(
        st.tuples(
            st.sampled_from(["ce_id", "ce_specversion", "ce_type", "content-type", "trace"]), _HEADER_VALUES
        ),
        max_size=5,
    ),
    st.dictionaries(st.sampled_from(["ce_id", "ce_specversion", "ce_type"]), _HEADER_VALUES, max_size=3),
)
_MESSAGES = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(0, 10**6),
        st.sampled_from([-1, 1_700_000_000_000]),
        st.none() | st.binary(max_size=4) | st.text(max_size=4),
        _VALUES,
        _HEADERS,
    ),
    max_size=25,
)
_SPECS = st.sampled_from(
    [
        (
            {"event_id": "header:ce_id", "order_id": "$.data.order_id", "amount": "$.data.amount"},
            "event_id",
            "text",
        ),
        ({"event_id": "$.id", "order_id": "$.data.order_id"}, "event_id", "text"),
        ({"order_id": "$.data.order_id", "amount": "$.amount", "t": "header:ce_type"}, "order_id", "int"),
        ({"order_id": "$.order_id", "p": "partition", "o": "offset", "k": "key"}, "order_id", "number"),
        ({"k": "key", "v": "$.data", "x": "$.data.x.data"}, "k", "text"),
        ({"id": "header:ce_id", "trace": "header:trace", "lines": "$.data.x[0]"}, "id", "int"),
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SPECS, _MESSAGES)
def test_generated_extractor_gives_the_general_rows(
    spec: tuple[Any, ...], messages: list[tuple[Any, ...]]
) -> None:
    fields, key, kind = spec
    _agree(fields, key, kind, messages)


def _event(i: int, *, binary: bool = True, value: Any = None) -> tuple[Any, ...]:
    data = {"order_id": i, "amount": i / 4, "lines": [{"sku": "A"}]} if value is None else value
    if binary:
        headers = [("ce_specversion", b"1.0"), ("ce_id", f"ev-{i}".encode())]
        return (0, i, 1_700_000_000_000, str(i).encode(), json.dumps(data).encode(), headers)
    doc = {"specversion": "1.0", "id": f"ev-{i}", "data": data}
    return (0, i, 1_700_000_000_000, None, json.dumps(doc).encode(), None)


@pytest.mark.parametrize(
    "message",
    [
        _event(1),
        _event(2, binary=False),  # structured mode: header:ce_id and $.data.x from the document
        _event(3, value={"order_id": None}),  # JSON null is a value; amount missing is None
        _event(4, value={"order_id": 2**64, "amount": {"a": 1}}),  # stored another way
        _event(5, value={"specversion": "1.0", "order_id": 1}),  # binary, but looks structured
        _event(6, value=[1, 2]),  # not an object
        (0, 7, -1, None, b"{oops", [("ce_id", b"ev-7")]),  # invalid JSON: counted, sampled
        (0, 8, -1, None, None, [("ce_id", b"ev-8")]),  # a tombstone
        (0, 9, -1, None, b'{"order_id": 9}', None),  # no headers: no key field
    ],
)
def test_generated_extractor_on_each_kind_of_message(message: tuple[Any, ...]) -> None:
    fields = {"event_id": "header:ce_id", "order_id": "$.data.order_id", "amount": "$.data.amount"}
    assert _agree(fields, "event_id", "text", [message])  # and the generated one was used


def test_fields_it_does_not_generate_use_the_general_loop() -> None:
    (_, _, _, doc), *_ = _both({"k": "key", "at": "timestamp"}, "at", "datetime", [])
    assert doc is None or not doc.startswith("def extract")
    for fields in (
        {"k": "key", "at": "timestamp"},
        {"k": "key", "all": "$.lines[*].sku"},
        {"k": "key", "v": "$"},
    ):
        *_, (_, _, _, doc) = _both(fields, "k", "text", [])
        assert not (doc or "").startswith("def extract")
