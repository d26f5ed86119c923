"""EventBuilder.parts, the outbox's fast path, gives what the corrective event gives, byte for byte.

Event ids and payloads are contracts (idempotency, acceptance): ``parts`` puts them together from
the JSON of their pieces, so every piece is held here to the plain construction it replaces
(the event's ``headers()``/``value()``, :func:`event_id`, and the builder as it was before).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.compare import jsonable
from reconcile.events.cloudevent import EventBuilder, event_id
from reconcile.findings import Finding, FindingKind
from reconcile.spec import Spec, spec_from_dict

NOW = datetime(2026, 11, 28, 12, 30, 1, 123456, tzinfo=UTC)


def make_spec(*, rename: bool, headers: dict[str, str], name: str = "inv", wh_as: str = "warehouse") -> Spec:
    return spec_from_dict(
        {
            "name": name,
            "truth": {"url": "sqlite://", "table": "stock"},
            "projection": {"url": "sqlite://", "table": "stock_view"},
            "key": [{"sku": "product_id"}, "wh"] if rename else ["sku", "wh"],
            "columns": {"on_hand": {"projection": "qty"} if rename else {}, "title": {}, "zeta": {}},
            "correction": {
                "topic": "t",
                "event_type": "StockLevelReconciled",
                "headers": headers,
                **({"payload": {"title": "name", "wh": wh_as}} if rename else {}),
            },
        }
    )


def reference(
    spec: Spec, finding: Finding, run_id: str, now: datetime
) -> tuple[str, str, dict[str, str], Any]:
    """The builder before the fast path (ec550fb): (id, subject, headers, value)."""
    c = spec.correction
    assert c is not None
    canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
    key_names = {k.truth: k.projection for k in spec.key}
    key_names = {**key_names, **{k: v for k, v in c.payload.items() if k in key_names}}
    names = {n: c.payload.get(n, spec.projection_name(n)) for n in spec.columns}
    jkey = jsonable(dict(finding.key))
    key = {key_names.get(k, k): v for k, v in jkey.items()}
    tombstone = finding.kind is FindingKind.ORPHAN
    truth = None if finding.truth is None else {k: v for k, v in finding.truth.items() if k in names}
    jtruth = None if truth is None else jsonable(truth)
    state = None if tombstone else {names.get(k, k): v for k, v in (jtruth or {}).items()}
    data = {"spec": spec.name, "kind": finding.kind.value, "key": key, "state": state, "tombstone": tombstone}
    doc: dict[str, Any] = {"spec": spec.name, "key": jkey, "state": jtruth if not tombstone else None}
    if finding.episode > 1:
        doc["episode"] = finding.episode
    ident = hashlib.sha256(canonical.encode(doc).encode()).hexdigest()[:32]
    headers = {
        "ce_specversion": "1.0",
        "ce_id": ident,
        "ce_source": f"reconcile/{spec.name}",
        "ce_type": c.event_type,
        "ce_subject": canonical.encode(key),
        "ce_time": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "reconcile_run_id": run_id,
        "reconcile_finding_kind": finding.kind.value,
        **c.headers,
    }
    if not tombstone:
        headers["content-type"] = "application/json"
    return ident, canonical.encode(key), headers, None if tombstone else canonical.encode(data)


scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
key_value = st.integers(-(2**40), 2**40) | st.text(max_size=8)
truth = st.none() | st.fixed_dictionaries(
    {}, optional={"on_hand": scalar, "title": scalar, "zeta": scalar, "_offset": scalar, "other": scalar}
)
header_sets = st.sampled_from(
    [
        {},
        {"x-team": "stock"},
        {"ce_subject": "fixed", "x-é": "ü"},
        {"ce_id": "mine", "content-type": "text/x"},
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(list(FindingKind)),
    sku=key_value,
    wh=key_value,
    truth=truth,
    episode=st.integers(1, 4),
    rename=st.booleans(),
    headers=header_sets,
    fixed_time=st.booleans(),
)
def test_parts_are_the_events_bytes(
    kind: FindingKind,
    sku: Any,
    wh: Any,
    truth: dict[str, Any] | None,
    episode: int,
    rename: bool,
    headers: dict[str, str],
    fixed_time: bool,
) -> None:
    spec = make_spec(rename=rename, headers=headers, name="inv-2.a")
    finding = Finding(kind, {"wh": wh, "sku": sku}, truth=truth, episode=episode)
    builder = EventBuilder(spec, "run-1", NOW if fixed_time else None)
    parts = builder.parts(finding)
    event = builder.event(finding, parts)
    assert (parts.id, parts.subject, parts.headers, parts.value) == reference(
        spec, finding, "run-1", parts.time
    )
    # the same bytes as the event object's own methods, in the same header order
    assert list(parts.headers.items()) == list(event.headers().items())
    assert parts.value == event.value() and parts.subject == event.subject
    state = (
        None
        if truth is None or kind is FindingKind.ORPHAN
        else {k: v for k, v in truth.items() if k in spec.columns}
    )
    assert parts.id == event_id(spec.name, finding.key, state, episode)
    assert (parts.time == NOW) is fixed_time or parts.time == NOW


def test_build_is_parts_as_an_event() -> None:
    spec = make_spec(rename=True, headers={})
    finding = Finding(FindingKind.MISMATCH, {"sku": "A-1", "wh": 2}, truth={"on_hand": 5, "title": "x"})
    builder = EventBuilder(spec, "run-1", NOW)
    e = builder.build(finding)
    assert e.to_dict()["data"] == {
        "spec": "inv",
        "kind": "mismatch",
        "key": {"product_id": "A-1", "warehouse": 2},
        "state": {"qty": 5, "name": "x"},
        "tombstone": False,
    }
    assert e.id == reference(spec, finding, "run-1", NOW)[0]


@given(
    st.lists(
        st.tuples(
            st.text(max_size=8),
            st.one_of(st.none(), st.text(max_size=12).map(str.encode), st.text(max_size=12)),
        ),
        max_size=12,
    )
)
def test_decode_headers_of_a_consumed_message_is_the_loop(headers: list[tuple[str, Any]]) -> None:
    # the consumer's fast path (one comprehension over a list of bytes values) gives what the
    # plain loop gives: None skipped, bytes decoded, text kept, a later name winning
    from reconcile.events.cloudevent import decode_headers

    plain: dict[str, str] = {}
    for name, value in headers:
        if value is not None:
            plain[name] = value.decode() if isinstance(value, bytes) else value
    assert decode_headers(headers) == plain
    assert decode_headers(tuple(headers)) == plain


_FLAT_VALUES = st.one_of(
    st.text(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)


@given(st.dictionaries(st.text(), _FLAT_VALUES, max_size=6))
def test_canonical_flat_is_the_canonical_encoder(d: dict[str, Any]) -> None:
    # the key's and truth's JSON put together item by item is the encoder's, byte for byte
    # (bools, floats and nested values go through the encoder itself)
    from reconcile.events.cloudevent import _CANONICAL, _canonical_flat

    assert _canonical_flat(d) == _CANONICAL.encode(d) == json.dumps(d, sort_keys=True, separators=(",", ":"))


_BOUNDS = [2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1]
flat_value = st.none() | st.integers(-(2**70), 2**70) | st.text(max_size=8) | st.sampled_from(_BOUNDS)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(list(FindingKind)),
    sku=flat_value,
    wh=flat_value,
    sku_first=st.booleans(),
    truth=st.none()
    | st.fixed_dictionaries(
        {}, optional={"zeta": flat_value, "on_hand": flat_value, "title": flat_value, "_offset": scalar}
    ),
    episode=st.integers(1, 4),
    rename=st.booleans(),
    wh_as=st.sampled_from(["warehouse", "a_wh"]),  # a_wh: the key's sorted order is not the truth's
    headers=header_sets,
)
def test_the_flat_fast_path_is_the_general_path(
    kind: FindingKind,
    sku: Any,
    wh: Any,
    sku_first: bool,
    truth: dict[str, Any] | None,
    episode: int,
    rename: bool,
    wh_as: str,
    headers: dict[str, str],
) -> None:
    # keys and truths of text, ints (either side of avro's int and long bounds) and None, in
    # either order, with columns missing and a non-state column of any type: the fast path's
    # parts are the general path's and the old builder's, and so are the data's dicts' orders
    spec = make_spec(rename=rename, headers=headers, wh_as=wh_as)
    key = {"sku": sku, "wh": wh} if sku_first else {"wh": wh, "sku": sku}
    finding = Finding(kind, key, truth=truth, episode=episode)
    builder = EventBuilder(spec, "run-1", NOW)
    fast, general = builder.parts(finding), builder._parts(finding)
    assert fast == general
    assert list(fast.headers.items()) == list(general.headers.items())
    for part in ("key", "state"):
        assert list((fast.data[part] or {}).items()) == list((general.data[part] or {}).items())
    assert (fast.id, fast.subject, fast.headers, fast.value) == reference(spec, finding, "run-1", NOW)


def test_flat_findings_take_the_fast_path_and_others_the_general_one(monkeypatch: Any) -> None:
    builder = EventBuilder(make_spec(rename=True, headers={}), "run-1", NOW)
    general = builder._parts
    taken: list[Finding] = []

    def spy(f: Finding) -> Any:
        taken.append(f)
        return general(f)

    monkeypatch.setattr(builder, "_parts", spy)
    flat = Finding(FindingKind.MISSING, {"wh": 1, "sku": "a"}, truth={"title": None, "_offset": 1.5})
    builder.parts(flat)
    assert taken == []
    others = [
        Finding(FindingKind.MISSING, {"wh": 1, "sku": "a"}, truth={"title": 1.5}),  # a float
        Finding(FindingKind.MISSING, {"wh": True, "sku": "a"}),  # a bool
        Finding(FindingKind.MISSING, {"sku": "a"}),  # not the spec's key names
        Finding(FindingKind.MISSING, {"wh": 1, "sku": "a", "x": 2}),
    ]
    for f in others:
        builder.parts(f)
    assert taken == others


def test_the_fast_path_checks_each_new_shape_against_the_schema(monkeypatch: Any) -> None:
    # the schema's verdict is remembered per kind, names in order and value shapes: a new int
    # size, a None, another order or another kind is checked again
    builder = EventBuilder(make_spec(rename=False, headers={}), "run-1", NOW)
    checked: list[Any] = []

    def spy(datum: Any) -> int:
        checked.append(datum)
        return 1

    monkeypatch.setattr(builder, "validate", spy)

    def build(kind: FindingKind, key: dict[str, Any], truth: dict[str, Any] | None) -> None:
        builder.parts(Finding(kind, key, truth=truth))

    build(FindingKind.MISSING, {"sku": "a", "wh": 1}, {"on_hand": 1})
    build(FindingKind.MISSING, {"sku": "b", "wh": 2}, {"on_hand": 7})
    assert len(checked) == 1
    build(FindingKind.MISSING, {"sku": "b", "wh": 2**31}, {"on_hand": 7})
    build(FindingKind.MISSING, {"sku": "b", "wh": 2**63}, {"on_hand": 7})
    build(FindingKind.MISSING, {"sku": "b", "wh": 2}, {"on_hand": None})
    build(FindingKind.MISSING, {"wh": 2, "sku": "b"}, {"on_hand": 7})
    build(FindingKind.MISMATCH, {"sku": "b", "wh": 2}, {"on_hand": 7})
    build(FindingKind.MISSING, {"sku": "b", "wh": 2}, {"on_hand": 7, "title": "t"})
    build(FindingKind.MISSING, {"sku": "b", "wh": 2}, None)
    assert len(checked) == 8


def test_a_flat_event_that_does_not_fit_the_schema_is_refused(monkeypatch: Any) -> None:
    # the fast path still asks the schema about a shape it has not seen, and raises its error
    from reconcile.errors import SchemaIncompatible

    builder = EventBuilder(make_spec(rename=False, headers={}), "run-1", NOW)

    def refuse(_datum: Any) -> int:
        raise SchemaIncompatible("no")

    monkeypatch.setattr(builder, "validate", refuse)
    try:
        builder.parts(Finding(FindingKind.MISSING, {"sku": "a", "wh": 1}, truth={"on_hand": 1}))
    except SchemaIncompatible:
        pass
    else:  # pragma: no cover - the failure this test is for
        raise AssertionError("the fast path did not check the schema")


def test_header_time_is_the_old_formula() -> None:
    from datetime import timedelta, timezone
    from zoneinfo import ZoneInfo

    from reconcile.events.cloudevent import _header_time

    for at in [
        NOW,
        NOW.replace(microsecond=0),
        datetime.now(UTC),
        NOW.astimezone(timezone(timedelta(hours=5, minutes=30))),
        NOW.astimezone(timezone(-timedelta(hours=11, minutes=15))).replace(microsecond=0),
        NOW.astimezone(ZoneInfo("UTC")),
        NOW.astimezone(ZoneInfo("America/New_York")),
    ]:
        assert _header_time(at) == at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@settings(deadline=None)  # a loaded machine is no failure
@given(
    st.text(max_size=20),
    st.none() | st.text(max_size=40),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5),
)
def test_wire_size_is_the_encoded_bytes(key: str, value: str | None, headers: dict[str, str]) -> None:
    # correct's size check (max_event_bytes) counts UTF-8 bytes; ASCII text skips the encoding
    from reconcile.app.heal import _wire_size

    assert _wire_size(key, value, headers) == (
        len(key.encode())
        + (len(value.encode()) if value is not None else 0)
        + len("".join(headers).encode())
        + len("".join(headers.values()).encode())
    )
