"""Corrective events, frozen: every event's id, key, headers and value, byte for byte.

Event ids are idempotency keys (a projector that remembers applied ids) and the key, headers and
value are what consumers read, so a change to how events are built must not change one byte of
them. ``tests/golden/corrective_events.json`` was written by the builder as it was at ``da425b0``
(before the builder was made cheaper) for a varied set of findings: every kind, composite and
renamed keys, NULLs, unicode, Decimal, datetime, date, time, bytes, UUID, float and big-int
values, recurring episodes, orphans (tombstones), truth columns that are not state, and specs
whose own headers override CloudEvents ones. Regenerate it only on purpose:
``python -m tests.test_event_golden`` (then say in the commit why the bytes changed).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from reconcile.events.cloudevent import EventBuilder, build_event
from reconcile.findings import Finding, FindingKind
from reconcile.spec import Spec, spec_from_dict

GOLDEN = Path(__file__).parent / "golden" / "corrective_events.json"
NOW = datetime(2026, 11, 28, 12, 30, 1, 123456, tzinfo=UTC)


def _spec(
    name: str, *, composite: bool, rename: bool, headers: dict[str, str], wh_as: str = "warehouse"
) -> Spec:
    if composite:
        key: list[Any] = [{"sku": "product_id"}, "wh"] if rename else ["sku", "wh"]
    else:
        key = [{"sku": "product_id"}] if rename else ["sku"]
    return spec_from_dict(
        {
            "name": name,
            "truth": {"url": "sqlite://", "table": "stock"},
            "projection": {"url": "sqlite://", "table": "stock_view"},
            "key": key,
            "columns": {"on_hand": {"projection": "qty"} if rename else {}, "title": {}, "zeta": {}},
            "correction": {
                "topic": "stock.corrections",
                "event_type": "StockLevelReconciled",
                "headers": headers,
                **({"payload": {"title": "name", "wh": wh_as}} if rename else {}),
            },
        }
    )


SPECS = {
    "plain": _spec("inv", composite=False, rename=False, headers={}),
    "composite": _spec("inv-2.a", composite=True, rename=False, headers={"x-team": "stock"}),
    "renamed": _spec("inv", composite=True, rename=True, headers={}),
    # renamed so that the key's and the state's sorted orders differ from the truth names'
    "reordered": _spec("inv", composite=True, rename=True, headers={}, wh_as="a_wh"),
    "renamed-single": _spec("stock_x.1", composite=False, rename=True, headers={"x-é": "ü"}),
    "overrides": _spec("inv", composite=True, rename=False, headers={"ce_subject": "fixed", "ce_id": "mine"}),
    "content-type": _spec(
        "inv", composite=False, rename=True, headers={"content-type": "text/x", "ce_time": "t"}
    ),
}

_TZ = timezone(timedelta(hours=5, minutes=30))
TRUTHS: list[dict[str, Any] | None] = [
    {"on_hand": 5, "title": "Blue mug", "zeta": None},
    {"on_hand": 0, "title": ""},
    {"on_hand": -(2**63), "title": 'naïve café ☕ \u2028 "quoted" \\ back\tslash\n', "zeta": "𝄞"},
    {"on_hand": Decimal("12.50"), "title": Decimal("3"), "zeta": Decimal("1E+30")},
    {"on_hand": Decimal("NaN"), "title": 1.5, "zeta": 2**70},
    {
        "on_hand": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=_TZ),
        "title": date(2026, 2, 3),
        "zeta": time(1, 2, 3),
    },
    {"on_hand": datetime(2026, 1, 2, 3, 4, 5), "title": uuid.UUID(int=7), "zeta": b"\x00\xffab"},
    {"on_hand": True, "title": False, "zeta": timedelta(hours=3, minutes=2)},
    {"on_hand": 1e-7, "title": float("inf"), "zeta": -0.0},
    {"on_hand": 7, "title": "x", "zeta": "y", "_offset": 12, "_partition": 0, "other": "not state"},
    {"title": "only one column"},
    {},
    None,
]
KEYS: list[dict[str, Any]] = [
    {"sku": "A-1", "wh": 2},
    {"wh": "north", "sku": 'B/2 "x"'},
    {"sku": "ключ-🔑", "wh": None},
    {"sku": 10**20, "wh": -3},
    {"sku": Decimal("42"), "wh": Decimal("4.2")},
    {"sku": datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC), "wh": date(2025, 1, 1)},
    {"sku": uuid.UUID(int=1), "wh": b"\x01"},
    {"sku": "", "wh": ""},
]


def cases() -> list[tuple[str, Spec, Finding]]:
    """(label, spec, finding): each truth and key under each kind, episode and spec, thinned to a
    few hundred by a fixed stride so every combination of kind, spec and episode stays."""
    out = []
    n = 0
    for spec_label, spec in SPECS.items():
        composite = len(spec.key) > 1
        for kind in FindingKind:
            for episode in (1, 2, 3):
                for ti, truth in enumerate(TRUTHS):
                    for ki, key in enumerate(KEYS):
                        n += 1
                        if n % 11 and not (ti == 0 and ki == 0):
                            continue
                        k = dict(key) if composite else {"sku": key["sku"]}
                        label = f"{spec_label}/{kind.value}/e{episode}/t{ti}/k{ki}"
                        out.append((label, spec, Finding(kind, k, truth=truth, episode=episode)))
    return out


def render(spec: Spec, finding: Finding) -> dict[str, Any]:
    """One event as the outbox and the wire see it: id, key, headers in order, value."""
    builder = EventBuilder(spec, "run-7f3a", NOW)
    p = builder.parts(finding)
    return {
        "id": p.id,
        "key": p.subject,
        "headers": [[name, value] for name, value in p.headers.items()],
        "value": p.value,
        "time": p.time.isoformat(),
    }


def test_events_are_the_frozen_bytes() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = {label: render(spec, f) for label, spec, f in cases()}
    assert sorted(got) == sorted(golden)
    for label, want in golden.items():
        assert got[label] == want, label


def test_the_event_object_is_the_frozen_bytes() -> None:
    # build_event (one builder per finding) and the event object's own methods: the same bytes
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for label, spec, f in cases():
        e = build_event(spec, f, "run-7f3a", NOW)
        want = golden[label]
        assert (e.id, e.subject, e.value()) == (want["id"], want["key"], want["value"]), label
        assert [[k, v] for k, v in e.headers().items()] == want["headers"], label


def test_one_builder_for_many_findings_is_the_frozen_bytes() -> None:
    # a correction builds every finding of a spec with one builder: whatever it caches per spec
    # or per shape must not leak from one finding into the next
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    builders = {label: EventBuilder(spec, "run-7f3a", NOW) for label, spec in SPECS.items()}
    for label, _, f in cases() * 2:
        p = builders[label.split("/")[0]].parts(f)
        want = golden[label]
        assert (p.id, p.subject, p.value) == (want["id"], want["key"], want["value"]), label
        assert [[k, v] for k, v in p.headers.items()] == want["headers"], label


if __name__ == "__main__":  # pragma: no cover - regenerates the golden file
    events = {label: render(spec, f) for label, spec, f in cases()}
    lines = (f"{json.dumps(label)}: {json.dumps(e, ensure_ascii=False)}" for label, e in events.items())
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
