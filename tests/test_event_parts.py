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


def make_spec(*, rename: bool, headers: dict[str, str], name: str = "inv") -> Spec:
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
                **({"payload": {"title": "name", "wh": "warehouse"}} if rename else {}),
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
